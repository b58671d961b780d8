//! Adoption: how a row that another program inserted with plain SQL is
//! scheduled (its provider, and its deadline when it left that to the
//! policy), or why it cannot be. Pure; the scheduler does the I/O.

use std::time::Duration;

use crate::config::Config;
use crate::domain::session::{Adopted, SessionRecord};
use crate::domain::{Instant, Room, RoomKind, SessionId, UserId};

/// Decides how a plain-SQL row is scheduled, or why it cannot be.
pub fn adoption(config: &Config, r: &SessionRecord) -> Result<Adopted, String> {
    let policy = config.policy(&r.policy).ok_or_else(|| format!("unknown policy {:?}", r.policy))?;
    if let Some(provider) = &r.provider
        && provider != &policy.provider
    {
        return Err(format!(
            "provider {provider:?} does not match policy {:?}'s provider {:?}",
            policy.name, policy.provider
        ));
    }
    if r.id.parse::<SessionId>().is_err() {
        return Err(format!("id {:?} is not a UUID", r.id));
    }
    let kind: RoomKind = r.room_kind.parse().map_err(|e| format!("{e}"))?;
    Room::parse(kind, &r.room_id).map_err(|e| e.to_string())?;
    let settings = &config
        .providers
        .get(&policy.provider)
        .ok_or_else(|| format!("policy {:?} names an unknown provider", policy.name))?
        .settings;
    if !settings.room_kinds().contains(&kind) {
        return Err(format!(
            "room_kind {:?} does not fit policy {:?}, whose provider is {}",
            r.room_kind,
            policy.name,
            settings.kind()
        ));
    }
    let user = r.user_id.as_deref().map(UserId::parse).transpose().map_err(|e| e.to_string())?;
    if policy.action.targets_user() && user.is_none() {
        return Err(format!("policy {:?} removes a user, and the row has no user_id", policy.name));
    }
    if !policy.action.targets_user() && user.is_some() {
        return Err(format!(
            "policy {:?} ends the whole room ({}), and the row names a user: it would end everyone's call at \
             that user's deadline",
            policy.name,
            policy.action.as_str()
        ));
    }
    let started = Instant::parse(&r.started_at).map_err(|e| e.to_string())?;
    // A deadline written by the app is when to enforce; one left to the
    // policy is the booked time plus the grace.
    let (deadline, grace) = match &r.deadline {
        Some(d) => (Instant::parse(d).map_err(|e| e.to_string())?, Duration::ZERO),
        None => (started.saturating_add(policy.max_duration).saturating_add(policy.grace), policy.grace),
    };
    if deadline >= Instant::LATEST {
        return Err(format!("the deadline {deadline} is past the year 9999"));
    }
    Ok(Adopted {
        id: r.id.clone(),
        provider: policy.provider.clone(),
        deadline,
        grace,
        warn_before: policy.warn_before.clone(),
    })
}
