//! ACS with Microsoft Entra ID instead of an access key: the sandbox plays
//! Entra's token endpoint and the instance metadata service, and its ACS
//! takes only the bearer tokens they issued, until they expire.

use callwarden::sandbox::entra::{
    SANDBOX_ENTRA_CLIENT_ID, SANDBOX_ENTRA_CLIENT_SECRET, SANDBOX_ENTRA_TENANT_ID,
};
use callwarden::sandbox::{Fault, SANDBOX_ACS_ACCESS_KEY};

use crate::helpers::*;

/// The standard ACS config with `entra` (YAML under the provider) in place
/// of the access key.
fn entra_config(db: &std::path::Path, url: &str, entra: &str) -> String {
    let text = acs_config_text(db, url, SANDBOX_ACS_ACCESS_KEY);
    let key_line = format!("    access_key: \"{SANDBOX_ACS_ACCESS_KEY}\"\n");
    assert!(text.contains(&key_line), "{text}");
    text.replace(&key_line, &format!("    entra:\n{}", entra.replace("{url}", url)))
}

fn client_secret(secret: &str) -> String {
    format!(
        "      tenant_id: {SANDBOX_ENTRA_TENANT_ID}\n      client_id: {SANDBOX_ENTRA_CLIENT_ID}\n      \
         client_secret: {secret}\n      authority_host: {{url}}\n"
    )
}

#[tokio::test]
async fn client_credentials_get_a_token_that_acs_accepts_and_it_is_renewed_before_it_expires() {
    // Tokens that live 3 s: renewed halfway, so each call below needs a new one.
    let sandbox = Sandbox::start_with(&["--entra-token-lifetime", "3s"]);
    let h = Harness::with_sandbox(sandbox, |db, url| {
        entra_config(db, url, &client_secret(SANDBOX_ENTRA_CLIENT_SECRET))
    })
    .await;
    let _daemon = h.start_daemon().await;
    let first = h.start_acs_session("acs-consultation", "entra-1", &[], Some("1s")).await.remove(0);
    let row = h.wait_for_state(&first, "enforced", SHORT).await;
    assert_eq!(row.attempts, 1, "{row:#?}");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let second = h.start_acs_session("acs-consultation", "entra-2", &[], Some("1s")).await.remove(0);
    let row = h.wait_for_state(&second, "enforced", SHORT).await;
    assert_eq!(row.attempts, 1, "an expired token was sent: {row:#?}");
    let stats = h.sandbox.stats().await;
    assert!(stats.entra_tokens_issued >= 2, "{stats:?}");
    assert_eq!(stats.answers.get("HTTP401"), None, "{stats:?}");
}

#[tokio::test]
async fn a_refused_client_fails_the_session_with_entras_reason_and_never_shows_the_secret() {
    let wrong = "not-the-client-secret-0123456789";
    let h = Harness::with_config(|db, url| entra_config(db, url, &client_secret(wrong))).await;
    let daemon = h.start_daemon().await;
    let id = h.start_acs_session("acs-consultation", "entra-refused", &[], Some("1s")).await.remove(0);
    let row = h.wait_for_state(&id, "failed", SHORT).await;
    assert_eq!(row.attempts, 1, "a refused client is not retried: {row:#?}");
    let audit = h.audit_of(&id).await;
    let failed = audit.iter().find(|a| a.event == "failed").unwrap();
    assert_eq!(failed.error_code.as_deref(), Some("EntraRefused"), "{failed:#?}");
    assert!(failed.detail.as_deref().is_some_and(|d| d.contains("AADSTS7000215")), "{failed:#?}");
    assert!(h.sandbox.acs_requests().await.is_empty(), "a call went out without a token");
    let everything = format!("{audit:?}{}", daemon.logs());
    assert!(!everything.contains(wrong), "the client secret leaked");
}

#[tokio::test]
async fn a_token_endpoint_that_fails_is_retried() {
    // Tokens that live 2 s, renewed after 1 s.
    let sandbox = Sandbox::start_with(&["--entra-token-lifetime", "2s"]);
    let h = Harness::with_sandbox(sandbox, |db, url| {
        entra_config(db, url, &client_secret(SANDBOX_ENTRA_CLIENT_SECRET))
    })
    .await;
    let daemon = h.start_daemon().await;
    // The start-up probe fetched the first token; once it is due for
    // renewal, the token endpoint fails twice.
    wait_until("the start-up probe", SHORT, || async { daemon.logs().contains("ACS answers") }).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    h.sandbox
        .inject(Fault {
            action: Some("EntraToken".into()),
            http_status: Some(503),
            times: Some(2),
            ..Fault::default()
        })
        .await;
    let id = h.start_acs_session("acs-consultation", "entra-flaky", &[], Some("1s")).await.remove(0);
    let row = h.wait_for_state(&id, "enforced", SHORT).await;
    assert_eq!(row.attempts, 3, "{row:#?}");
    let audit = h.audit_of(&id).await;
    assert_eq!(
        audit.iter().filter(|a| a.error_code.as_deref() == Some("EntraToken")).count(),
        2,
        "{audit:#?}"
    );
}

#[tokio::test]
async fn a_managed_identity_gets_its_token_from_the_metadata_service() {
    let h = Harness::with_config(|db, url| {
        entra_config(
            db,
            url,
            &format!("      managed_identity: true\n      client_id: {SANDBOX_ENTRA_CLIENT_ID}\n      imds_endpoint: {{url}}\n"),
        )
    })
    .await;
    let _daemon = h.start_daemon().await;
    let id = h.start_acs_session("acs-paid-chat", "entra-mi", &["8:acs:res_mi"], Some("1s")).await.remove(0);
    h.wait_for_state(&id, "enforced", SHORT).await;
    assert_eq!(h.sandbox.stats().await.entra_tokens_issued, 1);
}
