//! Provider clients: one module per call provider, one enum in front of them.
//!
//! A provider turns an enforcement target into one signed HTTP request and
//! turns whatever comes back (an answer, a timeout, a refused connection) into
//! a [`Classified`] outcome. Nothing above this module sees a status code or an
//! error string it has to interpret. Providers do no retrying, no rate limiting
//! and no database work: that is `enforce`'s job.

pub mod acs;
pub mod entra;
pub mod transport;
pub mod trtc;

use std::time::Duration;

use crate::domain::session::Repeatability;
use crate::domain::{Action, Room, UserId};

/// What one provider call came to, already sorted into what to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// The provider did what was asked.
    Success,
    /// The room or participant was already gone: the goal holds, nothing to do.
    AlreadyEnded { code: String, message: String },
    /// Worth trying again, after at least `wait` if the provider said so.
    Retryable { code: String, message: String, wait: Option<Duration> },
    /// Will not get better by retrying: bad credentials, bad parameters, no permission.
    Fatal { code: String, message: String },
}

impl Classified {
    /// The `outcome` column of the audit log.
    pub fn outcome(&self) -> &'static str {
        match self {
            Classified::Success => "success",
            Classified::AlreadyEnded { .. } => "already_ended",
            Classified::Retryable { .. } => "retryable",
            Classified::Fatal { .. } => "fatal",
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            Classified::Success => None,
            Classified::AlreadyEnded { code, .. }
            | Classified::Retryable { code, .. }
            | Classified::Fatal { code, .. } => Some(code),
        }
    }

    pub fn message(&self) -> Option<&str> {
        match self {
            Classified::Success => None,
            Classified::AlreadyEnded { message, .. }
            | Classified::Retryable { message, .. }
            | Classified::Fatal { message, .. } => Some(message),
        }
    }
}

/// The record of one HTTP exchange with a provider.
#[derive(Debug, Clone)]
pub struct CallReport {
    pub classified: Classified,
    /// `None` when no HTTP answer arrived (timeout, connection error).
    pub http_status: Option<u16>,
    /// The id the provider knows the request by: TRTC's `RequestId`, or the
    /// ACS `Repeatability-Request-ID` (the same across an enforcement's tries).
    pub provider_request_id: Option<String>,
    /// ACS's per-try `x-ms-client-request-id`, which Microsoft support asks for.
    pub client_request_id: Option<String>,
    pub latency: Duration,
    /// The provider no longer remembers the repeatability id (ACS 412): the
    /// next try must go out under a new one.
    pub renew_repeatability: bool,
}

impl CallReport {
    /// The audit row's detail: the provider's message (at most 500
    /// characters) and, for ACS, the try's client request id.
    pub fn detail(&self) -> Option<String> {
        let message = self.classified.message().map(|m| m.chars().take(500).collect::<String>());
        match (message, &self.client_request_id) {
            (Some(m), Some(id)) => Some(format!("{m} (x-ms-client-request-id {id})")),
            (None, Some(id)) => Some(format!("x-ms-client-request-id {id}")),
            (m, None) => m,
        }
    }
}

/// What a call carries besides its target.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// Echoed back in ACS outcome events: the session the call is for.
    pub operation_context: String,
    pub repeatability: Option<Repeatability>,
}

/// Who an enforcement is aimed at: a room or call, and for a removal up to
/// [`Provider::max_users_per_call`] of its participants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub action: Action,
    pub room: Room,
    pub users: Vec<UserId>,
}

/// A configured provider. An enum rather than a trait object: the set is
/// closed and each variant is matched where its behaviour differs.
#[derive(Debug, Clone)]
pub enum Provider {
    Trtc(trtc::TrtcClient),
    Acs(acs::AcsClient),
}

impl Provider {
    /// The provider-side API name, which is also the unit the provider's
    /// quota counts (20 requests per second per action). `None` when this
    /// provider cannot carry out `action` on `room` (a TRTC policy with an
    /// ACS call, say).
    pub fn api_action(&self, action: Action, room: &Room) -> Option<&'static str> {
        match self {
            Provider::Trtc(_) => trtc::api_action(action, room),
            Provider::Acs(_) => acs::api_action(action, room),
        }
    }

    /// Every API action this provider may call, so limiters can be built up front.
    pub fn api_actions(&self) -> &'static [&'static str] {
        match self {
            Provider::Trtc(_) => &trtc::ACTIONS,
            Provider::Acs(_) => &acs::ACTIONS,
        }
    }

    pub fn max_users_per_call(&self) -> usize {
        match self {
            Provider::Trtc(_) => trtc::MAX_USERS_PER_CALL,
            // One participant per participants:remove request.
            Provider::Acs(_) => 1,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Provider::Trtc(_) => crate::config::TRTC_KIND,
            Provider::Acs(_) => crate::config::ACS_KIND,
        }
    }

    /// Whether calls carry a repeatability id that must be stored first.
    pub fn uses_repeatability(&self) -> bool {
        matches!(self, Provider::Acs(_))
    }

    /// Whether a success only means "accepted", with the outcome reported
    /// later to a callback: ACS removals when `callback_url` is set. (A
    /// `:terminate` answers 204 once the call is ended.)
    pub fn confirms_later(&self, action: Action) -> bool {
        match self {
            Provider::Trtc(_) => false,
            Provider::Acs(client) => client.has_callback() && action == Action::RemoveParticipant,
        }
    }

    pub async fn call(&self, target: &Target, ctx: &CallContext) -> CallReport {
        match self {
            Provider::Trtc(client) => client.call(target).await,
            Provider::Acs(client) => client.call(target, ctx).await,
        }
    }
}
