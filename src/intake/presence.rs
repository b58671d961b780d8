//! Applying a provider's presence event (a room or call opened or closed, a
//! participant entered or left), whichever provider sent it.
//!
//! The order is an invariant: drop a duplicate or an event older than what
//! is known, and an entry older than the room's closing; for a budgeted
//! entry, hold that user's budget and read the standing; let
//! `policy::on_presence` decide; then record the event and carry out what
//! was decided in one transaction (the [`PresenceWriter`]), which again
//! refuses an event no newer than the one recorded, so two deliveries at
//! once apply once. If that transaction fails, the event is not recorded as
//! seen and the provider's retry applies it.
//!
//! [`PresenceWriter`]: crate::store::PresenceWriter

use std::collections::{HashMap, HashSet};

pub use super::reconnect::Cause;
use super::reconnect::LastEvent;
use super::{BudgetHold, Intake};
use crate::domain::{Instant, Room, UserId};
use crate::policy::{Effect, Presence};
use crate::store::{PresenceChange, PresenceMark, PresenceWrite, StoreError};

/// One presence event, as a webhook reported it.
#[derive(Debug, Clone)]
pub struct PresenceEvent<'a> {
    /// The configured provider it concerns.
    pub provider: &'a str,
    /// TRTC's application id, which policies may match on.
    pub sdk_app_id: Option<u64>,
    pub room: &'a Room,
    pub presence: &'a Presence,
    /// When it happened, by the provider's clock.
    pub at: Instant,
    /// Why, where the provider says (TRTC's `Reason`).
    pub cause: Cause,
    /// Added to the audit detail of what the event changes.
    pub note: Option<&'a str>,
}

impl PresenceEvent<'_> {
    fn name(&self) -> &'static str {
        match self.presence {
            Presence::RoomOpened => "opened",
            Presence::RoomClosed => "closed",
            Presence::Entered(_) => "entered",
            Presence::Left(_) if self.cause == Cause::TimedOut => super::reconnect::LEFT_TIMED_OUT,
            Presence::Left(_) => "left",
        }
    }

    /// Whose last event this is ordered against: the participant, or the
    /// room itself (`""`).
    fn participant(&self) -> &str {
        match self.presence {
            Presence::Entered(u) | Presence::Left(u) => u.as_str(),
            Presence::RoomOpened | Presence::RoomClosed => "",
        }
    }
}

/// The oldest event applied: a delivery this late is a replay (a captured
/// callback sent again) or a clock far off, and would open a session whose
/// deadline passed long ago. Webhook history is kept longer than this (see
/// `retention::PRESENCE_KEPT`), so forgetting it lets no replay in.
pub const MAX_EVENT_AGE: std::time::Duration = std::time::Duration::from_secs(3600);
/// The furthest in the future an event time may be: beyond it, the
/// provider's clock (or the sender) is wrong, and it is refused too.
pub const MAX_EVENT_AHEAD: std::time::Duration = std::time::Duration::from_secs(300);

/// Whether an event time is one to apply now: not older than
/// [`MAX_EVENT_AGE`], not further ahead than [`MAX_EVENT_AHEAD`].
pub fn timely(at: Instant, now: Instant) -> bool {
    at >= now.saturating_sub(MAX_EVENT_AGE) && at <= now.saturating_add(MAX_EVENT_AHEAD)
}

/// Records and applies a presence event, unless it is a duplicate, older
/// than what is known about the same room or participant, or not timely.
/// Returns how many sessions it opened or ended.
pub async fn record_and_apply(intake: Intake<'_>, event: &PresenceEvent<'_>) -> Result<u32, StoreError> {
    if !timely(event.at, intake.clock.now()) {
        tracing::debug!(at = %event.at, "a webhook event too old or too far ahead; ignored");
        return Ok(0);
    }
    let at_ms = event.at.millis();
    // What is recorded for the participant (or the room), and for the room:
    // read once here, and handed on to the reconnect check.
    let mut known: Vec<(&str, LastEvent)> = Vec::with_capacity(2);
    let last = intake.store.last_event(event.provider, event.room, event.participant()).await?;
    // Seen cheaply here; the write checks again, for certain.
    if seen(&last, at_ms) {
        return Ok(0);
    }
    known.push((event.participant(), last));
    // An entry older than the room's closing is stale: the participant left
    // with the room.
    if let Presence::Entered(_) = event.presence {
        let room_last = intake.store.last_event(event.provider, event.room, "").await?;
        if closed_since(&room_last, at_ms) {
            return Ok(0);
        }
        known.push(("", room_last));
    }
    let now = intake.clock.now();
    let (changes, _budgets) = changes_for(intake, std::slice::from_ref(event), &known, now).await?;
    let mark = PresenceMark {
        provider: event.provider.to_string(),
        room: event.room.clone(),
        participant: event.participant().to_string(),
        event_ms: at_ms,
        event: event.name(),
    };
    Ok(intake.presence.apply(PresenceWrite { mark, changes, now }).await?.unwrap_or(0))
}

/// How a roster is ordered against the call's earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RosterOrder {
    /// By ACS's `sequenceNumber`.
    Sequence(i64),
    /// By the event's time, when ACS leaves the (optional) number out. Kept
    /// apart from numbered rosters, whose numbers are no times.
    Time,
}

