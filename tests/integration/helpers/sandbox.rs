//! The sandbox as a child process: its control API (requests, stats,
//! faults, ending rooms and calls) and its clock related to the wall clock.

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::mpsc;

use callwarden::sandbox::{Fault, RequestRecord, Stats};

use super::process::ChildGuard;
use super::time::now_ms;
use super::wait::SHORT;

/// `callwarden sandbox` on a free loopback port.
pub struct Sandbox {
    /// Held so the sandbox lives as long as the test.
    _process: ChildGuard,
    pub url: String,
    http: reqwest::Client,
}

impl Sandbox {
    pub fn start() -> Sandbox {
        Sandbox::start_with(&[])
    }

    /// `callwarden sandbox` with more command-line options.
    pub fn start_with(options: &[&str]) -> Sandbox {
        let mut args = vec!["sandbox", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(options);
        let mut process = ChildGuard::spawn("sandbox", &args, Stdio::piped());
        let stdout = process.child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let _ = tx.send(first);
            let _ = reader.read_to_end(&mut Vec::new());
        });
        let first = rx.recv_timeout(SHORT).unwrap_or_default();
        let url = first
            .trim()
            .strip_prefix("sandbox listening on ")
            .unwrap_or_else(|| panic!("unexpected first sandbox line {first:?}; logs:\n{}", process.logs()))
            .to_string();
        Sandbox { _process: process, url, http: reqwest::Client::new() }
    }

    pub async fn stats(&self) -> Stats {
        self.get("/_sandbox/stats").await
    }

    /// Every request the sandbox answered, in arrival order.
    pub async fn requests(&self) -> Vec<RequestRecord> {
        self.get("/_sandbox/requests").await
    }

    /// Requests to one of the TRTC actions (leaves out clock probes).
    pub async fn api_requests(&self) -> Vec<RequestRecord> {
        let mut requests = self.requests().await;
        requests.retain(|r| callwarden::providers::trtc::ACTIONS.contains(&r.action.as_str()));
        requests
    }

    /// Requests whose parameters named `room` (numeric or string).
    pub async fn requests_for(&self, room: &str) -> Vec<RequestRecord> {
        let mut requests = self.api_requests().await;
        requests.retain(|r| r.room.as_deref() == Some(room));
        requests
    }

    pub async fn inject(&self, fault: Fault) {
        let response =
            self.http.post(format!("{}/_sandbox/faults", self.url)).json(&fault).send().await.unwrap();
        assert!(response.status().is_success(), "fault {fault:?} refused: {}", response.status());
    }

    /// Ends a room as if everyone left: `json!(1234)` or `json!("abc")`.
    pub async fn end_room(&self, room: serde_json::Value) {
        let response = self
            .http
            .post(format!("{}/_sandbox/rooms/dismiss", self.url))
            .json(&serde_json::json!({ "room": room }))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "room {room} not dismissed: {}", response.status());
    }

    /// Requests to one of the ACS actions (`RemoveParticipant`, `TerminateCall`).
    pub async fn acs_requests(&self) -> Vec<RequestRecord> {
        let mut requests = self.requests().await;
        requests.retain(|r| callwarden::providers::acs::ACTIONS.contains(&r.action.as_str()));
        requests
    }

    /// ACS requests for one call connection, in arrival order.
    pub async fn acs_requests_for(&self, call: &str) -> Vec<RequestRecord> {
        let mut requests = self.acs_requests().await;
        requests.retain(|r| r.room.as_deref() == Some(call));
        requests
    }

    /// Ends an ACS call as if everyone hung up.
    pub async fn end_call(&self, call: &str) {
        let response = self
            .http
            .post(format!("{}/_sandbox/rooms/dismiss", self.url))
            .json(&serde_json::json!({ "call": call }))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "call {call} not ended: {}", response.status());
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let response = self.http.get(format!("{}{path}", self.url)).send().await.unwrap();
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.json().await.unwrap()
    }

    /// Relates the sandbox's `at_ms` (since its start) to the wall clock, with
    /// an unsigned request whose wall time the test brackets.
    pub async fn clock(&self) -> SandboxClock {
        let mut best: Option<(i64, SandboxClock)> = None;
        for _ in 0..3 {
            let before = now_ms();
            let _ = self.http.post(format!("{}/", self.url)).body("{}").send().await.unwrap();
            let after = now_ms();
            let probe = self
                .requests()
                .await
                .into_iter()
                .rev()
                .find(|r| r.action == "?")
                .expect("the probe is logged");
            // The probe was recorded at a wall time in [before, after], when the
            // sandbox's elapsed time was in [at_ms, at_ms + 1).
            let clock = SandboxClock { start_at_most: after - probe.at_ms as i64 };
            if best.as_ref().is_none_or(|(spread, _)| after - before < *spread) {
                best = Some((after - before, clock));
            }
        }
        best.expect("three probes").1
    }
}

/// The latest wall time the sandbox can have started at.
#[derive(Debug, Clone, Copy)]
pub struct SandboxClock {
    start_at_most: i64,
}

impl SandboxClock {
    /// The latest wall time (ms) at which the sandbox can have logged `r`:
    /// if this is before a deadline, the request certainly arrived early.
    pub fn latest_wall_ms(&self, r: &RequestRecord) -> i64 {
        self.start_at_most + r.at_ms as i64 + 1
    }
}
