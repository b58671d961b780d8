//! Applying a provider's presence event (a room or call opened or closed, a
//! participant entered or left), whichever provider sent it.
//!
//! The order is an invariant: record the event's time unless it is a
//! duplicate or older than what is known (`record_presence_if_newer`), drop
//! an entry older than the room's closing, then (for a budgeted entry) take
//! the budget lock and read the standing, let `policy::on_presence` decide,
//! and carry out its effects in the store.

use std::collections::HashSet;

use super::Intake;
use crate::domain::{Instant, Room, UserId};
use crate::policy::{Effect, Presence};
use crate::store::StoreError;

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
}

impl PresenceEvent<'_> {
    fn name(&self) -> &'static str {
        match self.presence {
            Presence::RoomOpened => "opened",
            Presence::RoomClosed => "closed",
            Presence::Entered(_) => "entered",
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

/// Records a presence event unless it is a duplicate or older than what is
/// known about the same room or participant, then applies it. Returns how
/// many sessions it opened or ended.
pub async fn record_and_apply(intake: Intake<'_>, event: &PresenceEvent<'_>) -> Result<u32, StoreError> {
    let at_ms = event.at.millis();
    if !intake
        .store
        .record_presence_if_newer(event.provider, event.room, event.participant(), at_ms, event.name())
        .await?
    {
        return Ok(0);
    }
    // An entry older than the room's closing is stale: the participant left
    // with the room.
    if let Presence::Entered(_) = event.presence
        && call_closed_since(intake, event.provider, event.room, at_ms).await?
    {
        return Ok(0);
    }
    apply_effects(intake, event).await
}

/// Applies a whole roster (ACS `ParticipantsUpdated`): participants no
/// longer listed have left, new ones have entered. A roster older than one
/// already applied, or from before the call ended, changes nothing.
pub async fn apply_roster(
    intake: Intake<'_>,
    provider: &str,
    room: &Room,
    sequence: i64,
    participants: &[UserId],
    at: Instant,
) -> Result<u32, StoreError> {
    // The roster is whole, not a delta; an older one is stale.
    if !intake.store.record_presence_if_newer(provider, room, "#roster", sequence, "roster").await? {
        return Ok(0);
    }
    // A roster from before the call ended, delivered after it, opens
    // nothing on the dead call.
    if call_closed_since(intake, provider, room, at.millis()).await? {
        return Ok(0);
    }
    let present: HashSet<&str> = participants.iter().map(UserId::as_str).collect();
    let active = intake.store.active_participants(provider, room).await?;
    let mut changed = 0;
    for gone in active.iter().filter(|a| !present.contains(a.as_str())) {
        if let Ok(user) = UserId::parse(gone) {
            let left = Presence::Left(user);
            let event = PresenceEvent { provider, sdk_app_id: None, room, presence: &left, at };
            changed += apply_effects(intake, &event).await?;
        }
    }
    for user in participants.iter().filter(|p| !active.iter().any(|a| a == p.as_str())) {
        let entered = Presence::Entered(user.clone());
        let event = PresenceEvent { provider, sdk_app_id: None, room, presence: &entered, at };
        changed += apply_effects(intake, &event).await?;
    }
    Ok(changed)
}

/// Whether the room's last recorded event is its closing, at or after `ms`.
async fn call_closed_since(
    intake: Intake<'_>,
    provider: &str,
    room: &Room,
    ms: i64,
) -> Result<bool, StoreError> {
    Ok(matches!(
        intake.store.last_event(provider, room, "").await?,
        Some((closed_ms, last)) if last == "closed" && closed_ms >= ms
    ))
}

/// Carries out what the policy decides for a presence event.
async fn apply_effects(intake: Intake<'_>, event: &PresenceEvent<'_>) -> Result<u32, StoreError> {
    let PresenceEvent { provider, sdk_app_id, room, presence, at } = *event;
    let now = intake.clock.now();
    let config = intake.config.current();
    // A participant's entry under a budgeted policy: what the user has left
    // decides the limit. Held until the session is stored, so that two
    // entries at once cannot both spend the same remaining time.
    let mut _budget_guard = None;
    let mut standing = None;
    if let Presence::Entered(user) = presence
        && let Some(policy) = crate::policy::webhook_policy(&config, provider, room, sdk_app_id)
        && let Some(budget) = policy.budget
    {
        _budget_guard = Some(intake.budget_lock.hold().await);
        standing = Some(
            intake.store.budget_standing(&policy.name, budget, config.time_zone, user, at.min(now)).await?,
        );
    }
    let mut changed = 0;
    for effect in crate::policy::on_presence(&config, provider, sdk_app_id, room, presence, at, standing) {
        changed += match effect {
            Effect::Open(session) => u32::from(
                intake.store.open_unless_active(&session, now, "opened by a provider webhook").await?,
            ),
            Effect::EndRoom => {
                let detail = "the provider reported the room or call closed";
                intake.store.end_active(provider, room, None, now, detail).await?.len() as u32
            }
            Effect::EndParticipant(user) => {
                let detail = format!("the provider reported {user} gone");
                intake.store.end_active(provider, room, Some(&user), now, &detail).await?.len() as u32
            }
        };
    }
    Ok(changed)
}
