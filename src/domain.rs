//! Domain values: ids, rooms, session states, actions, durations and instants.
//!
//! Everything here is parsed once at an edge (CLI, config, database row) and is
//! valid by construction afterwards. This module does no I/O.
//!
//! Its children hold the larger domain types: [`session`] (sessions to
//! register, to schedule, adopted), [`audit`] (audit rows and their hash
//! chain), [`lease`] (buckets, terms: what an instance leads) and [`secret`]
//! (values that mask themselves).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub mod audit;
pub mod lease;
pub mod secret;
pub mod session;

/// A session's id: a UUID chosen by whoever registers the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub Uuid);

impl SessionId {
    pub fn new() -> Self {
        SessionId(Uuid::new_v4())
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for SessionId {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s.trim()).map(SessionId).map_err(|_| DomainError::SessionId(s.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{0:?} is not a session id (expected a UUID)")]
    SessionId(String),
    #[error("numeric room id {0:?} is not an integer from 1 to 4294967294")]
    NumericRoom(String),
    #[error(
        "string room id {0:?} must be 1 to 64 bytes of letters, digits, space and !#$%&()+-:;<=.>?@[]^_{{}}|~,"
    )]
    StrRoom(String),
    #[error("user id must be 1 to 256 characters without control characters")]
    UserId,
    #[error("call connection id {0:?} must be 1 to 256 characters of letters, digits and -._~")]
    Call(String),
    #[error("unknown room kind {0:?} (expected numeric, string or call)")]
    RoomKind(String),
    #[error("unknown session state {0:?}")]
    State(String),
    #[error(
        "unknown action {0:?} (expected dismiss_room or remove_user for TRTC, terminate_call or remove_participant for ACS)"
    )]
    Action(String),
    #[error("invalid time {0:?}: {1}")]
    Instant(String, String),
}

/// Which namespace a room id lives in: TRTC's numeric or string rooms (the
/// number 123 and the string "123" are different rooms, so the kind travels
/// with the id), or an ACS call connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    Numeric,
    String,
    Call,
}

impl RoomKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Numeric => "numeric",
            RoomKind::String => "string",
            RoomKind::Call => "call",
        }
    }
}

impl FromStr for RoomKind {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "numeric" => Ok(RoomKind::Numeric),
            "string" => Ok(RoomKind::String),
            "call" => Ok(RoomKind::Call),
            other => Err(DomainError::RoomKind(other.to_string())),
        }
    }
}

/// A room: TRTC numeric rooms are 1..=4294967294; string rooms are up to 64
/// bytes from the client SDK's character set; an ACS call connection id goes
/// into a URL path, so it is limited to unreserved URL characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Room {
    Numeric(u32),
    Str(String),
    Call(String),
}

const STR_ROOM_PUNCTUATION: &str = " !#$%&()+-:;<=.>?@[]^_{}|~,";

impl Room {
    pub fn numeric(s: &str) -> Result<Room, DomainError> {
        match s.trim().parse::<u64>() {
            Ok(n) if (1..=4_294_967_294).contains(&n) => Ok(Room::Numeric(n as u32)),
            _ => Err(DomainError::NumericRoom(s.to_string())),
        }
    }

    pub fn string(s: &str) -> Result<Room, DomainError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars().all(|c| c.is_ascii_alphanumeric() || STR_ROOM_PUNCTUATION.contains(c));
        if ok { Ok(Room::Str(s.to_string())) } else { Err(DomainError::StrRoom(s.to_string())) }
    }

    pub fn call(s: &str) -> Result<Room, DomainError> {
        let ok = !s.is_empty()
            && s.len() <= 256
            && s.chars().all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c));
        if ok { Ok(Room::Call(s.to_string())) } else { Err(DomainError::Call(s.to_string())) }
    }

    pub fn parse(kind: RoomKind, id: &str) -> Result<Room, DomainError> {
        match kind {
            RoomKind::Numeric => Room::numeric(id),
            RoomKind::String => Room::string(id),
            RoomKind::Call => Room::call(id),
        }
    }

    pub fn kind(&self) -> RoomKind {
        match self {
            Room::Numeric(_) => RoomKind::Numeric,
            Room::Str(_) => RoomKind::String,
            Room::Call(_) => RoomKind::Call,
        }
    }

    /// The id as stored in `sessions.room_id` (decimal for numeric rooms).
    pub fn id_text(&self) -> String {
        match self {
            Room::Numeric(n) => n.to_string(),
            Room::Str(s) | Room::Call(s) => s.clone(),
        }
    }
}

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Room::Numeric(n) => write!(f, "{n}"),
            Room::Str(s) => write!(f, "{s:?}"),
            Room::Call(s) => write!(f, "call {s}"),
        }
    }
}

