//! Reconnects: a participant who drops and comes back must not get a fresh
//! clock. TRTC says why someone entered or left (`Reason`): an entry after
//! a network switch (2) or a timeout retry (3), or any entry within
//! `webhooks.trtc.reconnect_grace` of an exit the provider timed out (104
//! with Reason 2), resumes the session that exit ended, keeping its
//! deadline. A room re-created within the grace of its dismissal (TRTC
//! dismisses a room when the last participant leaves) resumes the room's
//! session the same way. A resumed session is a new row whose deadline is
//! the old one (or earlier, when a budget says so) and whose audit detail
//! names the session it resumes; time spent away counts against no budget.

use super::Intake;
use crate::domain::session::NewSession;
use crate::domain::{Instant, Room, SessionId};
use crate::policy::Presence;
use crate::store::StoreError;

/// Why a participant entered or left, as far as the provider says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cause {
    /// Nothing special, or the provider does not say.
    #[default]
    Plain,
    /// An entry after a network switch or a timeout retry (TRTC 103 with
    /// Reason 2 or 3): the participant is coming back.
    Reconnect,
    /// An exit the provider timed out (TRTC 104 with Reason 2): the
    /// participant may well come back.
    TimedOut,
}

/// The presence mark of an exit the provider timed out.
pub const LEFT_TIMED_OUT: &str = "left_timeout";

/// What the presence table records last for a room or participant: when
/// (milliseconds, or a roster's number) and what.
pub type LastEvent = Option<(i64, String)>;

/// What a reconnect resumes: the session the exit ended and its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    pub session: SessionId,
    pub deadline: Instant,
}

/// Whether an event in `room` (what it said, when, why), which is about to
/// open `session`, is a reconnect, and if so the session it resumes.
/// `known`: what the presence table records last for participants of the
/// room (`""`: the room itself), where the caller read it already.
pub async fn resumes(
    intake: Intake<'_>,
    provider: &str,
    room: &Room,
    (presence, at, cause): (&Presence, Instant, Cause),
    session: &NewSession,
    known: &[(&str, LastEvent)],
) -> Result<Option<Resumed>, StoreError> {
    let grace = intake.config.current().trtc_reconnect_grace;
    let user = session.user.as_ref().map(|u| u.as_str());
    let key = user.unwrap_or("");
    // What the provider last said about this participant, or the room.
    let last = match known.iter().find(|(k, _)| *k == key) {
        Some((_, last)) => last.clone(),
        None => intake.store.last_event(provider, room, key).await?,
    };
    let Some((left_ms, left)) = last else {
        return Ok(None);
    };
    let reconnect = match (presence, user) {
        (Presence::Entered(_), Some(_)) => {
            left == LEFT_TIMED_OUT || (left == "left" && cause == Cause::Reconnect)
        }
        // A room session opens on the room's creation or its first entry.
        (Presence::RoomOpened | Presence::Entered(_), None) => left == "closed",
        _ => false,
    };
    let gap = at.millis().saturating_sub(left_ms);
    if !reconnect || gap < 0 || gap > i64::try_from(grace.as_millis()).unwrap_or(i64::MAX) {
        return Ok(None);
    }
    // The session was ended when the exit was applied, by this daemon's
    // clock; allow for the provider's clock being a few minutes off.
    let since = Instant::from_millis(left_ms)
        .min(intake.clock.now())
        .saturating_sub(std::time::Duration::from_secs(300));
    let found = intake.store.ended_session(provider, room, user, &session.policy, since).await?;
    Ok(found.map(|(session, deadline)| Resumed { session, deadline }))
}
