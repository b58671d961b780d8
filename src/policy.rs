//! Pure decisions about sessions: given a registration, the configuration and
//! the time, which sessions to store and with what deadline, or why not.
//!
//! The CLI and the HTTP API both register through [`register`], so the same
//! request gets the same answer whichever way it arrives. No I/O here.

use std::collections::HashMap;
use std::time::Duration;

use crate::budget::Standing;
use crate::config::{Config, Policy};
use crate::domain::Action;
use crate::domain::session::NewSession;
use crate::domain::{Instant, Room, RoomKind, SessionId, UserId};

pub mod adoption;

/// What a policy does at a session's deadline: its action, and whether only
/// in shadow (recorded, never sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyAction {
    pub action: Action,
    pub shadow: bool,
}

/// Policy name → what it does at the deadline.
pub fn policy_actions(config: &Config) -> HashMap<String, PolicyAction> {
    config
        .policies
        .values()
        .map(|p| (p.name.clone(), PolicyAction { action: p.action, shadow: p.shadow }))
        .collect()
}

/// A request to limit a call, already parsed into domain values.
#[derive(Debug, Clone)]
pub struct Registration {
    pub policy: String,
    pub room: Room,
    /// Participants to limit, one session each; empty for the whole room.
    pub users: Vec<UserId>,
    /// Default: the policy's `max_duration`, which is also the most allowed.
    pub limit: Option<Duration>,
    /// Default: now.
    pub started_at: Option<Instant>,
}

/// Why a registration was refused, and which of its fields is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    /// `policy`, `room`, `users`, `limit` or `started_at`.
    pub field: &'static str,
    pub reason: String,
}

/// How far back a registration's `started_at` may lie: a call that started
/// a week ago is a mistake (a wrong year, seconds read as milliseconds), and
/// its session would be enforced at once.
pub const STARTED_AT_MAX_PAST: Duration = Duration::from_secs(7 * 24 * 3600);
/// How far ahead `started_at` may lie: a booking registered the day before.
pub const STARTED_AT_MAX_AHEAD: Duration = Duration::from_secs(24 * 3600);

/// Checks how much an extension adds: positive, and no more than a session
/// may last at all (a policy's `max_extension` bounds it further).
pub fn extension(by: Duration) -> Result<Duration, String> {
    if by.is_zero() {
        return Err("an extension must be positive".into());
    }
    if by > crate::config::MAX_SESSION_DURATION {
        return Err(format!(
            "{} is more than a session may last ({})",
            humantime::format_duration(by),
            humantime::format_duration(crate::config::MAX_SESSION_DURATION)
        ));
    }
    Ok(by)
}

fn refuse(field: &'static str, reason: String) -> Refusal {
    Refusal { field, reason }
}

/// Decides the sessions a registration creates. `standings`: where each
/// named user stands against the policy's budget, when it has one (see
/// [`budget_users`]); a user's limit is clipped to what the budget has left,
/// and a user with nothing left gets a session due at once (removed on entry).
pub fn register(
    config: &Config,
    r: &Registration,
    now: Instant,
    standings: &HashMap<UserId, Standing>,
) -> Result<Vec<NewSession>, Refusal> {
    let policy = config.policy(&r.policy).ok_or_else(|| {
        let known: Vec<&str> = config.policies.keys().map(String::as_str).collect();
        refuse("policy", format!("unknown policy {:?} (configured: {})", r.policy, known.join(", ")))
    })?;
    let settings = &config
        .providers
        .get(&policy.provider)
        .ok_or_else(|| refuse("policy", format!("policy {:?} names an unknown provider", policy.name)))?
        .settings;
    if !settings.room_kinds().contains(&r.room.kind()) {
        let wants = if settings.room_kinds().contains(&RoomKind::Call) {
            "an ACS call connection"
        } else {
            "a TRTC room (numeric or string)"
        };
        return Err(refuse(
            "room",
            format!(
                "policy {:?} uses {} provider {:?}, whose sessions name {wants}",
                policy.name,
                settings.kind(),
                policy.provider
            ),
        ));
    }
    if !policy.action.targets_user() && !r.users.is_empty() {
        return Err(refuse(
            "users",
            format!(
                "policy {:?} ends the whole room at the deadline ({}): it takes no participant",
                policy.name,
                policy.action.as_str()
            ),
        ));
    }
    if policy.action.targets_user() && r.users.is_empty() {
        return Err(refuse(
            "users",
            format!("policy {:?} removes a participant at the deadline: name the participant", policy.name),
        ));
    }
    let limit = r.limit.unwrap_or(policy.max_duration);
    if limit > policy.max_duration {
        return Err(refuse(
            "limit",
            format!(
                "{} is longer than policy {:?} allows ({})",
                humantime::format_duration(limit),
                policy.name,
                humantime::format_duration(policy.max_duration)
            ),
        ));
    }
    if limit.is_zero() {
        return Err(refuse("limit", "a limit must be positive".into()));
    }
    let started_at = r.started_at.unwrap_or(now);
    if started_at < now.saturating_sub(STARTED_AT_MAX_PAST)
        || started_at > now.saturating_add(STARTED_AT_MAX_AHEAD)
    {
        return Err(refuse(
            "started_at",
            format!(
                "{started_at} is more than {} before or {} after now ({now})",
                humantime::format_duration(STARTED_AT_MAX_PAST),
                humantime::format_duration(STARTED_AT_MAX_AHEAD)
            ),
        ));
    }
    let one = |user: Option<UserId>| {
        let standing = user.as_ref().and_then(|u| standings.get(u));
        let (limit, note) = clip_to_budget(policy, limit, standing);
        session(policy, r.room.clone(), user, started_at, limit, note)
    };
    Ok(if r.users.is_empty() {
        vec![one(None)]
    } else {
        r.users.iter().cloned().map(|u| one(Some(u))).collect()
    })
}

