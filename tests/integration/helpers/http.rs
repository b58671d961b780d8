//! The daemon's HTTP listener from the outside: a small client, the
//! OpenAPI schema check, and a Prometheus text parser.

use std::collections::BTreeMap;
use std::time::Duration;

use super::configs::API_TOKEN;

/// An HTTP answer: status, headers, body text, and the body as JSON
/// (`Null` when it is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: serde_json::Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Panics with the whole answer unless the status is `status`.
    #[track_caller]
    pub fn expect(&self, status: u16, what: &str) -> &Reply {
        assert_eq!(self.status, status, "{what}: {self:#?}");
        self
    }
}

/// A small client for the daemon's listener.
#[derive(Debug, Clone)]
pub struct Client {
    pub base: String,
    /// Sent as `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client that sends [`API_TOKEN`].
    pub fn new(base: &str) -> Client {
        Client { base: base.to_string(), token: Some(API_TOKEN.to_string()), http: reqwest::Client::new() }
    }

    /// The same listener, another (or no) bearer token.
    pub fn with_token(&self, token: Option<&str>) -> Client {
        Client { token: token.map(str::to_string), ..self.clone() }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut request =
            self.http.request(method, format!("{}{path}", self.base)).timeout(Duration::from_secs(15));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    pub async fn send(request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("the daemon answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a body");
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Reply { status, headers, text, json }
    }

    pub async fn get(&self, path: &str) -> Reply {
        Client::send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Reply {
        Client::send(self.request(reqwest::Method::POST, path).json(body)).await
    }

    /// POSTs `body` as it is, labelled JSON.
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Reply {
        let request = self
            .request(reqwest::Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        Client::send(request).await
    }
}

/// docs/openapi.json, as served and as documented.
pub fn openapi_document() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Validates JSON values against a schema in docs/openapi.json.
pub struct SchemaCheck {
    validator: jsonschema::Validator,
    name: String,
}

impl SchemaCheck {
    /// `pointer` is a JSON pointer into the OpenAPI document, like
    /// `/components/schemas/Session`. The validator's root is the whole
    /// document with a `$ref` to it, so the schema's own refs resolve.
    pub fn new(pointer: &str) -> SchemaCheck {
        let mut root = openapi_document();
        assert!(root.pointer(pointer).is_some(), "docs/openapi.json has nothing at {pointer}");
        root.as_object_mut().unwrap().insert("$ref".into(), serde_json::Value::String(format!("#{pointer}")));
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("the schema at {pointer} does not build: {e}"));
        SchemaCheck { validator, name: pointer.to_string() }
    }

    pub fn session() -> SchemaCheck {
        SchemaCheck::new("/components/schemas/Session")
    }

    pub fn error() -> SchemaCheck {
        SchemaCheck::new("/components/schemas/Error")
    }

    /// The 200 answer of `GET /v1/sessions`.
    pub fn session_list() -> SchemaCheck {
        SchemaCheck::new("/paths/~1v1~1sessions/get/responses/200/content/application~1json/schema")
    }

    /// Panics, listing every violation, unless `value` fits.
    #[track_caller]
    pub fn check(&self, value: &serde_json::Value, what: &str) {
        let errors: Vec<String> =
            self.validator.iter_errors(value).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "{what} does not fit {}: {errors:#?}\n{value:#}", self.name);
    }

    /// True when `value` fits (for checks that must be able to fail).
    pub fn fits(&self, value: &serde_json::Value) -> bool {
        self.validator.is_valid(value)
    }
}

/// One sample of a Prometheus text exposition: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text format (comments skipped; label values
/// without escaped quotes, which is all the daemon writes).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad metrics line {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad metrics value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("bad labels in {line:?}"));
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) =
                            pair.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line:?}"));
                        (k.trim().to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        samples.push(Sample { name, labels, value });
    }
    samples
}

/// The sum of the samples named `name` whose labels include `labels`.
pub fn metric_sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}
