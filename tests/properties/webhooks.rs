//! The webhook gates (`http::webhooks::verify_trtc_callback` and
//! `verify_acs_callback`, everything the handlers do before touching the
//! store): no input panics them, a wrong credential is always refused before
//! the body is looked at, and a correctly signed body gives back exactly the
//! event that was sent.

use axum::http::{HeaderMap, HeaderValue};
use callwarden::domain::{Instant, Room, SessionId, UserId};
use callwarden::http::webhooks::{
    AcsEvent, GateRefusal, ResultInfo, TrtcEvent, verify_acs_callback, verify_trtc_callback,
};
use callwarden::intake::presence::Cause;
use callwarden::policy::Presence;
use callwarden::providers::trtc::callback_signature;
use proptest::prelude::*;
use serde_json::{Value, json};

fn headers(sign: Option<&str>, sdk_app_id: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    // Header values that HTTP cannot carry are left out, as a server would.
    if let Some(v) = sign.and_then(|s| HeaderValue::from_str(s).ok()) {
        h.insert("sign", v);
    }
    if let Some(v) = sdk_app_id.and_then(|s| HeaderValue::from_str(s).ok()) {
        h.insert("sdkappid", v);
    }
    h
}

/// Bytes that are sometimes JSON, sometimes almost, sometimes not at all.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        any::<String>().prop_map(String::into_bytes),
        json_value().prop_map(|v| v.to_string().into_bytes()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::from),
        proptest::sample::select(
            &[
                "EventGroupId",
                "EventType",
                "CallbackTs",
                "EventInfo",
                "RoomId",
                "UserId",
                "EventMsTs",
                "type",
                "data",
                "callConnectionId",
                "participants",
                "sequenceNumber",
                "identifier",
                "rawId",
                "Microsoft.Communication.ParticipantsUpdated",
                "Microsoft.Communication.RemoveParticipantFailed",
            ][..]
        )
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec(
                (
                    proptest::sample::select(
                        &[
                            "EventGroupId",
                            "EventType",
                            "CallbackTs",
                            "EventInfo",
                            "RoomId",
                            "UserId",
                            "EventMsTs",
                            "EventTs",
                            "type",
                            "data",
                            "time",
                            "callConnectionId",
                            "operationContext",
                            "resultInformation",
                            "participants",
                            "sequenceNumber",
                            "identifier",
                            "rawId",
                            "x",
                        ][..]
                    ),
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

// ---- TRTC --------------------------------------------------------------------

const STR_ROOM_CHARS: &str = "[a-zA-Z0-9 !#$%&()+:;<=.>?@^_|~,\\[\\]{}-]{1,64}";

fn room() -> impl Strategy<Value = Room> {
    prop_oneof![
        (1u32..=4_294_967_294).prop_map(Room::Numeric),
        STR_ROOM_CHARS.prop_map(|s| Room::string(&s).unwrap()),
    ]
}

fn user() -> impl Strategy<Value = UserId> {
    "[^\\p{Cc}]{1,40}".prop_map(|s| UserId::parse(&s).unwrap())
}

/// A TRTC callback as the provider would send it, and the event it means.
fn trtc_callback() -> impl Strategy<Value = (Value, TrtcEvent)> {
    let kinds =
        prop_oneof![(Just(1i64), 101i64..=104), (Just(1i64), 105i64..=120), (2i64..=5, 201i64..=210),];
    (kinds, room(), user(), 1_500_000_000_000i64..2_500_000_000_000, 0u8..3, any::<bool>(), 0i64..6).prop_map(
        |((group, kind), room, user, ms, stamp, extra, reason)| {
            let room_id = match &room {
                Room::Numeric(n) => json!(n),
                Room::Str(s) | Room::Call(s) => json!(s),
            };
            let mut info =
                json!({ "RoomId": room_id, "UserId": user.as_str(), "Role": 20, "Reason": reason });
            // TRTC sends milliseconds; older event types only seconds; the
            // callback's own stamp is the last resort.
            let at_ms = match stamp {
                0 => {
                    info["EventMsTs"] = json!(ms);
                    info["EventTs"] = json!(ms / 1000);
                    ms
                }
                1 => {
                    info["EventTs"] = json!(ms / 1000);
                    ms / 1000 * 1000
                }
                _ => ms + 7,
            };
            let mut body =
                json!({ "EventGroupId": group, "EventType": kind, "CallbackTs": ms + 7, "EventInfo": info });
            if extra {
                body["SomethingNew"] = json!({ "added": "later" });
            }
            let presence = match (group, kind) {
                (1, 101) => Some(Presence::RoomOpened),
                (1, 102) => Some(Presence::RoomClosed),
                (1, 103) => Some(Presence::Entered(user)),
                (1, 104) => Some(Presence::Left(user)),
                _ => None,
            };
            let cause = match (group, kind, reason) {
                (1, 103, 2 | 3) => Cause::Reconnect,
                (1, 104, 2) => Cause::TimedOut,
                _ => Cause::Plain,
            };
            (body, TrtcEvent { room, presence, at_ms, kind, callback_ms: ms + 7, cause })
        },
    )
}

/// Ways a `Sign` header can be wrong for `body` under `key`.
#[derive(Debug, Clone)]
enum WrongSign {
    Missing,
    Empty,
    Random(String),
    OtherKey(String),
    OtherBody(Vec<u8>),
    OneCharChanged(prop::sample::Index, char),
    Truncated(prop::sample::Index),
    Padded(&'static str),
    Lowercased,
}

fn wrong_sign() -> impl Strategy<Value = WrongSign> {
    prop_oneof![
        Just(WrongSign::Missing),
        Just(WrongSign::Empty),
        "[A-Za-z0-9+/=]{0,60}".prop_map(WrongSign::Random),
        "[ -~]{0,20}".prop_map(WrongSign::OtherKey),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(WrongSign::OtherBody),
        (any::<prop::sample::Index>(), proptest::char::range('!', '~'))
            .prop_map(|(i, c)| WrongSign::OneCharChanged(i, c)),
        any::<prop::sample::Index>().prop_map(WrongSign::Truncated),
        proptest::sample::select(&[" ", "\t", "=", "A"][..]).prop_map(WrongSign::Padded),
        Just(WrongSign::Lowercased),
    ]
}

/// The wrong header, or `None` when the mutation happened to give back the
/// right one (changing a character to itself, say).
fn make_wrong(wrong: &WrongSign, key: &str, body: &[u8]) -> Option<Option<String>> {
    let right = callback_signature(key, body);
    let sign = match wrong {
        WrongSign::Missing => None,
        WrongSign::Empty => Some(String::new()),
        WrongSign::Random(s) => Some(s.clone()),
        WrongSign::OtherKey(k) => Some(callback_signature(k, body)),
        WrongSign::OtherBody(suffix) => {
            let mut other = body.to_vec();
            other.extend_from_slice(suffix);
            if other.is_empty() {
                other.push(b' ');
            }
            if other == body {
                other.push(b'\n');
            }
            Some(callback_signature(key, &other))
        }
        WrongSign::OneCharChanged(i, c) => {
            let mut chars: Vec<char> = right.chars().collect();
            let at = i.index(chars.len());
            chars[at] = *c;
            Some(chars.into_iter().collect())
        }
        WrongSign::Truncated(i) => Some(right[..i.index(right.len())].to_string()),
        WrongSign::Padded(p) => Some(format!("{right}{p}")),
        WrongSign::Lowercased => Some(right.to_lowercase()),
    };
    (sign.as_deref() != Some(right.as_str())).then_some(sign)
}

proptest! {
    #![proptest_config(super::cases(256))]

    #[test]
    fn trtc_never_panics_on_any_request(
        key in "[ -~]{1,32}",
        body in body(),
        sign in proptest::option::of("[ -~]{0,60}"),
        sdk_app_id in proptest::option::of("[ -~]{0,24}"),
        sign_it in any::<bool>(),
    ) {
        let sign = if sign_it { Some(callback_signature(&key, &body)) } else { sign };
        let h = headers(sign.as_deref(), sdk_app_id.as_deref());
        let result = verify_trtc_callback(&key, &h, &body);
        if let Ok((_, id)) = &result {
            // Accepted only with the right Sign and a numeric SdkAppId.
            let right = callback_signature(&key, &body);
            prop_assert_eq!(h.get("sign").map(|v| v.as_bytes()), Some(right.as_bytes()));
            prop_assert_eq!(sdk_app_id.as_deref().map(|s| s.trim().parse::<u64>()), Some(Ok(*id)));
        }
    }

    #[test]
    fn a_trtc_body_with_a_wrong_sign_is_always_refused(
        key in "[ -~]{1,32}",
        body in prop_oneof![body(), trtc_callback().prop_map(|(v, _)| v.to_string().into_bytes())],
        wrong in wrong_sign(),
        sdk_app_id in proptest::option::of(1u64..=u64::MAX),
    ) {
        let Some(sign) = make_wrong(&wrong, &key, &body) else { return Ok(()) };
        let id = sdk_app_id.map(|n| n.to_string());
        let result = verify_trtc_callback(&key, &headers(sign.as_deref(), id.as_deref()), &body);
        prop_assert_eq!(result, Err(GateRefusal::Unauthorized), "sign {:?}", sign);
    }

    #[test]
    fn a_signed_trtc_callback_gives_back_its_event(
        key in "[ -~]{1,32}",
        (body, event) in trtc_callback(),
        pretty in any::<bool>(),
        sdk_app_id in 1u64..=u64::MAX,
        pad in proptest::sample::select(&["", " ", "  "][..]),
    ) {
        let body = if pretty { serde_json::to_vec_pretty(&body).unwrap() } else { serde_json::to_vec(&body).unwrap() };
        let sign = callback_signature(&key, &body);
        let id = format!("{pad}{sdk_app_id}{pad}");
        let result = verify_trtc_callback(&key, &headers(Some(&sign), Some(&id)), &body);
        prop_assert_eq!(result, Ok((event, sdk_app_id)));
        // Without the SdkAppId header the same body is malformed, not unauthorized.
        let result = verify_trtc_callback(&key, &headers(Some(&sign), None), &body);
        prop_assert!(matches!(result, Err(GateRefusal::Malformed(_))), "{:?}", result);
    }
}

// ---- ACS ---------------------------------------------------------------------

fn call_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~-]{1,40}"
}

/// Milliseconds in this century, as ACS's `time` carries them.
fn at() -> impl Strategy<Value = Option<Instant>> {
    proptest::option::of((946_684_800_000i64..4_102_444_800_000).prop_map(Instant::from_millis))
}

/// One ACS event as sent, and what it means.
fn acs_event() -> impl Strategy<Value = (Value, AcsEvent)> {
    let with_time = |mut v: Value, at: Option<Instant>| {
        if let Some(t) = at {
            v["time"] = json!(t.to_string());
        }
        v
    };
    prop_oneof![
        (
            any::<bool>(),
            proptest::option::of(any::<u128>().prop_map(|n| SessionId(uuid::Uuid::from_u128(n)))),
            call_id(),
            proptest::option::of(any::<i64>()),
            proptest::option::of(any::<i64>()),
            proptest::option::of("[ -~]{0,30}"),
        )
            .prop_map(|(succeeded, session, call, code, sub_code, message)| {
                let kind = if succeeded { "RemoveParticipantSucceeded" } else { "RemoveParticipantFailed" };
                let mut data = json!({ "callConnectionId": call });
                if let Some(s) = session {
                    data["operationContext"] = json!(s.to_string());
                }
                let mut result = json!({});
                if let Some(c) = code {
                    result["code"] = json!(c);
                }
                if let Some(c) = sub_code {
                    result["subCode"] = json!(c);
                }
                if let Some(m) = &message {
                    result["message"] = json!(m);
                }
                data["resultInformation"] = result;
                let sent = json!({ "type": format!("Microsoft.Communication.{kind}"), "data": data, "specversion": "1.0" });
                let event = AcsEvent::RemoveParticipant {
                    succeeded,
                    session,
                    call,
                    result: ResultInfo { code, sub_code, message },
                };
                (sent, event)
            }),
        (any::<bool>(), call_id(), at()).prop_map(move |(connected, call, at)| {
            let kind = if connected { "CallConnected" } else { "CallDisconnected" };
            let sent = with_time(
                json!({ "type": format!("Microsoft.Communication.{kind}"), "data": { "callConnectionId": call } }),
                at,
            );
            let event = if connected {
                AcsEvent::CallConnected { call, at }
            } else {
                AcsEvent::CallDisconnected { call, at }
            };
            (sent, event)
        }),
        (call_id(), proptest::option::of(any::<i64>()), proptest::collection::vec(user(), 0..5), at()).prop_map(
            move |(call, sequence, participants, at)| {
                let list: Vec<Value> = participants
                    .iter()
                    .map(|u| json!({ "identifier": { "rawId": u.as_str(), "kind": "communicationUser" } }))
                    .collect();
                // sequenceNumber is optional (the SDKs' samples leave it out).
                let mut data = json!({ "callConnectionId": call, "participants": list });
                if let Some(n) = sequence {
                    data["sequenceNumber"] = json!(n);
                }
                let sent = with_time(json!({ "type": "Microsoft.Communication.ParticipantsUpdated", "data": data }), at);
                (sent, AcsEvent::ParticipantsUpdated { call, sequence, participants, at })
            }
        ),
        ("[A-Za-z]{1,20}", call_id()).prop_map(|(kind, call)| {
            let known = ["RemoveParticipantSucceeded", "RemoveParticipantFailed", "CallConnected", "CallDisconnected", "ParticipantsUpdated"];
            let kind = if known.contains(&kind.as_str()) { format!("{kind}X") } else { kind };
            let sent = json!({ "type": format!("Microsoft.Communication.{kind}"), "data": { "callConnectionId": call } });
            (sent, AcsEvent::Other(kind))
        }),
    ]
}

/// `token=<secret>` as a URL query carries it: percent-encoded where needed.
fn token_query(secret: &str) -> String {
    let mut out = String::from("token=");
    for b in secret.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Ways a query can carry no token, or the wrong one.
fn wrong_query(secret: &str) -> BoxedStrategy<Option<String>> {
    let s = secret.to_string();
    let s2 = s.clone();
    let s3 = s.clone();
    let s4 = s.clone();
    let s5 = s.clone();
    prop_oneof![
        Just(None),
        Just(Some(String::new())),
        Just(Some(format!("tok={}", &token_query(&s)[6..]))),
        Just(Some(format!("Token={}", &token_query(&s)[6..]))),
        Just(Some(token_query(&s[..s.len() - 1]))),
        "[a-zA-Z0-9]{1,4}".prop_map(move |extra| Some(token_query(&format!("{s2}{extra}")))),
        (any::<prop::sample::Index>(), "[a-zA-Z0-9]").prop_map(move |(i, c)| {
            let mut chars: Vec<char> = s3.chars().collect();
            let at = i.index(chars.len());
            chars[at] = c.chars().next().unwrap();
            let changed: String = chars.into_iter().collect();
            (changed != s3).then(|| token_query(&changed))
        }),
        "[ -~]{0,40}".prop_map(move |junk| (junk != s4).then(|| token_query(&junk))),
        Just(Some(format!("a=1&other={}", &token_query(&s5)[6..]))),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(super::cases(256))]

    #[test]
    fn acs_never_panics_on_any_request(
        secret in "[ -~]{1,32}",
        query in proptest::option::of("[ -~]{0,60}"),
        body in body(),
        right_token in any::<bool>(),
    ) {
        let query = if right_token { Some(token_query(&secret)) } else { query };
        let _ = verify_acs_callback(&secret, query.as_deref(), &body);
    }

    #[test]
    fn an_acs_callback_without_the_right_token_is_always_refused(
        (secret, query) in "[A-Za-z0-9!-/]{2,32}".prop_flat_map(|s| (Just(s.clone()), wrong_query(&s))),
        body in prop_oneof![body(), acs_event().prop_map(|(v, _)| Value::Array(vec![v]).to_string().into_bytes())],
    ) {
        prop_assert_eq!(verify_acs_callback(&secret, query.as_deref(), &body), Err(GateRefusal::Unauthorized), "query {:?}", query);
    }

    #[test]
    fn an_authenticated_acs_callback_gives_back_its_events(
        secret in "[ -~]{1,32}",
        events in proptest::collection::vec(acs_event(), 1..6),
        single in any::<bool>(),
        before in proptest::sample::select(&["", "a=1&", "token2=x&"][..]),
    ) {
        let (sent, expected): (Vec<Value>, Vec<AcsEvent>) = events.into_iter().unzip();
        let body = if single && sent.len() == 1 { sent[0].to_string() } else { Value::Array(sent).to_string() };
        let query = format!("{before}{}", token_query(&secret));
        let expected: Vec<Result<AcsEvent, String>> = expected.into_iter().map(Ok).collect();
        prop_assert_eq!(verify_acs_callback(&secret, Some(&query), body.as_bytes()), Ok(expected));
    }

    #[test]
    fn one_malformed_acs_event_fails_alone(
        secret in "[ -~]{1,32}",
        events in proptest::collection::vec(acs_event(), 0..4),
        at in any::<prop::sample::Index>(),
        broken in prop_oneof![
            Just(json!({ "data": { "callConnectionId": "c" } })),
            Just(json!({ "type": "Microsoft.Communication.CallDisconnected", "data": {} })),
            Just(json!({ "type": "Microsoft.Communication.CallConnected", "data": { "callConnectionId": "" } })),
            Just(json!({ "type": "Microsoft.Communication.RemoveParticipantFailed" })),
            Just(json!({ "type": "Microsoft.Communication.ParticipantsUpdated", "data": { "callConnectionId": "c" } })),
            Just(json!({ "type": "Microsoft.Communication.ParticipantsUpdated", "data": { "callConnectionId": "c", "sequenceNumber": "1", "participants": [] } })),
            Just(json!({ "type": "Microsoft.Communication.ParticipantsUpdated", "data": { "callConnectionId": "c", "sequenceNumber": 1, "participants": [{ "identifier": {} }] } })),
            Just(json!({ "type": 7 })),
        ],
    ) {
        let (mut sent, expected): (Vec<Value>, Vec<AcsEvent>) = events.into_iter().unzip();
        let index = at.index(sent.len() + 1);
        sent.insert(index, broken);
        let body = Value::Array(sent).to_string();
        let parsed = verify_acs_callback(&secret, Some(&token_query(&secret)), body.as_bytes());
        let Ok(mut parsed) = parsed else { return Err(TestCaseError::fail(format!("{parsed:?}"))) };
        prop_assert!(parsed.remove(index).is_err());
        let expected: Vec<Result<AcsEvent, String>> = expected.into_iter().map(Ok).collect();
        prop_assert_eq!(parsed, expected);
    }
}
