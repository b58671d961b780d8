//! `callwarden audit …` and `callwarden backup`: query and summarise the
//! audit log, verify its hash chain against the retention checkpoint, and
//! back the database up.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;

use super::output;
use super::{AuditArgs, AuditCommand, Failure, load, open_existing, parse_id, refusal};
use crate::clock::Clock;
use crate::config::Config;
use crate::domain::Instant;
use crate::domain::audit::{ChainCheck, Chains, Verdict, checkpoint_signature};
use crate::store::{AuditFilter, Store};

pub(super) async fn backup(config_path: &std::path::Path, to: &std::path::Path) -> Result<(), Failure> {
    let config = load(config_path)?;
    let store = open_existing(&config, true).await?;
    store.backup(to).await.with_context(|| format!("cannot back up to {}", to.display()))?;
    eprintln!("backed up {} to {}", config.database, to.display());
    Ok(())
}

pub(super) async fn verify_audit(store: &Store, config: &Config) -> Result<(), Failure> {
    const PAGE: u32 = 10_000;
    // Each chain's checkpoint (one chain on SQLite; one per daemon instance
    // and one for the rest on PostgreSQL), each signature checked.
    let checkpoints = store.audit_checkpoints().await.map_err(refusal)?;
    for (chain, cp) in &checkpoints {
        let of = if chain.is_empty() { String::new() } else { format!(" of chain {chain}") };
        match (&config.retention.checkpoint_key, &cp.signature) {
            (Some(key), Some(sig)) if checkpoint_signature(key, cp) == *sig => {
                println!(
                    "retention checkpoint{of} at row {} ({} rows pruned) is signed and valid",
                    cp.last_id, cp.rows_pruned
                )
            }
            (Some(_), _) => {
                return Err(Failure::Other(anyhow::anyhow!(
                    "audit log broken at row {}: the retention checkpoint{of}'s signature is missing or wrong (forged?)",
                    cp.last_id
                )));
            }
            (None, Some(_)) => println!(
                "retention checkpoint{of} at row {} is signed, but no retention.checkpoint_key is configured to check it",
                cp.last_id
            ),
            (None, None) => println!("retention checkpoint{of} at row {} is unsigned", cp.last_id),
        }
    }
    let starts: HashMap<String, (i64, String)> =
        checkpoints.into_iter().map(|(chain, cp)| (chain, (cp.last_id, cp.last_hash))).collect();
    // One chain (SQLite): its ids follow one another, and reading starts
    // after its checkpoint. Several: every row is read, each chain checked
    // from its own checkpoint.
    let single = store.sqlite_path().is_some();
    let mut after = if single { starts.get("").map_or(0, |(id, _)| *id) } else { 0 };
    let heads = store.audit_heads(after).await.map_err(refusal)?;
    match &config.retention.checkpoint_key {
        Some(key) => {
            if let Some(forged) = heads.iter().find(|h| !h.signature_valid(key)) {
                return Err(Failure::Other(anyhow::anyhow!(
                    "audit log broken at row {}: the head recorded at {} has a wrong signature (forged?)",
                    forged.last_id,
                    forged.at
                )));
            }
            println!("{} signed heads to check the chain against", heads.len());
        }
        None if !heads.is_empty() => println!(
            "{} signed heads, but no retention.checkpoint_key is configured to check their signatures",
            heads.len()
        ),
        None => {}
    }
    let (verdict, chains) = if single {
        let mut check = ChainCheck::new(starts.get("").cloned()).with_heads(heads);
        let verdict = loop {
            let page = store.audit_page(after, PAGE).await.map_err(refusal)?;
            let Some(last) = page.last() else { break check.finish() };
            after = last.id;
            if let Some(Err(broken)) = page.iter().map(|r| check.push(r)).find(Result::is_err) {
                break broken;
            }
        };
        (verdict, 1)
    } else {
        let mut check = Chains::new(starts, heads);
        loop {
            let page = store.audit_chain_page(after, PAGE).await.map_err(refusal)?;
            let Some((_, last)) = page.last() else { break check.finish() };
            after = last.id;
            if let Some(Err(broken)) = page.iter().map(|(chain, r)| check.push(chain, r)).find(Result::is_err)
            {
                break (broken, 0);
            }
        }
    };
    match verdict {
        Verdict::Intact { checked, unchained, head } => {
            println!(
                "audit log intact: {checked} rows chained{}{}",
                if chains > 1 {
                    format!(" in {chains} chains (one per daemon instance)")
                } else {
                    String::new()
                },
                if unchained > 0 {
                    format!(", {unchained} older rows from before the chain")
                } else {
                    String::new()
                }
            );
            if let Some((id, hash)) = head {
                println!("head: row {id} hash {hash}");
            }
            Ok(())
        }
        Verdict::Broken { id, reason } => {
            Err(Failure::Other(anyhow::anyhow!("audit log broken at row {id}: {reason}")))
        }
    }
}

pub(super) async fn audit_command(path: &std::path::Path, args: AuditArgs) -> Result<(), Failure> {
    let config = load(path)?;
    let store = open_existing(&config, false).await?;
    let now = Clock::system().now_datetime();
    match &args.command {
        Some(AuditCommand::Verify) => return verify_audit(&store, &config).await,
        Some(AuditCommand::Summary { range, format }) => {
            let (since, until) = range.resolve(now)?;
            let since = since.unwrap_or(Instant::floor(now - chrono::Duration::hours(24)));
            let until = until.unwrap_or(Instant::ceil(now).saturating_add(Duration::from_millis(1)));
            let summary = store.audit_summary(since, until).await.map_err(refusal)?;
            output::print_summary(&summary, since, until, *format).context("cannot write the summary")?;
            return Ok(());
        }
        None => {}
    }
    let (since, until) = args.range.resolve(now)?;
    let filter = AuditFilter {
        session: args.session.as_deref().map(parse_id).transpose()?,
        room: args.room.clone(),
        user: args.user.clone(),
        provider: args.provider.clone(),
        outcomes: args.outcomes.clone(),
        events: args.events.clone(),
        since,
        until,
        limit: args.limit,
    };
    let rows = store.audit(&filter).await.map_err(refusal)?;
    output::print_audit(&rows, args.format).context("cannot write the audit log")?;
    Ok(())
}