/// A participant's id as the provider knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub fn parse(s: &str) -> Result<UserId, DomainError> {
        if s.is_empty() || s.chars().count() > 256 || s.chars().any(char::is_control) {
            return Err(DomainError::UserId);
        }
        Ok(UserId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What happens to a session when its time is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// TRTC: end the call for everyone in the room.
    DismissRoom,
    /// TRTC: remove the session's user from the room.
    RemoveUser,
    /// ACS: hang up the call for everyone.
    TerminateCall,
    /// ACS: remove the session's participant from the call.
    RemoveParticipant,
}

impl Action {
    pub const ALL: [Action; 4] =
        [Action::DismissRoom, Action::RemoveUser, Action::TerminateCall, Action::RemoveParticipant];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::DismissRoom => "dismiss_room",
            Action::RemoveUser => "remove_user",
            Action::TerminateCall => "terminate_call",
            Action::RemoveParticipant => "remove_participant",
        }
    }

    /// Whether the action targets one participant (and so needs a user).
    pub fn targets_user(self) -> bool {
        matches!(self, Action::RemoveUser | Action::RemoveParticipant)
    }

    /// The action that ends the whole room or call with the same provider.
    pub fn whole_room(self) -> Action {
        match self {
            Action::DismissRoom | Action::RemoveUser => Action::DismissRoom,
            Action::TerminateCall | Action::RemoveParticipant => Action::TerminateCall,
        }
    }
}

impl FromStr for Action {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL.into_iter().find(|a| a.as_str() == s).ok_or_else(|| DomainError::Action(s.to_string()))
    }
}

/// The life of a session. `active` waits for its deadline; `enforcing` has
/// been claimed by the scheduler; `accepted` waits for the provider to report
/// the outcome (ACS with a callback URL); the others are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Active,
    Enforcing,
    Accepted,
    Enforced,
    AlreadyEnded,
    Failed,
    Cancelled,
    /// Went through everything but the provider call (a `mode: shadow` policy).
    Shadowed,
    /// Its deadline had passed by more than its policy's `stale_after` when
    /// it was about to be enforced: no call was sent.
    Expired,
}

impl SessionState {
    pub const ALL: [SessionState; 9] = [
        SessionState::Active,
        SessionState::Enforcing,
        SessionState::Accepted,
        SessionState::Enforced,
        SessionState::AlreadyEnded,
        SessionState::Failed,
        SessionState::Cancelled,
        SessionState::Shadowed,
        SessionState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Active => "active",
            SessionState::Enforcing => "enforcing",
            SessionState::Accepted => "accepted",
            SessionState::Enforced => "enforced",
            SessionState::AlreadyEnded => "already_ended",
            SessionState::Failed => "failed",
            SessionState::Cancelled => "cancelled",
            SessionState::Shadowed => "shadowed",
            SessionState::Expired => "expired",
        }
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SessionState {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| DomainError::State(s.to_string()))
    }
}

/// A UTC instant with millisecond precision: the unit of every time column.
///
/// Stored as `YYYY-MM-DDTHH:MM:SS.sssZ`, which sorts as text in time order,
/// so an index on the column is an index on time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(i64);

impl Instant {
    /// The latest instant the store holds: 9999-12-31T23:59:59.999Z. A later
    /// year does not fit the `YYYY-MM-DD…` text of the time columns, so
    /// arithmetic saturates here.
    pub const LATEST: Instant = Instant(253_402_300_799_999);
    /// The earliest instant the store holds: 0000-01-01T00:00:00Z.
    pub const EARLIEST: Instant = Instant(-62_167_219_200_000);

