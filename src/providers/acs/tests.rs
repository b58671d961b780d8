use super::*;

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const DATE: &str = "Tue, 14 Nov 2023 22:13:20 GMT";
const HOST: &str = "contoso.communication.azure.com";

#[test]
fn vector_a_remove_participant() {
    let body = br#"{"participantToRemove":{"kind":"communicationUser","communicationUser":{"id":"8:acs:test-user"}},"operationContext":"limit"}"#;
    assert_eq!(body.len(), 124);
    let hash = content_hash(body);
    assert_eq!(hash, "FJYeuifrbxVtMhMeGIF1wKwOacZlOj286GOTQdyM5OM=");
    let sts = string_to_sign(
        "POST",
        "/calling/callConnections/18dea47f-b081-4107-9a5c-4300819d2c6c/participants:remove?api-version=2024-09-15",
        DATE,
        HOST,
        &hash,
    );
    assert_eq!(signature(KEY, &sts).unwrap(), "eJBdgKRGW6L/8h/7otQEWiRw2I9PlM14cFgBQ8vhZZ8=");
}

#[test]
fn vector_b_terminate_with_empty_body() {
    let hash = content_hash(b"");
    assert_eq!(hash, "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
    let sts = string_to_sign(
        "post",
        "/calling/callConnections/18dea47f-b081-4107-9a5c-4300819d2c6c:terminate?api-version=2024-09-15",
        DATE,
        HOST,
        &hash,
    );
    assert_eq!(
        sts,
        "POST\n/calling/callConnections/18dea47f-b081-4107-9a5c-4300819d2c6c:terminate?api-version=2024-09-15\nTue, 14 Nov 2023 22:13:20 GMT;contoso.communication.azure.com;47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    );
    assert_eq!(signature(KEY, &sts).unwrap(), "mUmQBOyUmP83AXuyei0LGu8BfnYiI+TtOENJiJLNg4k=");
    assert!(signature("not base64!", &sts).is_none());
}

#[test]
fn dates_are_imf_fixdate() {
    let t = DateTime::parse_from_rfc3339("2023-11-14T22:13:20Z").unwrap().with_timezone(&Utc);
    assert_eq!(http_date(t), DATE);
}

#[test]
fn raw_ids_map_to_identifier_kinds() {
    assert_eq!(identifier("8:acs:r_u")["communicationUser"]["id"], "8:acs:r_u");
    assert_eq!(identifier("+15551234567")["phoneNumber"]["value"], "+15551234567");
    assert_eq!(identifier("+15551234567")["rawId"], "4:+15551234567");
    assert_eq!(identifier("4:+15551234567")["phoneNumber"]["value"], "+15551234567");
    let teams = identifier("8:orgid:0000-aad");
    assert_eq!(teams["kind"], "microsoftTeamsUser");
    assert_eq!(teams["microsoftTeamsUser"]["userId"], "0000-aad");
    assert_eq!(identifier("8:gcch:x")["microsoftTeamsUser"]["cloud"], "gcch");
    assert_eq!(identifier("8:teamsvisitor:v")["microsoftTeamsUser"]["isAnonymous"], true);
    assert_eq!(identifier("28:orgid:bot")["microsoftTeamsApp"]["appId"], "bot");
    assert_eq!(identifier("something-else")["kind"], "unknown");
}

#[test]
fn answers_are_classified() {
    let err = |code: &str| format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#);
    assert_eq!(classify(202, br#"{"operationContext":"x"}"#, None), Classified::Success);
    assert_eq!(classify(204, b"", None), Classified::Success);
    assert_eq!(classify(404, err("8522").as_bytes(), None).outcome(), "already_ended");
    assert_eq!(classify(400, err("8528").as_bytes(), None).outcome(), "already_ended");
    assert_eq!(classify(400, err("8523").as_bytes(), None).outcome(), "fatal");
    assert_eq!(classify(401, b"", None).outcome(), "fatal");
    assert_eq!(classify(403, err("7504").as_bytes(), None).outcome(), "fatal");
    assert_eq!(classify(412, b"", None).outcome(), "retryable");
    let wait = Some(Duration::from_secs(3));
    assert_eq!(
        classify(429, b"", wait),
        Classified::Retryable { code: "HTTP429".into(), message: String::new(), wait }
    );
    assert_eq!(classify(503, b"", None).outcome(), "retryable");
    assert_eq!(classify(409, err("8519").as_bytes(), None).outcome(), "retryable");
    assert_eq!(classify(501, b"", None).outcome(), "fatal");
    let in_message = br#"{"error":{"code":"BadRequest","message":"Call terminated. DiagCode: 400#8528"}}"#;
    assert_eq!(classify(400, in_message, None).outcome(), "already_ended");
}

#[test]
fn a_404_is_already_ended_only_when_the_call_or_participant_is_gone() {
    let err = |code: &str| format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#);
    for gone in ["8522", "8558", "8543"] {
        assert_eq!(classify(404, err(gone).as_bytes(), None).outcome(), "already_ended", "{gone}");
    }
    let said = br#"{"error":{"code":"NotFound","message":"Call not found."}}"#;
    assert_eq!(classify(404, said, None).outcome(), "already_ended");
    // A wrong api_version or path: ASP.NET's route-not-found, no subcode.
    let route = br#"{"Message":"No HTTP resource was found that matches the request URI 'https://x/calling/callConnections/c:terminate?api-version=2023-01-15-preview'."}"#;
    let c = classify(404, route, None);
    assert_eq!(c.outcome(), "fatal");
    assert!(c.message().is_some_and(|m| m.contains("api_version")), "{c:?}");
    assert_eq!(classify(404, b"", None).outcome(), "fatal");
    assert_eq!(classify(404, err("8523").as_bytes(), None).outcome(), "fatal");
}

#[test]
fn a_call_that_is_ending_or_not_established_is_already_ended() {
    let err = |code: &str| format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#);
    for ending in ["8501", "8585", "8522", "8558", "8543", "8528"] {
        assert_eq!(classify(400, err(ending).as_bytes(), None).outcome(), "already_ended", "{ending}");
    }
}

#[test]
fn only_a_412_about_repeatability_renews_the_id() {
    let media = br#"{"error":{"code":"8583","message":"Precondition Failed"}}"#;
    assert_eq!(classify(412, media, None).outcome(), "retryable");
    assert!(!repeatability_expired(Some(412), media));
    assert!(repeatability_expired(Some(412), b""));
    assert!(repeatability_expired(Some(412), br#"{"error":{"code":"PreconditionFailed","message":"m"}}"#));
    assert!(!repeatability_expired(Some(409), b""));
    assert!(!repeatability_expired(None, b""));
}

#[test]
fn the_subcode_is_read_from_the_error_fields_only() {
    let sub = |body: &str| subcode(&serde_json::from_str(body).unwrap());
    assert_eq!(sub(r#"{"error":{"code":"8522","message":"m"}}"#), Some(8522));
    assert_eq!(sub(r#"{"error":{"code":8522,"message":"m"}}"#), Some(8522));
    assert_eq!(sub(r#"{"error":{"code":"BadRequest","innererror":{"code":"8585"}}}"#), Some(8585));
    assert_eq!(
        sub(r#"{"error":{"code":"BadRequest","message":"Call ended. DiagCode: 400#8528."}}"#),
        Some(8528)
    );
    // Digits inside ids and GUIDs are not subcodes.
    let ids = r#"{"error":{"code":"BadRequest","message":"Participant 8:acs:1b2c_00000013-2ff6-8522-9e1b06caca01 is invalid"}}"#;
    assert_eq!(sub(ids), None);
    assert_eq!(classify(400, ids.as_bytes(), None).outcome(), "fatal");
}

#[test]
fn retry_after_is_read_in_azure_core_order() {
    let now = DateTime::parse_from_rfc3339("2023-11-14T22:13:20Z").unwrap().with_timezone(&Utc);
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("retry-after", "7".parse().unwrap());
    assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
    h.insert("retry-after-ms", "1500".parse().unwrap());
    assert_eq!(retry_after(&h, now), Some(Duration::from_millis(1500)));
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("retry-after", "Tue, 14 Nov 2023 22:13:30 GMT".parse().unwrap());
    assert_eq!(retry_after(&h, now), Some(Duration::from_secs(10)));
    assert_eq!(retry_after(&reqwest::header::HeaderMap::new(), now), None);
}

/// Finding 15: `inf` and `1e30` panicked in `Duration::from_secs_f64`.
#[test]
fn retry_after_never_panics_on_what_a_proxy_may_send() {
    let now = DateTime::parse_from_rfc3339("2023-11-14T22:13:20Z").unwrap().with_timezone(&Utc);
    for (name, value, expected) in [
        ("retry-after-ms", "inf", None),
        ("retry-after-ms", "NaN", None),
        ("retry-after-ms", "-5", None),
        ("x-ms-retry-after-ms", "1e30", Some(Duration::MAX)),
        ("retry-after", "inf", None),
        ("retry-after", "-inf", None),
        ("retry-after", "1e30", Some(Duration::MAX)),
        ("retry-after", "99999999999999999999", Some(Duration::MAX)),
        ("retry-after", "Tue, 14 Nov 2023 22:13:00 GMT", Some(Duration::ZERO)),
        ("retry-after", "soon", None),
    ] {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        assert_eq!(retry_after(&h, now), expected, "{name}: {value}");
    }
}
