//! Sessions that fall due at a steady 10 a second while a scenario loads
//! the daemon some other way (a bulk insert, a prune, a connection flood),
//! and their lateness at the tap, split by what was going on at each
//! deadline.

use std::collections::{HashMap, HashSet};

use callwarden::domain::Instant;
use callwarden::domain::session::NewSession;

use crate::args::ProviderKind;
use crate::figures::Figures;
use crate::rig::bench_session;

/// Deadlines per second: half the provider's quota, so that the pacer never
/// queues a call and any lateness is the daemon's.
pub(crate) const DUE_PER_SECOND: f64 = 10.0;

pub(crate) struct Due {
    pub(crate) sessions: Vec<NewSession>,
    pub(crate) deadline_of_room: HashMap<String, Instant>,
}

impl Due {
    /// DismissRoom sessions due every 100 ms from `first` for `seconds`,
    /// in rooms `room_base`, `room_base + 1`, ...
    pub(crate) fn new(first: Instant, seconds: f64, room_base: u32, now: Instant) -> anyhow::Result<Due> {
        let n = (seconds * DUE_PER_SECOND).round().max(1.0) as usize;
        let step_ms = (1000.0 / DUE_PER_SECOND) as i64;
        let mut sessions = Vec::with_capacity(n);
        for i in 0..n {
            let deadline = Instant::from_millis(first.millis() + i as i64 * step_ms);
            sessions.push(bench_session(ProviderKind::Trtc, room_base + i as u32, i, false, deadline, now)?);
        }
        let deadline_of_room = sessions.iter().map(|s| (s.room.id_text(), s.deadline)).collect();
        Ok(Due { sessions, deadline_of_room })
    }

    /// The rooms of the sessions due in `[from, to)`.
    pub(crate) fn rooms_in(&self, from: Instant, to: Instant) -> Vec<&String> {
        self.deadline_of_room.iter().filter(|(_, d)| **d >= from && **d < to).map(|(r, _)| r).collect()
    }

    /// The session ids due in `[from, to)`.
    pub(crate) fn ids_in(&self, from: Instant, to: Instant) -> HashSet<String> {
        self.sessions
            .iter()
            .filter(|s| s.deadline >= from && s.deadline < to)
            .map(|s| s.id.to_string())
            .collect()
    }

    /// How many sessions were due in `[from, to)`, how many of them the tap
    /// saw called, and the lateness of those (tap arrival − deadline).
    pub(crate) fn figures(
        &self,
        f: &mut Figures,
        label: &str,
        lateness_us: &HashMap<String, i64>,
        from: Instant,
        to: Instant,
    ) {
        let rooms = self.rooms_in(from, to);
        let mut us: Vec<i64> = rooms.iter().filter_map(|r| lateness_us.get(*r).copied()).collect();
        us.sort_unstable();
        f.add(format!("{label}: sessions due"), rooms.len() as f64, "");
        f.add(format!("{label}: of which never called"), (rooms.len() - us.len()) as f64, "");
        f.add_dist_us(&format!("{label}: lateness (tap arrival - deadline)"), &us);
        f.add(format!("{label}: early calls"), us.iter().filter(|v| **v < 0).count() as f64, "");
    }
}