    pub fn from_millis(ms: i64) -> Instant {
        Instant(ms)
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    /// Rounds up to the next millisecond, so a deadline is never stored
    /// earlier than it was asked for.
    pub fn ceil(t: DateTime<Utc>) -> Instant {
        let ms = t.timestamp_millis();
        let sub_ms = t.timestamp_subsec_nanos() % 1_000_000;
        Instant(if sub_ms > 0 { ms + 1 } else { ms })
    }

    /// Rounds down: for "now", so a due check never runs ahead of the clock.
    pub fn floor(t: DateTime<Utc>) -> Instant {
        Instant(t.timestamp_millis())
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        let beyond = if self.0 < 0 { DateTime::<Utc>::MIN_UTC } else { DateTime::<Utc>::MAX_UTC };
        Utc.timestamp_millis_opt(self.0).single().unwrap_or(beyond)
    }

    /// Parses RFC 3339 with any offset, and SQLite's own `YYYY-MM-DD HH:MM:SS[.sss]`
    /// (taken as UTC, as SQLite's date functions do).
    pub fn parse(s: &str) -> Result<Instant, DomainError> {
        let trimmed = s.trim();
        if let Ok(t) = DateTime::parse_from_rfc3339(trimmed) {
            return Ok(Instant::ceil(t.with_timezone(&Utc)));
        }
        for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
            if let Ok(t) = chrono::NaiveDateTime::parse_from_str(trimmed, fmt) {
                return Ok(Instant::ceil(t.and_utc()));
            }
        }
        Err(DomainError::Instant(s.to_string(), "expected RFC 3339, e.g. 2026-11-21T09:30:00Z".into()))
    }

    /// `self + d`, at most [`Instant::LATEST`].
    pub fn saturating_add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(duration_millis_ceil(d)).min(Self::LATEST.0.max(self.0)))
    }

    /// `self - d`, with `d` rounded up to a millisecond like everywhere else.
    pub fn saturating_sub(self, d: Duration) -> Instant {
        Instant(self.0.saturating_sub(duration_millis_ceil(d)))
    }

    /// Milliseconds from `earlier` to `self` (negative if `self` is earlier).
    pub fn millis_since(self, earlier: Instant) -> i64 {
        self.0 - earlier.0
    }

    /// How long from `now` until `self`; zero if `self` has passed.
    pub fn duration_from(self, now: Instant) -> Duration {
        Duration::from_millis(self.0.saturating_sub(now.0).max(0) as u64)
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_datetime().to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

/// How often and how patiently an enforcement is retried after a retryable
/// answer. Exponential backoff with full jitter, bounded both in attempts and
/// in the longest single wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total tries, the first included.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// With the default backoff, 12 tries span at least 90 s (at most 3 min):
    /// a provider outage of a minute and a half is ridden out, not failed.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 12;
    pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(500);
    pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);

    /// The ceiling of the wait after failed try number `attempt` (1-based):
    /// initial × 2^(attempt-1), capped at `max_backoff`.
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }

    /// The wait after failed try `attempt`: uniformly jittered between half the
    /// ceiling and the ceiling (so retries of a burst spread out but never
    /// collapse to zero), and never shorter than a wait the provider asked
    /// for, up to `max_backoff`: a `Retry-After` of a day must not park a job
    /// (and its in-flight permit) for a day.
    pub fn backoff(&self, attempt: u32, provider_hint: Option<Duration>, unit_random: f64) -> Duration {
        let ceiling = self.backoff_ceiling(attempt);
        let unit = if unit_random.is_nan() { 1.0 } else { unit_random.clamp(0.0, 1.0) };
        let jittered = ceiling.mul_f64(0.5 + 0.5 * unit);
        provider_hint.map_or(jittered, |hint| jittered.max(hint.min(self.max_backoff)))
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            initial_backoff: Self::DEFAULT_INITIAL_BACKOFF,
            max_backoff: Self::DEFAULT_MAX_BACKOFF,
        }
    }
}

