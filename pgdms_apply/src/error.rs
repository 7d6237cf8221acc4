//! Error kinds: what an error means for the run, whichever side it came from. The one retry
//! policy (`crate::apply::retry`) acts on them, and nothing else decides to try again.

/// What an error means for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A lost connection, a server shutting down or not taking connections yet, a deadlock
    /// the server broke: trying again from the last commit succeeds once it is over.
    Transient,
    /// A change the target refused (a constraint, a missing table, no key): `--on-error`.
    RefusedChange,
    /// A DDL command the target refused, or that pgdms-apply refused to replay.
    RefusedDdl,
    /// Another statement the target refused.
    Refused,
    /// Something to set right before running again: an address, a right, a slot.
    Configuration,
    /// Stored state or a stream that does not parse.
    Corruption,
    /// The session pgdms-apply writes through was tampered with.
    Tampered,
}

impl ErrorKind {
    /// Whether trying again can succeed without anyone doing anything.
    pub fn is_transient(self) -> bool {
        self == ErrorKind::Transient
    }
}

/// The SQLSTATEs of a PostgreSQL server going away or not there yet: admin_shutdown,
/// crash_shutdown and cannot_connect_now (class 57P), connection exceptions (class 08).
pub fn sqlstate_connection_lost(code: &str) -> bool {
    code.starts_with("57P") || code.starts_with("08")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passing_sqlstates() {
        for code in ["57P01", "57P02", "57P03", "08006", "08001"] {
            assert!(sqlstate_connection_lost(code), "{code}");
        }
        for code in ["23505", "42P01", "42501", "55006", "XX000"] {
            assert!(!sqlstate_connection_lost(code), "{code}");
        }
    }
}
