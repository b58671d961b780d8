//! Leadership as the store and the scheduler see it: which quota buckets
//! an instance enforces, under which term.
//!
//! A *bucket* is one provider of the configuration (its name): a provider's
//! quota is counted per action, and one leader per provider holds every
//! action's quota. A *term* is the number a lease was granted under (a
//! database sequence: a later grant has a larger term). Every session an
//! instance claims carries the term of its bucket's lease, and every later
//! write about it (attempt, outcome, release) is made only while the row
//! still carries that term: a leader that lost its lease and did not notice
//! (paused, cut off) writes nothing, because the new leader re-stamped the
//! rows when it took them over.

/// The term of the one daemon on an embedded (SQLite) database: it holds
/// every bucket by its lock file, and no other term ever exists there.
/// Granted leases start at 1.
pub const SOLE_TERM: i64 = 0;

/// The lease for the work done once per deployment rather than per bucket:
/// adopting plain-SQL rows, retention, signed heads, settling unconfirmed
/// removals.
pub const MAINTENANCE: &str = "maintenance";

/// What an instance may claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Led {
    /// Everything, under [`SOLE_TERM`]: the one daemon on its database.
    Sole,
    /// The sessions of these buckets (providers), each under its lease's
    /// term; a claim also checks in the database that each lease is still
    /// valid.
    Buckets(Vec<(String, i64)>),
}

impl Led {
    /// The term under which a session of `provider` is claimed, if any.
    pub fn term_of(&self, provider: &str) -> Option<i64> {
        match self {
            Led::Sole => Some(SOLE_TERM),
            Led::Buckets(held) => held.iter().find(|(b, _)| b == provider).map(|(_, t)| *t),
        }
    }

    /// Whether nothing can be claimed.
    pub fn is_empty(&self) -> bool {
        matches!(self, Led::Buckets(held) if held.is_empty())
    }

    /// The buckets and their terms as two columns (for `unnest`), or none
    /// for [`Led::Sole`].
    pub fn columns(&self) -> Option<(Vec<String>, Vec<i64>)> {
        match self {
            Led::Sole => None,
            Led::Buckets(held) => Some(held.iter().cloned().unzip()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_term_of_a_session_is_its_buckets() {
        assert_eq!(Led::Sole.term_of("anything"), Some(SOLE_TERM));
        let led = Led::Buckets(vec![("trtc".into(), 7), ("acs".into(), 9)]);
        assert_eq!(led.term_of("acs"), Some(9));
        assert_eq!(led.term_of("other"), None);
        assert!(!led.is_empty());
        assert!(Led::Buckets(vec![]).is_empty());
        assert!(!Led::Sole.is_empty());
    }
}