/// A session of `policy` lasting `limit` from `started_at`, plus the
/// policy's grace, with its warnings.
fn session(
    policy: &Policy,
    room: Room,
    user: Option<UserId>,
    started_at: Instant,
    limit: Duration,
    note: Option<String>,
) -> NewSession {
    NewSession {
        id: SessionId::new(),
        policy: policy.name.clone(),
        provider: policy.provider.clone(),
        room,
        user,
        started_at,
        deadline: started_at.saturating_add(limit).saturating_add(policy.grace),
        grace: policy.grace,
        warn_before: policy.warn_before.clone(),
        note,
    }
}

/// The limit a budget leaves, and a note saying so when it is less than asked.
pub(crate) fn clip_to_budget(
    policy: &Policy,
    limit: Duration,
    standing: Option<&Standing>,
) -> (Duration, Option<String>) {
    let (Some(budget), Some(s)) = (&policy.budget, standing) else {
        return (limit, None);
    };
    let fmt = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
    // "42m of 1h per day used", or "42m used and 18m booked by running
    // sessions, of 1h per day".
    let spent = match s.booked.is_zero() {
        true => format!("{} of {} per {} used", fmt(s.used), fmt(s.limit), budget.window),
        false => format!(
            "{} used and {} booked by running sessions, of {} per {}",
            fmt(s.used),
            fmt(s.booked),
            fmt(s.limit),
            budget.window
        ),
    };
    if s.exhausted() {
        return (Duration::ZERO, Some(format!("budget exhausted: {spent}; removed on entry")));
    }
    if s.remaining() < limit {
        let note = format!("limit cut to the budget's remaining {} ({spent})", fmt(s.remaining()));
        return (s.remaining(), Some(note));
    }
    (limit, None)
}

/// The users of a registration whose budget must be looked up first: all of
/// them when the policy has a budget, none otherwise.
pub fn budget_users<'a>(config: &'a Config, r: &'a Registration) -> Option<(&'a Policy, &'a [UserId])> {
    let policy = config.policy(&r.policy)?;
    policy.budget.as_ref()?;
    Some((policy, &r.users))
}

/// What a provider's webhook said about a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// The room was created or the call connected.
    RoomOpened,
    /// The room was dismissed or the call disconnected.
    RoomClosed,
    Entered(UserId),
    Left(UserId),
}

/// What to do about a presence event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Register this session, unless the policy already has one active for
    /// the same room and participant.
    Open(NewSession),
    /// End the room's active sessions (all of them, no provider call).
    EndRoom,
    /// End this participant's active sessions in the room.
    EndParticipant(UserId),
}

/// The policy a webhook event falls under: the first in file order whose
/// provider is `provider` and whose `match` fits the room (and, for TRTC,
/// the application). Policies without `match` take no webhook events.
pub fn webhook_policy<'a>(
    config: &'a Config,
    provider: &str,
    room: &Room,
    sdk_app_id: Option<u64>,
) -> Option<&'a crate::config::Policy> {
    let id = room.id_text();
    config
        .policies
        .values()
        .find(|p| p.provider == provider && p.matcher.as_ref().is_some_and(|m| m.fits(&id, sdk_app_id)))
}