/// Applies a whole roster (ACS `ParticipantsUpdated`): participants no
/// longer listed have left, new ones have entered. A roster older than one
/// already applied, or from before the call ended, changes nothing.
pub async fn apply_roster(
    intake: Intake<'_>,
    provider: &str,
    room: &Room,
    order: RosterOrder,
    participants: &[UserId],
    at: Instant,
) -> Result<u32, StoreError> {
    if !timely(at, intake.clock.now()) {
        return Ok(0);
    }
    let (key, sequence) = match order {
        RosterOrder::Sequence(n) => (ROSTER, n),
        RosterOrder::Time => (ROSTER_BY_TIME, at.millis()),
    };
    // The roster is whole, not a delta; an older one is stale.
    if seen(&intake.store.last_event(provider, room, key).await?, sequence) {
        return Ok(0);
    }
    // A roster from before the call ended, delivered after it, opens
    // nothing on the dead call.
    if closed_since(&intake.store.last_event(provider, room, "").await?, at.millis()) {
        return Ok(0);
    }
    let present: HashSet<&str> = participants.iter().map(UserId::as_str).collect();
    let active = intake.store.active_participants(provider, room).await?;
    let left = active
        .iter()
        .filter(|a| !present.contains(a.as_str()))
        .filter_map(|gone| UserId::parse(gone).ok())
        .map(Presence::Left);
    let entered = participants
        .iter()
        .filter(|p| !active.iter().any(|a| a == p.as_str()))
        .cloned()
        .map(Presence::Entered);
    let presences: Vec<Presence> = left.chain(entered).collect();
    let events: Vec<PresenceEvent<'_>> = presences
        .iter()
        .map(|presence| PresenceEvent {
            provider,
            sdk_app_id: None,
            room,
            presence,
            at,
            cause: Cause::Plain,
            note: None,
        })
        .collect();
    let now = intake.clock.now();
    let (changes, _budgets) = changes_for(intake, &events, &[], now).await?;
    let mark = PresenceMark {
        provider: provider.to_string(),
        room: room.clone(),
        participant: key.to_string(),
        event_ms: sequence,
        event: "roster",
    };
    Ok(intake.presence.apply(PresenceWrite { mark, changes, now }).await?.unwrap_or(0))
}

/// The participant key an ACS call's numbered rosters are ordered under.
const ROSTER: &str = "#roster";
/// The key of rosters without a number, ordered by time.
const ROSTER_BY_TIME: &str = "#roster@time";

/// Whether `last` (what is recorded for the room or participant) is at `ms`
/// (a roster's sequence) or later.
fn seen(last: &LastEvent, ms: i64) -> bool {
    matches!(last, Some((at, _)) if *at >= ms)
}

/// Whether `room_last` (what is recorded for the room) is its closing, at
/// or after `ms`.
fn closed_since(room_last: &LastEvent, ms: i64) -> bool {
    matches!(room_last, Some((at, what)) if what == "closed" && *at >= ms)
}

/// What the policy decides for presence events of one room, as changes for
/// the store; with the budget locks of the users whose entries spend a
/// budget, to hold until the changes are stored (so two entries of one user
/// at once cannot both spend the same remaining time). `known`: last events
/// the caller read already (by participant, `""` for the room).
async fn changes_for(
    intake: Intake<'_>,
    events: &[PresenceEvent<'_>],
    known: &[(&str, LastEvent)],
    now: Instant,
) -> Result<(Vec<PresenceChange>, Option<BudgetHold>), StoreError> {
    let config = intake.config.current();
    let mut budgets = None;
    let mut standings = HashMap::new();
    let entered: Vec<(&UserId, Instant)> = events
        .iter()
        .filter_map(|e| match e.presence {
            Presence::Entered(user) => Some((user, e.at)),
            _ => None,
        })
        .collect();
    // All events here are of one room, so of one webhook policy.
    if let Some(first) = events.first()
        && !entered.is_empty()
        && let Some(policy) =
            crate::policy::webhook_policy(&config, first.provider, first.room, first.sdk_app_id)
        && let Some(budget) = policy.budget
    {
        let users: Vec<&UserId> = entered.iter().map(|(user, _)| *user).collect();
        budgets = Some(intake.budget_lock.hold_all(&policy.name, &users).await?);
        for (user, at) in entered {
            let standing = intake
                .store
                .budget_standing(&policy.name, budget, config.time_zone, user, at.min(now))
                .await?;
            standings.insert(user.clone(), standing);
        }
    }
    let mut changes = Vec::new();
    for e in events {
        let standing = match e.presence {
            Presence::Entered(user) => standings.get(user).copied(),
            _ => None,
        };
        for effect in
            crate::policy::on_presence(&config, e.provider, e.sdk_app_id, e.room, e.presence, e.at, standing)
        {
            changes.push(match effect {
                Effect::Open(mut session) => match super::reconnect::resumes(
                    intake,
                    e.provider,
                    e.room,
                    (e.presence, e.at, e.cause),
                    &session,
                    known,
                )
                .await?
                {
                    Some(resumed) => {
                        session.deadline = session.deadline.min(resumed.deadline);
                        let detail = format!(
                            "opened by a provider webhook; a reconnect resumes session {} and its deadline",
                            resumed.session
                        );
                        PresenceChange::Open { session, detail }
                    }
                    None => PresenceChange::Open { session, detail: "opened by a provider webhook".into() },
                },
                Effect::EndRoom => PresenceChange::End {
                    user: None,
                    detail: match e.note {
                        Some(note) => format!("the provider reported the room or call closed ({note})"),
                        None => "the provider reported the room or call closed".into(),
                    },
                },
                Effect::EndParticipant(user) => PresenceChange::End {
                    detail: format!("the provider reported {user} gone"),
                    user: Some(user),
                },
            });
        }
    }
    Ok((changes, budgets))
}
