//! The ACS callback JWT gate (`AcsJwtVerifier`), against keys published by
//! the sandbox (served in-process over loopback, as ACS publishes its
//! own): a token is accepted exactly when it is RS256, signed with the
//! published key it names, issued by ACS, for our audience, and within its
//! lifetime (with the leeway); forged, expired, wrong-audience,
//! wrong-issuer, unknown-kid, `alg: none` and HMAC tokens never pass.

use std::sync::OnceLock;

use callwarden::http::webhooks::acs_jwt::{ACS_ISSUER, AcsJwtVerifier};
use callwarden::sandbox::acs_calls::{SANDBOX_ACS_KEY_ID, SANDBOX_ACS_RESOURCE_ID};
use callwarden::sandbox::{Sandbox, SandboxOptions};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::json;

const SANDBOX_KEY: &str = include_str!("../../src/sandbox/keys/acs-callback-signing.pem");
const FORGER_KEY: &str = include_str!("../fixtures/keys/forger.pem");

struct World {
    runtime: tokio::runtime::Runtime,
    verifier: AcsJwtVerifier,
}

/// One runtime, one sandbox, one verifier for every case: the verifier's
/// key cache is what a running daemon has.
fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let verifier = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let shutdown = tokio_util::sync::CancellationToken::new();
            let sandbox = Sandbox::start(listener, SandboxOptions::default(), shutdown).await.unwrap();
            let url = format!("{}/calling/.well-known/acsopenidconfiguration", sandbox.url());
            let verifier = AcsJwtVerifier::new(reqwest::Client::new(), &url, SANDBOX_ACS_RESOURCE_ID);
            verifier.prefetch().await;
            verifier
        });
        World { runtime, verifier }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signer {
    Sandbox,
    Forger,
    Hmac,
    Unsigned,
}

#[derive(Debug, Clone)]
struct Token {
    signer: Signer,
    kid: Option<String>,
    iss: Option<String>,
    aud: Option<String>,
    /// Seconds from now; `None` leaves the claim out.
    exp: Option<i64>,
    nbf: Option<i64>,
}

impl Token {
    /// Whether ACS could have sent it: the gate must accept exactly these.
    fn genuine(&self) -> bool {
        self.signer == Signer::Sandbox
            && self.kid.as_deref() == Some(SANDBOX_ACS_KEY_ID)
            && self.iss.as_deref() == Some(ACS_ISSUER)
            && self.aud.as_deref() == Some(SANDBOX_ACS_RESOURCE_ID)
            && self.exp.is_some_and(|e| e > -60 && e <= 360)
            && self.nbf.is_none_or(|n| n <= 60)
    }

    fn encode(&self) -> String {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({ "iat": now });
        for (key, value) in [("iss", &self.iss), ("aud", &self.aud)] {
            if let Some(v) = value {
                claims[key] = json!(v);
            }
        }
        for (key, offset) in [("exp", self.exp), ("nbf", self.nbf)] {
            if let Some(o) = offset {
                claims[key] = json!(now + o);
            }
        }
        let b64 = |s: String| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
        };
        match self.signer {
            Signer::Unsigned => {
                let header = json!({ "alg": "none", "typ": "JWT", "kid": self.kid });
                format!("{}.{}.", b64(header.to_string()), b64(claims.to_string()))
            }
            signer => {
                let (alg, key) = match signer {
                    Signer::Hmac => {
                        (Algorithm::HS256, EncodingKey::from_secret(SANDBOX_KEY.as_bytes()).unwrap())
                    }
                    Signer::Forger => {
                        (Algorithm::RS256, EncodingKey::from_rsa_pem(FORGER_KEY.as_bytes()).unwrap())
                    }
                    _ => (Algorithm::RS256, EncodingKey::from_rsa_pem(SANDBOX_KEY.as_bytes()).unwrap()),
                };
                let mut header = Header::new(alg);
                header.kid = self.kid.clone();
                jsonwebtoken::encode(&header, &claims, &key).unwrap()
            }
        }
    }
}

/// Mostly right, one thing or more wrong; time offsets keep 5 s away from
/// each bound so the run's own duration cannot flip a case.
fn token() -> impl Strategy<Value = Token> {
    let signer = prop_oneof![6 => Just(Signer::Sandbox), 1 => Just(Signer::Forger), 1 => Just(Signer::Hmac), 1 => Just(Signer::Unsigned)];
    let pick = |right: &'static str, wrong: &'static str| prop_oneof![6 => Just(Some(right.to_string())), 1 => Just(Some(wrong.to_string())), 1 => Just(None)];
    let offset = |bounds: &'static [i64]| {
        (-700i64..800).prop_filter("near a bound", move |o| bounds.iter().all(|b| (o - b).abs() > 5))
    };
    (
        signer,
        pick(SANDBOX_ACS_KEY_ID, "some-other-key"),
        pick(ACS_ISSUER, "https://sts.windows.net/evil/"),
        pick(SANDBOX_ACS_RESOURCE_ID, "00000000-0000-0000-0000-000000000000"),
        prop_oneof![8 => offset(&[-60, 360]).prop_map(Some), 1 => Just(None)],
        prop_oneof![4 => Just(None), 1 => offset(&[60]).prop_map(Some)],
    )
        .prop_map(|(signer, kid, iss, aud, exp, nbf)| Token { signer, kid, iss, aud, exp, nbf })
}

proptest! {
    #![proptest_config(super::cases(128))]

    #[test]
    fn a_callback_token_passes_exactly_when_acs_could_have_sent_it(t in token()) {
        let w = world();
        let header = format!("Bearer {}", t.encode());
        let verdict = w.runtime.block_on(w.verifier.verify(Some(&header)));
        prop_assert_eq!(verdict.is_ok(), t.genuine(), "{:?}: {:?}", t, verdict);
    }

    #[test]
    fn any_authorization_header_is_refused_without_a_panic(header in "[ -~]{0,300}") {
        let w = world();
        let verdict = w.runtime.block_on(w.verifier.verify(Some(&header)));
        prop_assert!(verdict.is_err());
    }
}