/// Decides what a presence event does. `at` is when it happened, by the
/// provider's clock: a participant's clock starts when they entered.
pub fn on_presence(
    config: &Config,
    provider: &str,
    sdk_app_id: Option<u64>,
    room: &Room,
    event: &Presence,
    at: Instant,
    standing: Option<Standing>,
) -> Vec<Effect> {
    use crate::config::Scope;
    match event {
        Presence::RoomClosed => vec![Effect::EndRoom],
        Presence::Left(user) => vec![Effect::EndParticipant(user.clone())],
        Presence::RoomOpened | Presence::Entered(_) => {
            let Some(policy) = webhook_policy(config, provider, room, sdk_app_id) else {
                return Vec::new();
            };
            let user = match (policy.scope, event) {
                (Scope::Participant, Presence::Entered(user)) => Some(user.clone()),
                // A room clock starts with the room, or its first entry.
                (Scope::Room, _) => None,
                // A participant policy has nothing to time until someone enters.
                (Scope::Participant, _) => return Vec::new(),
            };
            let (limit, note) = clip_to_budget(policy, policy.max_duration, standing.as_ref());
            vec![Effect::Open(session(policy, room.clone(), user, at, limit, note))]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        let text = "\
database: cw.db
providers:
  trtc: { kind: tencent-trtc, sdk_app_id: 1400000001, region: ap-guangzhou, secret_id: AKID, secret_key: k }
  acs: { kind: azure-acs, endpoint: 'https://x.communication.azure.com', access_key: a2V5 }
policies:
  consultation: { provider: trtc, max_duration: 30m, action: dismiss_room }
  paid-chat: { provider: trtc, max_duration: 20m, action: remove_user }
  acs-chat: { provider: acs, max_duration: 10m, action: remove_participant }
";
        Config::parse(Path::new("/c.yaml"), text).unwrap()
    }

    fn reg(policy: &str, room: Room, users: &[&str]) -> Registration {
        Registration {
            policy: policy.into(),
            room,
            users: users.iter().map(|u| UserId::parse(u).unwrap()).collect(),
            limit: None,
            started_at: None,
        }
    }

    #[test]
    fn the_deadline_is_start_plus_limit_defaulting_to_the_policy() {
        let now = Instant::from_millis(1_000_000);
        let s =
            register(&config(), &reg("consultation", Room::Numeric(1), &[]), now, &HashMap::new()).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].deadline, now.saturating_add(Duration::from_secs(1800)));
        assert_eq!(s[0].provider, "trtc");
        let mut r = reg("paid-chat", Room::Str("x".into()), &["a", "b"]);
        r.limit = Some(Duration::from_secs(60));
        r.started_at = Some(Instant::from_millis(0));
        let s = register(&config(), &r, now, &HashMap::new()).unwrap();
        assert_eq!(s.len(), 2, "one session per participant");
        assert_eq!(s[1].deadline, Instant::from_millis(60_000));
    }

    fn webhook_config() -> Config {
        let text = "\
database: cw.db
providers:
  trtc: { kind: tencent-trtc, sdk_app_id: 1400000001, region: ap-guangzhou, secret_id: AKID, secret_key: k }
policies:
  manual: { provider: trtc, max_duration: 5m, action: dismiss_room }
  vip: { provider: trtc, match: { room: '9*' }, max_duration: 60m, action: dismiss_room }
  chat: { provider: trtc, match: { room: 'chat-*', sdk_app_id: 1400000001 }, max_duration: 20m, action: remove_user }
";
        Config::parse(Path::new("/c.yaml"), text).unwrap()
    }

    fn opened(effects: Vec<Effect>) -> NewSession {
        match effects.as_slice() {
            [Effect::Open(s)] => s.clone(),
            other => panic!("expected one session opened, got {other:?}"),
        }
    }

    #[test]
    fn webhook_events_take_the_first_matching_policy_and_open_by_scope() {
        let c = webhook_config();
        let at = Instant::from_millis(0);
        let alice = UserId::parse("alice").unwrap();
        let open = |room: Room, e: Presence| on_presence(&c, "trtc", Some(1400000001), &room, &e, at, None);
        // Room 9xx: the room-scope "vip" policy; opened by creation or first entry.
        let s = opened(open(Room::Numeric(912), Presence::RoomOpened));
        assert_eq!((s.policy.as_str(), s.user.clone()), ("vip", None));
        assert_eq!(s.deadline, at.saturating_add(Duration::from_secs(3600)));
        let s = opened(open(Room::Numeric(912), Presence::Entered(alice.clone())));
        assert_eq!(s.user, None, "a room-scope policy times the room, not the user");
        // String rooms chat-*: a participant clock per entry, none for the room.
        let s = opened(open(Room::Str("chat-1".into()), Presence::Entered(alice.clone())));
        assert_eq!((s.policy.as_str(), s.user), ("chat", Some(alice.clone())));
        assert!(open(Room::Str("chat-1".into()), Presence::RoomOpened).is_empty());
        // No policy without match is ever chosen; other apps do not match.
        assert!(open(Room::Numeric(123), Presence::RoomOpened).is_empty());
        let other_app = on_presence(
            &c,
            "trtc",
            Some(7),
            &Room::Str("chat-1".into()),
            &Presence::Entered(alice),
            at,
            None,
        );
        assert!(other_app.is_empty());
    }

    #[test]
    fn refusals_name_the_field_at_fault() {
        let now = Instant::from_millis(0);
        let field = |r: Registration| register(&config(), &r, now, &HashMap::new()).unwrap_err().field;
        assert_eq!(field(reg("nope", Room::Numeric(1), &[])), "policy");
        assert_eq!(field(reg("acs-chat", Room::Numeric(1), &["8:acs:x"])), "room");
        assert_eq!(field(reg("consultation", Room::Call("c".into()), &[])), "room");
        assert_eq!(field(reg("paid-chat", Room::Numeric(1), &[])), "users");
        let mut long = reg("consultation", Room::Numeric(1), &[]);
        long.limit = Some(Duration::from_secs(3600));
        assert_eq!(field(long), "limit");
    }

    fn budget_config() -> Config {
        let text = "\
database: cw.db
providers:
  trtc: { kind: tencent-trtc, sdk_app_id: 1400000001, region: ap-guangzhou, secret_id: AKID, secret_key: k }
notifications: { url: 'http://127.0.0.1:9/hook', secret: s3cret-s3cret-s3cret }
policies:
  paid-chat:
    provider: trtc
    match: { room: 'chat-*' }
    max_duration: 20m
    warn_before: [1m, 5m]
    grace: 30s
    budget: { per: user, window: day, limit: 60m }
    action: remove_user
";
        Config::parse(Path::new("/c.yaml"), text).unwrap()
    }

    #[test]
    fn grace_follows_the_booked_time_and_warnings_come_longest_first() {
        let c = budget_config();
        let p = c.policy("paid-chat").unwrap();
        assert_eq!(p.warn_before, vec![Duration::from_secs(300), Duration::from_secs(60)]);
        let now = Instant::from_millis(0);
        let s = register(&c, &reg("paid-chat", Room::Numeric(1), &["a"]), now, &HashMap::new()).unwrap();
        assert_eq!(s[0].booked_end(), Instant::from_millis(20 * 60_000));
        assert_eq!(s[0].deadline, Instant::from_millis(20 * 60_000 + 30_000));
        assert_eq!(s[0].grace, Duration::from_secs(30));
    }

    #[test]
    fn a_budget_cuts_the_limit_to_what_is_left_or_to_nothing() {
        let c = budget_config();
        let now = Instant::from_millis(0);
        let min = |m: u64| Duration::from_secs(m * 60);
        let standing = |used: u64| crate::budget::Standing {
            window_start: now,
            window_end: now.saturating_add(min(24 * 60)),
            used: min(used),
            booked: min(0),
            limit: min(60),
        };
        let a = UserId::parse("a").unwrap();
        let b = UserId::parse("b").unwrap();
        let standings = HashMap::from([(a.clone(), standing(52)), (b.clone(), standing(60))]);
        let s = register(&c, &reg("paid-chat", Room::Numeric(1), &["a", "b", "c"]), now, &standings).unwrap();
        // a: 8 minutes left, less than the policy's 20; the grace still follows.
        assert_eq!(s[0].booked_end(), now.saturating_add(min(8)));
        assert!(s[0].note.as_deref().unwrap().contains("remaining 8m"), "{:?}", s[0].note);
        // b: nothing left, so due at once (plus grace): removed on entry.
        assert_eq!(s[1].booked_end(), now);
        assert!(s[1].note.as_deref().unwrap().starts_with("budget exhausted"));
        // c: no standing known (nothing used): the policy's limit.
        assert_eq!(s[2].booked_end(), now.saturating_add(min(20)));
        assert_eq!(s[2].note, None);
        // Time booked by a session still running counts as spent: 30 used
        // and 25 booked leave 5.
        let booked = crate::budget::Standing { booked: min(25), ..standing(30) };
        let standings = HashMap::from([(a.clone(), booked)]);
        let s = register(&c, &reg("paid-chat", Room::Numeric(1), &["a"]), now, &standings).unwrap();
        assert_eq!(s[0].booked_end(), now.saturating_add(min(5)));
        let note = s[0].note.as_deref().unwrap();
        assert!(
            note.contains("remaining 5m (30m used and 25m booked by running sessions, of 1h per day)"),
            "{note}"
        );
        // Webhook entries are clipped alike.
        let opened =
            on_presence(&c, "trtc", None, &Room::Numeric(1), &Presence::Entered(a), now, Some(standing(59)));
        assert!(opened.is_empty(), "paid-chat has no match, so webhooks do not open it");
    }
}
