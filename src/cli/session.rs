//! `callwarden session …` and `callwarden budget`: register, end, extend
//! and list sessions, and show where a user stands against their budgets.

use anyhow::Context;

use super::output;
use super::{BudgetArgs, Failure, SessionCommand, StartArgs, load, open, open_existing, parse_id, refusal};
use crate::clock::Clock;
use crate::config::Config;
use crate::domain::session::NewSession;
use crate::domain::{Instant, Room, UserId};
use crate::intake::register::RegisterError;
use crate::policy::Registration;
use crate::store::Store;

pub(super) async fn session(path: &std::path::Path, cmd: SessionCommand) -> Result<(), Failure> {
    let config = load(path)?;
    let clock = Clock::system();
    match cmd {
        SessionCommand::Start(args) => {
            let registration = registration(&args)?;
            let store = open(&config).await?;
            let now = clock.now();
            let sessions = new_sessions(&store, &config, &registration, now).await?;
            store
                .insert_sessions(&sessions, clock.now(), "registered by the CLI")
                .await
                .context("cannot register the session")?;
            for s in &sessions {
                println!("{}", s.id);
                eprintln!(
                    "session {} registered: policy {}, room {}{}, deadline {}",
                    s.id,
                    s.policy,
                    s.room,
                    s.user.as_ref().map(|u| format!(", user {u}")).unwrap_or_default(),
                    s.deadline
                );
            }
        }
        SessionCommand::End { id } => {
            let id = parse_id(&id)?;
            let store = open(&config).await?;
            store.end_session(id, clock.now(), "ended with the CLI").await.map_err(refusal)?;
            eprintln!("session {id} ended; it will not be enforced");
        }
        SessionCommand::Extend { id, by } => {
            let id = parse_id(&id)?;
            let by =
                crate::policy::extension(by).map_err(|e| Failure::Other(anyhow::anyhow!("--by: {e}")))?;
            let store = open(&config).await?;
            let policy = store.session(id).await.map_err(refusal)?.policy;
            let deadline = store
                .extend_session(
                    id,
                    by,
                    config.max_extension(&policy),
                    config.warn_before(&policy),
                    clock.now(),
                )
                .await
                .map_err(refusal)?;
            println!("{deadline}");
        }
        SessionCommand::List { state, format, limit } => {
            let store = open_existing(&config, false).await?;
            let rows = store.list_sessions(state, None, limit).await.map_err(refusal)?;
            output::print_sessions(&rows, format).context("cannot write the list")?;
        }
    }
    Ok(())
}

/// Turns `session start` arguments into a registration, or says why not.
pub fn registration(args: &StartArgs) -> Result<Registration, Failure> {
    let bad = |msg: String| Failure::Other(anyhow::anyhow!(msg));
    let room = match (&args.room, &args.str_room, &args.call) {
        (Some(r), None, None) => Room::numeric(r),
        (None, Some(s), None) => Room::string(s),
        (None, None, Some(c)) => Room::call(c),
        _ => return Err(bad("give exactly one of --room, --str-room and --call".into())),
    }
    .map_err(|e| bad(e.to_string()))?;
    // --user names TRTC users, --participant ACS participants.
    let (users, flag, other) = if room.kind() == crate::domain::RoomKind::Call {
        (&args.participants, "--participant", (!args.users.is_empty()).then_some("--user"))
    } else {
        (&args.users, "--user", (!args.participants.is_empty()).then_some("--participant"))
    };
    if let Some(wrong) = other {
        return Err(bad(format!("{wrong} does not apply to this kind of room; use {flag}")));
    }
    let users = users
        .iter()
        .map(|u| UserId::parse(u).map_err(|e| bad(format!("{flag} {u:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let started_at = match &args.started_at {
        Some(s) => Some(Instant::parse(s).map_err(|e| bad(format!("--started-at: {e}")))?),
        None => None,
    };
    Ok(Registration { policy: args.policy.clone(), room, users, limit: args.limit, started_at })
}

/// The sessions a registration creates, or why not, with the flag to fix.
async fn new_sessions(
    store: &Store,
    config: &Config,
    registration: &Registration,
    now: Instant,
) -> Result<Vec<NewSession>, Failure> {
    match crate::intake::register::decide(store, config, registration, now).await {
        Ok(sessions) => Ok(sessions),
        Err(RegisterError::Store(e)) => {
            Err(Failure::Other(anyhow::Error::new(e).context("cannot read the user's budget")))
        }
        Err(RegisterError::Refused(r)) => {
            let hint = match r.field {
                "room" => " (use --room or --str-room for TRTC, --call for ACS)",
                "users" => " (--user for TRTC, --participant for ACS)",
                "limit" => " (--limit)",
                _ => "",
            };
            Err(Failure::Other(anyhow::anyhow!("{r}{hint}")))
        }
    }
}

/// `callwarden budget USER`: each budgeted policy's window, use and rest.
pub(super) async fn budget(path: &std::path::Path, args: BudgetArgs) -> Result<(), Failure> {
    let config = load(path)?;
    let user = UserId::parse(&args.user)
        .map_err(|e| Failure::Other(anyhow::anyhow!("user {:?}: {e}", args.user)))?;
    let at = match &args.at {
        Some(t) => Instant::parse(t).map_err(|e| Failure::Other(anyhow::anyhow!("--at: {e}")))?,
        None => Clock::system().now(),
    };
    let policies: Vec<&crate::config::Policy> = match &args.policy {
        Some(name) => {
            let p = config
                .policy(name)
                .ok_or_else(|| Failure::Other(anyhow::anyhow!("unknown policy {name:?}")))?;
            if p.budget.is_none() {
                return Err(Failure::Other(anyhow::anyhow!("policy {name:?} has no budget")));
            }
            vec![p]
        }
        None => config.policies.values().filter(|p| p.budget.is_some()).collect(),
    };
    if policies.is_empty() {
        return Err(Failure::Other(anyhow::anyhow!("no policy has a budget")));
    }
    let store = open_existing(&config, false).await?;
    let mut rows = Vec::new();
    for p in policies {
        let Some(b) = p.budget else { continue };
        let s = store
            .budget_standing(&p.name, b, config.time_zone, &user, at)
            .await
            .context("cannot read the budget")?;
        rows.push(output::BudgetRow {
            user: user.as_str().to_string(),
            policy: p.name.clone(),
            window: b.window.as_str(),
            time_zone: config.time_zone.name().to_string(),
            window_start: s.window_start.to_string(),
            window_end: s.window_end.to_string(),
            used_ms: crate::domain::duration_millis_ceil(s.used),
            booked_ms: crate::domain::duration_millis_ceil(s.booked),
            limit_ms: crate::domain::duration_millis_ceil(s.limit),
            remaining_ms: crate::domain::duration_millis_ceil(s.remaining()),
        });
    }
    output::print_budget(&rows, args.format).context("cannot write the budget")?;
    Ok(())
}