pub fn duration_millis_ceil(d: Duration) -> i64 {
    let ms = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Parses a humantime duration (`30m`, `1h 30m`, `90s`) and refuses zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?} is not a duration: {e}"))?;
    if d.is_zero() {
        return Err(format!("{s:?} is zero; a duration must be positive"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_rooms_are_bounded_like_trtc_clients() {
        assert_eq!(Room::numeric("1"), Ok(Room::Numeric(1)));
        assert_eq!(Room::numeric("4294967294"), Ok(Room::Numeric(4_294_967_294)));
        assert!(Room::numeric("0").is_err());
        assert!(Room::numeric("4294967295").is_err());
        assert!(Room::numeric("-3").is_err());
        assert!(Room::numeric("12a").is_err());
    }

    #[test]
    fn call_connection_ids_are_path_safe() {
        assert!(Room::call("18dea47f-b081-4107-9a5c-4300819d2c6c").is_ok());
        assert!(Room::call("a/b").is_err());
        assert!(Room::call("a?b").is_err());
        assert!(Room::call("").is_err());
        assert_eq!(Room::parse(RoomKind::Call, "x-1").unwrap().kind(), RoomKind::Call);
    }

    #[test]
    fn string_rooms_allow_the_sdk_charset_only() {
        assert!(Room::string("consult-42 [a]{b}|~,").is_ok());
        assert!(Room::string("").is_err());
        assert!(Room::string(&"x".repeat(65)).is_err());
        assert!(Room::string("emoji😀").is_err());
        assert!(Room::string("quote\"").is_err());
        assert!(Room::string("slash/").is_err());
    }

    #[test]
    fn instants_round_deadlines_up_and_print_sortable_utc() {
        let t = Instant::parse("2026-11-21T10:00:00.0001+01:00").unwrap();
        assert_eq!(t.to_string(), "2026-11-21T09:00:00.001Z");
        let sqlite = Instant::parse("2026-11-21 09:00:00").unwrap();
        assert_eq!(sqlite.to_string(), "2026-11-21T09:00:00.000Z");
        assert!(Instant::parse("tomorrow").is_err());
    }

    #[test]
    fn durations_refuse_zero_and_garbage() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("thirty").is_err());
        assert_eq!(duration_millis_ceil(Duration::from_micros(1500)), 2);
    }

    #[test]
    fn backoff_grows_is_capped_and_respects_provider_hints() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff_ceiling(1), Duration::from_millis(500));
        assert_eq!(p.backoff_ceiling(3), Duration::from_secs(2));
        assert_eq!(p.backoff_ceiling(30), Duration::from_secs(30));
        assert_eq!(p.backoff(3, None, 0.0), Duration::from_secs(1));
        assert_eq!(p.backoff(3, None, 1.0), Duration::from_secs(2));
        assert_eq!(p.backoff(1, Some(Duration::from_secs(5)), 0.3), Duration::from_secs(5));
        // A provider's hint is honoured up to max_backoff, never beyond.
        assert_eq!(p.backoff(1, Some(Duration::from_secs(86_400)), 0.3), p.max_backoff);
        assert_eq!(p.backoff(1, Some(Duration::MAX), 0.3), p.max_backoff);
        assert_eq!(p.backoff(3, None, f64::NAN), Duration::from_secs(2));
    }

    #[test]
    fn states_round_trip_through_text() {
        for s in SessionState::ALL {
            assert_eq!(s.as_str().parse::<SessionState>(), Ok(s));
        }
    }

    #[test]
    fn the_default_retries_ride_out_a_90_second_outage() {
        let p = RetryPolicy::default();
        let waits = |r: f64| (1..p.max_attempts).map(|a| p.backoff(a, None, r)).sum::<Duration>();
        assert!(waits(0.0) >= Duration::from_secs(90), "shortest span {:?}", waits(0.0));
        assert!(waits(1.0) <= Duration::from_secs(190), "longest span {:?}", waits(1.0));
    }
}
