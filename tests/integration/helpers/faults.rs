//! Fault and kill tests: what the sandbox saw per target and in arrival
//! order, and the seed that makes a random run repeatable.

use std::collections::HashMap;

use callwarden::sandbox::RequestRecord;

/// Answers per target (room or call, plus the participant for a removal),
/// in arrival order.
pub fn answers_by_target(requests: &[RequestRecord]) -> HashMap<String, Vec<String>> {
    let mut by_target: HashMap<String, Vec<String>> = HashMap::new();
    for r in requests {
        let Some(room) = &r.room else { continue };
        let key = if r.users.is_empty() { room.clone() } else { format!("{room}/{}", r.users.join(",")) };
        by_target.entry(key).or_default().push(r.answer.clone());
    }
    by_target
}

/// Requests that named a room, sorted by when the sandbox saw them.
pub fn by_arrival(mut requests: Vec<RequestRecord>) -> Vec<RequestRecord> {
    requests.retain(|r| r.room.is_some());
    requests.sort_by_key(|r| r.at_ms);
    requests
}

/// A seed from `CALLWARDEN_TEST_SEED`, or a fresh one; printed either way
/// so a failing run can be repeated.
pub fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("CALLWARDEN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: seed {seed} (repeat with CALLWARDEN_TEST_SEED={seed})");
    seed
}
