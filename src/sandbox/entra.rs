//! The sandbox's Microsoft Entra ID: the token endpoint of the
//! client-credentials flow (`POST /{tenant}/oauth2/v2.0/token`) and the
//! instance metadata service of managed identities (`GET
//! /metadata/identity/oauth2/token`, `Metadata: true`), issuing opaque
//! bearer tokens that the sandbox's ACS then accepts until they expire, as
//! ACS accepts Entra's. They check what Entra checks: the tenant, the
//! client id and secret, the scope (or resource), the header; and answer in
//! Entra's shapes (`error`, `error_description` with an AADSTS code). A
//! fault rule for action `EntraToken` makes the token endpoints fail.

use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::SandboxState;

pub const SANDBOX_ENTRA_TENANT_ID: &str = "7e1a0000-5a4d-4b0c-9a11-00000000e17a";
pub const SANDBOX_ENTRA_CLIENT_ID: &str = "c11e0000-5a4d-4b0c-9a11-00000000c11e";
pub const SANDBOX_ENTRA_CLIENT_SECRET: &str = "callwarden-sandbox-entra-client-secret";
/// How long the sandbox's tokens live unless told otherwise (Entra's are
/// about an hour).
pub const SANDBOX_TOKEN_LIFETIME: Duration = Duration::from_secs(3599);

const ACS_SCOPE: &str = "https://communication.azure.com//.default";

fn aad_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, axum::Json(json!({ "error": error, "error_description": description }))).into_response()
}

impl SandboxState {
    fn issue_token(&self) -> (String, u64) {
        let token = format!("sandbox-entra-{}", uuid::Uuid::new_v4().simple());
        let lifetime = self.options.entra_token_lifetime;
        let mut inner = self.lock();
        let now = StdInstant::now();
        inner.entra_tokens.retain(|_, expires| *expires > now);
        inner.entra_tokens.insert(token.clone(), now + lifetime);
        inner.stats.entra_tokens_issued += 1;
        (token, lifetime.as_secs())
    }

    /// Whether `token` is one the sandbox issued and it has not expired.
    pub(super) fn entra_token_valid(&self, token: &str) -> bool {
        self.lock().entra_tokens.get(token).is_some_and(|expires| *expires > StdInstant::now())
    }

    /// An injected failure of the token endpoints, if a fault rule says so.
    fn token_fault(&self) -> Option<Response> {
        let fault = self.take_fault("EntraToken", None)?;
        let status =
            StatusCode::from_u16(fault.http_status.unwrap_or(503)).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        Some(aad_error(
            status,
            &fault.code.unwrap_or_else(|| "temporarily_unavailable".into()),
            "AADSTS50196: sandbox: injected fault",
        ))
    }
}

/// `POST /{tenant}/oauth2/v2.0/token`: the client-credentials flow.
pub(super) async fn token(
    State(state): State<Arc<SandboxState>>,
    Path(tenant): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(fault) = state.token_fault() {
        return fault;
    }
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    if tenant != SANDBOX_ENTRA_TENANT_ID {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("AADSTS90002: Tenant '{tenant}' not found."),
        );
    }
    if field("grant_type") != "client_credentials" {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: the grant type is not supported.",
        );
    }
    if field("client_id") != SANDBOX_ENTRA_CLIENT_ID {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "AADSTS700016: Application with identifier was not found in the directory.",
        );
    }
    if field("client_secret") != SANDBOX_ENTRA_CLIENT_SECRET {
        return aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
        );
    }
    if field("scope") != ACS_SCOPE {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS70011: The provided value for the input parameter 'scope' is not valid.",
        );
    }
    let (token, expires_in) = state.issue_token();
    axum::Json(json!({ "token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": token }))
        .into_response()
}

/// `GET /metadata/identity/oauth2/token`: a managed identity's token.
pub(super) async fn imds(
    State(state): State<Arc<SandboxState>>,
    headers: HeaderMap,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    if super::header(&headers, "metadata") != Some("true") {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    if let Some(fault) = state.token_fault() {
        return fault;
    }
    if query.get("resource").map(String::as_str) != Some("https://communication.azure.com/") {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            "AADSTS500011: The resource principal was not found.",
        );
    }
    if query.get("client_id").is_some_and(|c| c != SANDBOX_ENTRA_CLIENT_ID) {
        return aad_error(StatusCode::BAD_REQUEST, "invalid_request", "Identity not found");
    }
    let (token, expires_in) = state.issue_token();
    // IMDS sends its numbers as strings.
    axum::Json(json!({
        "access_token": token, "expires_in": expires_in.to_string(), "token_type": "Bearer",
        "resource": "https://communication.azure.com/",
    }))
    .into_response()
}
