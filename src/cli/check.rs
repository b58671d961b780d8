//! `callwarden check`: validates the configuration and prints what it
//! configures, with secrets masked.

use super::{Failure, load};
use crate::config::ProviderSettings;
use crate::http_client::display_url;

pub(super) fn check(path: &std::path::Path) -> Result<(), Failure> {
    let config = load(path)?;
    println!("configuration {} is valid", config.path.display());
    println!("database: {}", config.database);
    for p in config.providers.values() {
        match &p.settings {
            ProviderSettings::Trtc(t) => println!(
                "provider {}: tencent-trtc sdk_app_id={} region={} endpoint={} secret_id={} secret_key={} \
                 max_requests_per_second={} retry={} attempts, {}..{} backoff request_timeout={}",
                p.name,
                t.sdk_app_id,
                t.region,
                display_url(&t.endpoint),
                mask_id(&t.secret_id),
                t.secret_key,
                p.max_requests_per_second,
                p.retry.max_attempts,
                humantime::format_duration(p.retry.initial_backoff),
                humantime::format_duration(p.retry.max_backoff),
                humantime::format_duration(p.request_timeout),
            ),
            ProviderSettings::Acs(a) => println!(
                "provider {}: azure-acs endpoint={} auth={} api_version={} callback_url={} \
                 max_requests_per_second={} retry={} attempts, {}..{} backoff request_timeout={}",
                p.name,
                display_url(&a.endpoint),
                match &a.auth {
                    crate::config::AcsAuth::AccessKey(key) => format!("access key {key}"),
                    crate::config::AcsAuth::Entra(e) => match &e.flow {
                        crate::config::EntraFlow::ClientSecret { tenant_id, client_id, client_secret } =>
                            format!(
                                "entra client credentials (tenant {tenant_id}, client {client_id}, secret {client_secret}, \
                             authority {})",
                                display_url(&e.authority_host)
                            ),
                        crate::config::EntraFlow::ManagedIdentity { client_id } => format!(
                            "entra managed identity ({})",
                            client_id.as_deref().map_or("system-assigned".into(), |c| format!("client {c}"))
                        ),
                    },
                },
                a.api_version,
                a.callback_url.as_deref().map_or("(none: outcomes are not confirmed)".into(), display_url),
                p.max_requests_per_second,
                p.retry.max_attempts,
                humantime::format_duration(p.retry.initial_backoff),
                humantime::format_duration(p.retry.max_backoff),
                humantime::format_duration(p.request_timeout),
            ),
        }
    }
    if let Some(n) = &config.notifications {
        println!("notifications: {} (secret {})", display_url(&n.url), n.secret);
    }
    println!("time_zone: {}", config.time_zone.name());
    for file in config.sources.iter().skip(1) {
        println!("policy file: {}", file.display());
    }
    for p in config.policies.values() {
        let mut extras = Vec::new();
        if !p.warn_before.is_empty() {
            let points: Vec<String> =
                p.warn_before.iter().map(|w| humantime::format_duration(*w).to_string()).collect();
            extras.push(format!("warn_before {}", points.join(", ")));
        }
        if !p.grace.is_zero() {
            extras.push(format!("grace {}", humantime::format_duration(p.grace)));
        }
        if let Some(m) = p.max_extension {
            extras.push(format!("max_extension {}", humantime::format_duration(m)));
        }
        if let Some(b) = p.budget {
            extras.push(format!("budget {} per user per {}", humantime::format_duration(b.limit), b.window));
        }
        if p.shadow {
            extras.push("mode shadow".into());
        }
        println!(
            "policy {}: provider {}, max_duration {}, action {}{}",
            p.name,
            p.provider,
            humantime::format_duration(p.max_duration),
            p.action.as_str(),
            extras.iter().map(|e| format!(", {e}")).collect::<String>()
        );
    }
    for w in &config.warnings {
        println!("warning: {w}");
    }
    Ok(())
}

/// Shows enough of a key id to recognise it, not enough to use it.
fn mask_id(id: &str) -> String {
    let shown: String = id.chars().take(4).collect();
    format!("{shown}****")
}
