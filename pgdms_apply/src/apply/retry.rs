//! The one retry policy: an error of kind [`ErrorKind::Transient`] is tried again after a
//! backoff that doubles from half a second to thirty; every other kind ends the run, since
//! trying again gives the same answer (a refused change, a damaged record, a setting).

use crate::error::ErrorKind;
use std::time::Duration;

const FIRST: Duration = Duration::from_millis(500);
const LONGEST: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Policy {
    next: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { next: FIRST }
    }
}

impl Policy {
    /// After an error of `kind`: how long to wait before trying again, or None to stop.
    pub fn after(&mut self, kind: ErrorKind) -> Option<Duration> {
        if !kind.is_transient() {
            return None;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(LONGEST);
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_back_off_and_others_stop() {
        let mut p = Policy::default();
        let waits: Vec<Duration> = (0..9).map(|_| p.after(ErrorKind::Transient).unwrap()).collect();
        assert_eq!(waits[0], Duration::from_millis(500));
        assert_eq!(waits[1], Duration::from_secs(1));
        assert_eq!(*waits.last().unwrap(), LONGEST);
        for kind in [
            ErrorKind::RefusedChange,
            ErrorKind::RefusedDdl,
            ErrorKind::Refused,
            ErrorKind::Configuration,
            ErrorKind::Corruption,
            ErrorKind::Tampered,
        ] {
            assert_eq!(Policy::default().after(kind), None, "{kind:?}");
        }
    }
}
