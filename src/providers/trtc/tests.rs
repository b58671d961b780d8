//! TC3 signing against the vectors in providers.md, and the classification
//! of every TRTC answer.

use super::*;
use crate::domain::UserId;

const ID: &str = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE";
const KEY: &str = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE";
const VECTOR_A_BODY: &str =
    r#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;

fn vector_a(signed_action: Option<&'static str>) -> Tc3Input<'static> {
    Tc3Input {
        host: "cvm.tencentcloudapi.com",
        service: "cvm",
        content_type: "application/json; charset=utf-8",
        signed_action,
        timestamp: 1551113065,
        body: VECTOR_A_BODY.as_bytes(),
    }
}

#[test]
fn vector_a_official_doc_example() {
    let input = vector_a(None);
    assert_eq!(VECTOR_A_BODY.len(), 86);
    assert_eq!(sha256_hex(input.body), "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064");
    assert_eq!(
        sha256_hex(input.canonical_request().as_bytes()),
        "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
    );
    let k_date = hmac(format!("TC3{KEY}").as_bytes(), b"2019-02-25");
    assert_eq!(hex::encode(&k_date), "d1308c81fe71cfd4e06437bbc067b2b8a3d2d8c0e375d547f15c41d5214b395a");
    assert_eq!(
        hex::encode(signing_key(KEY, "2019-02-25", "cvm")),
        "ac658d5dde49e9bfdd14e04e062f66b05d9f637d44b8a8d845327d4a77f666b1"
    );
    assert_eq!(signature(KEY, &input), "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168");
}

#[test]
fn vector_a_with_signed_action_header() {
    let input = vector_a(Some("DescribeInstances"));
    assert_eq!(
        sha256_hex(input.canonical_request().as_bytes()),
        "7019a55be8395899b900fb5564e4200d984910f34794a27cb3fb7d10ff6a1e84"
    );
    assert_eq!(signature(KEY, &input), "644be983de9a8a3f00db8eadaba61467c3b429e2215758ba897b738ca469fd26");
}

#[test]
fn vector_b_masked_key() {
    assert_eq!(
        signature("Gu5t9xGARNpq86cd98joQYCN3*******", &vector_a(None)),
        "2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c"
    );
}

#[test]
fn vector_c_from_published_key_chain() {
    let secret_date =
        hex::decode("da98fb70dcf6b112dc21038d1eeeb3a95c74b4dcb12c1131f864f6066bd02be0").unwrap();
    let secret_service = hmac(&secret_date, b"cvm");
    assert_eq!(
        hex::encode(&secret_service),
        "8d70cbefb03939f929db64d32dc2ba89b1095620119fe3e050e2b18c5bd2752f"
    );
    let secret_signing = hmac(&secret_service, b"tc3_request");
    assert_eq!(
        hex::encode(&secret_signing),
        "b596b923aad85185e2d1f6659d2a062e0a86731226e021e61bfe06f7ed05f5af"
    );
    let input = vector_a(Some("DescribeInstances"));
    assert_eq!(
        signature_with_key(&secret_signing, &input.string_to_sign()),
        "10b1a37a7301a02ca19a647ad722d5e43b4b3cff309d421d85b46093f6ab6c4f"
    );
}

fn vector_d(body: &'static str) -> Tc3Input<'static> {
    Tc3Input {
        host: "trtc.tencentcloudapi.com",
        service: SERVICE,
        content_type: CONTENT_TYPE,
        signed_action: None,
        timestamp: 1700000000,
        body: body.as_bytes(),
    }
}

#[test]
fn vector_d_all_four_trtc_actions() {
    let cases = [
        (
            r#"{"SdkAppId": 1400000001, "RoomId": 1234}"#,
            "3e3dfac1ce910512ec853f2a18e78d4f2d28a7c9f55fd516735897dcf68a7442",
            "3e269aaa1b6b9cd58434ca2a19d723c0e188cdbbd12b1c1f85c6a514bee816d9",
        ),
        (
            r#"{"SdkAppId": 1400000001, "RoomId": "abcd"}"#,
            "99c4bc8353c01399e43c051dcd92e6c6012fba061a342ee916f48f4df2c6b7f4",
            "b2d786e89baa52edd57f65208eb62240a22bade195621e10866dcae688f31647",
        ),
        (
            r#"{"SdkAppId": 1400000001, "RoomId": 1234, "UserIds": ["test1", "test2"]}"#,
            "7d92e62d28350ac68668924c7ac84c3674772d07ad79510e059ccb8788903f05",
            "5b83adfdcd6c6f0ca880d6114f68e999da8f350b04106b2335bfc54f776f7dd2",
        ),
        (
            r#"{"SdkAppId": 1400000001, "RoomId": "abcd", "UserIds": ["test1", "test2"]}"#,
            "e67a68fa26c4608168385aaa400f74fb320cbbb23403ed877bd87f46910a76fe",
            "c8dc9729d905e90314c57c0a6d4c30d300d7b01736e50f443adb6577d1609df6",
        ),
    ];
    for (body, body_hash, sig) in cases {
        let input = vector_d(body);
        assert_eq!(sha256_hex(input.body), body_hash, "{body}");
        assert_eq!(signature(KEY, &input), sig, "{body}");
    }
}

#[test]
fn vector_d_dismiss_room_intermediates_and_header() {
    let input = vector_d(r#"{"SdkAppId": 1400000001, "RoomId": 1234}"#);
    assert_eq!(
        sha256_hex(input.canonical_request().as_bytes()),
        "63cf47bd04cf4d944cc06e811cba8987fbc78ff945f3b5080bad9e7229d13919"
    );
    assert_eq!(
        hex::encode(signing_key(KEY, "2023-11-14", SERVICE)),
        "09766dff1776df83023bbd3e26e7584c49abca6bec5c14d6aabc1f16fd405de4"
    );
    assert_eq!(
        authorization(ID, KEY, &input),
        "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2023-11-14/trtc/tc3_request, SignedHeaders=content-type;host, Signature=3e269aaa1b6b9cd58434ca2a19d723c0e188cdbbd12b1c1f85c6a514bee816d9"
    );
    let with_action = Tc3Input { signed_action: Some("DismissRoom"), ..input };
    assert_eq!(
        sha256_hex(with_action.canonical_request().as_bytes()),
        "f56c4a8939f23893221f193b7311b4f85c37b2586fe095b8f848e4609a107ee9"
    );
    assert_eq!(
        signature(KEY, &with_action),
        "5392d76b709a51daa3c73676da7860e7572e1d35fb0e052139a5c6a7ce8e67cd"
    );
}

#[test]
fn callback_signatures_match_the_published_vectors() {
    let official = "{\n\t\"EventGroupId\":\t2,\n\t\"EventType\":\t204,\n\t\"CallbackTs\":\t1664209748188,\n\t\"EventInfo\":\t{\n\t\t\"RoomId\":\t8489,\n\t\t\"EventTs\":\t1664209748,\n\t\t\"EventMsTs\":\t1664209748180,\n\t\t\"UserId\":\t\"user_85034614\",\n\t\t\"Reason\":\t0\n\t}\n}";
    assert_eq!(official.len(), 207);
    assert_eq!(
        sha256_hex(official.as_bytes()),
        "4c4c52193bebe962a47d3736aec7a27e81fba536f3a8ecfa04ba306b0edcb2f6"
    );
    assert_eq!(
        callback_signature("123654", official.as_bytes()),
        "kkoFeO3Oh2ZHnjtg8tEAQhtXK16/KI05W3BQff8IvGA="
    );
    let compact = r#"{"EventGroupId":1,"EventType":104,"CallbackTs":1687770731922,"EventInfo":{"RoomId":12345,"EventTs":1687770731,"EventMsTs":1687770731898,"UserId":"test","Role":20,"Reason":1}}"#;
    assert_eq!(compact.len(), 174);
    assert_eq!(
        callback_signature("123654", compact.as_bytes()),
        "4zdsvMJqLcTVNzUWematfa8p4Xp53yF6Y4mEBSSgXzk="
    );
}

#[test]
fn authorization_header_parses_back() {
    let input = vector_d(r#"{"SdkAppId": 1400000001, "RoomId": 1234}"#);
    let parsed = parse_authorization(&authorization(ID, KEY, &input)).unwrap();
    assert_eq!(parsed.secret_id, ID);
    assert_eq!(parsed.date, "2023-11-14");
    assert_eq!(parsed.service, "trtc");
    assert_eq!(parsed.signed_headers, "content-type;host");
    assert!(parse_authorization("Bearer x").is_none());
    assert!(parse_authorization("TC3-HMAC-SHA256 Credential=a/b/c/d").is_none());
}

#[test]
fn bodies_carry_the_parameter_types_each_action_requires() {
    let numeric = Target {
        action: Action::RemoveUser,
        room: Room::Numeric(1234),
        users: vec![UserId::parse("a").unwrap()],
    };
    let v: serde_json::Value = serde_json::from_slice(&request_body(1400000001, &numeric)).unwrap();
    assert_eq!(v["RoomId"], serde_json::json!(1234));
    assert_eq!(v["UserIds"], serde_json::json!(["a"]));
    assert_eq!(api_action(numeric.action, &numeric.room), Some("RemoveUser"));
    let string = Target { action: Action::DismissRoom, room: Room::Str("1234".into()), users: vec![] };
    let v: serde_json::Value = serde_json::from_slice(&request_body(1400000001, &string)).unwrap();
    assert_eq!(v["RoomId"], serde_json::json!("1234"));
    assert!(v.get("UserIds").is_none());
    assert_eq!(api_action(string.action, &string.room), Some("DismissRoomByStrRoomId"));
    assert_eq!(api_action(Action::TerminateCall, &Room::Numeric(1)), None);
    assert_eq!(api_action(Action::DismissRoom, &Room::Call("c".into())), None);
}

#[test]
fn answers_are_classified() {
    let ok = br#"{"Response":{"RequestId":"r-1"}}"#;
    assert_eq!(classify_response(200, ok), (Classified::Success, Some("r-1".into())));
    let err = |code: &str, msg: &str| {
        format!(r#"{{"Response":{{"Error":{{"Code":"{code}","Message":"{msg}"}},"RequestId":"r-2"}}}}"#)
    };
    let outcome = |code: &str, msg: &str| classify_response(200, err(code, msg).as_bytes()).0.outcome();
    assert_eq!(outcome("FailedOperation.RoomNotExist", "room not exist"), "already_ended");
    assert_eq!(outcome("InvalidParameterValue.RoomId", "RoomId not exist"), "already_ended");
    assert_eq!(outcome("InvalidParameterValue.RoomId", "RoomId is invalid"), "fatal");
    assert_eq!(outcome("RequestLimitExceeded", "slow down"), "retryable");
    assert_eq!(outcome("RequestLimitExceeded.UinLimitExceeded", ""), "retryable");
    assert_eq!(outcome("InternalError.GetRoomCacheIpError", ""), "retryable");
    assert_eq!(outcome("AuthFailure.SignatureExpire", ""), "retryable");
    assert_eq!(outcome("AuthFailure.SignatureFailure", ""), "fatal");
    assert_eq!(outcome("AuthFailure.SecretIdNotFound", ""), "fatal");
    assert_eq!(outcome("InvalidParameter.UserIds", ""), "fatal");
    assert_eq!(outcome("MissingParameter.RoomId", ""), "fatal");
    assert_eq!(outcome("UnauthorizedOperation.SdkAppId", ""), "fatal");
    assert_eq!(classify_response(502, b"bad gateway").0.outcome(), "retryable");
    assert_eq!(classify_response(404, b"no").0.outcome(), "fatal");
    assert_eq!(classify_response(200, b"<html>").0.outcome(), "retryable");
}
