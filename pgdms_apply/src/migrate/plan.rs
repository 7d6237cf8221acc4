//! What a run of `migrate` does next, decided from what the target recorded: a pure
//! function of the recorded phase, the mode, the target preparation and whether the slot
//! exists, so that every combination is tested here rather than found out on a target.

use super::{Mode, Prep};
use crate::sink::control::Phase;

/// The steps of this run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The last run stopped while creating the schema: drop the slot (if it exists) and the
    /// records, and begin again.
    pub start_over: bool,
    pub load: Load,
    /// Build indexes and constraints, set sequences, apply the table mappings to the schema,
    /// then record the next phase.
    pub post_data: bool,
    /// Stream the changes from the slot.
    pub stream: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// Nothing to load.
    None,
    /// A new slot with its snapshot, the schema, and every table.
    Fresh,
    /// The tables not recorded as loaded, from a snapshot of their own.
    Resume,
}

/// Why a run cannot go on: each says what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The slot exists but the target has no record of a migration from it.
    SlotWithoutMigration,
    /// The migration streams from its slot, and the slot is gone: changes are lost.
    SlotGone,
    /// The load was interrupted, and with `--target-prep do-nothing` the unfinished tables
    /// cannot be emptied.
    ResumeIntoKeptTables,
}

/// The plan of a run. `prep` is the preparation the target's load honours (a row-wise
/// target always creates its tables: [`Prep::DropAndCreate`]); `slot_exists` is whether
/// the migration's slot exists on the source now.
pub fn plan(recorded: Option<Phase>, mode: Mode, prep: Prep, slot_exists: bool) -> Result<Plan, Refusal> {
    let cdc = mode == Mode::FullLoadAndCdc;
    let from_start = Plan { start_over: false, load: Load::Fresh, post_data: true, stream: cdc };
    // A full load's slot is temporary, gone with its run: only a streaming migration needs it.
    let needs_slot = || if cdc && !slot_exists { Err(Refusal::SlotGone) } else { Ok(()) };
    match recorded {
        None if slot_exists => Err(Refusal::SlotWithoutMigration),
        None => Ok(from_start),
        // Nothing was loaded yet: a new slot and snapshot, so the schema, the load and the
        // changes all start at one point.
        Some(Phase::Schema) => Ok(Plan { start_over: true, ..from_start }),
        Some(Phase::Load) => {
            if prep == Prep::DoNothing {
                return Err(Refusal::ResumeIntoKeptTables);
            }
            needs_slot()?;
            Ok(Plan { load: Load::Resume, ..from_start })
        }
        Some(Phase::PostData) => {
            needs_slot()?;
            Ok(Plan { load: Load::None, ..from_start })
        }
        Some(Phase::Cdc) if cdc => {
            needs_slot()?;
            Ok(Plan { start_over: false, load: Load::None, post_data: false, stream: true })
        }
        Some(Phase::Cdc | Phase::Done) => {
            Ok(Plan { start_over: false, load: Load::None, post_data: false, stream: false })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODES: [Mode; 2] = [Mode::FullLoad, Mode::FullLoadAndCdc];
    const PREPS: [Prep; 3] = [Prep::DropAndCreate, Prep::Truncate, Prep::DoNothing];

    /// Every combination of recorded phase, mode, preparation and slot, with what it must
    /// give; written out as a table so that a change to one case shows.
    #[test]
    fn every_combination() {
        let nothing = Plan { start_over: false, load: Load::None, post_data: false, stream: false };
        let mut seen = 0;
        for recorded in std::iter::once(None).chain(Phase::ALL.into_iter().map(Some)) {
            for mode in MODES {
                for prep in PREPS {
                    for slot in [false, true] {
                        seen += 1;
                        let cdc = mode == Mode::FullLoadAndCdc;
                        let got = plan(recorded, mode, prep, slot);
                        let fresh = Plan { start_over: false, load: Load::Fresh, post_data: true, stream: cdc };
                        let want = match recorded {
                            None if slot => Err(Refusal::SlotWithoutMigration),
                            None => Ok(fresh),
                            Some(Phase::Schema) => Ok(Plan { start_over: true, ..fresh }),
                            Some(Phase::Load) if prep == Prep::DoNothing => Err(Refusal::ResumeIntoKeptTables),
                            Some(Phase::Load | Phase::PostData | Phase::Cdc) if cdc && !slot => Err(Refusal::SlotGone),
                            Some(Phase::Load) => Ok(Plan { load: Load::Resume, ..fresh }),
                            Some(Phase::PostData) => Ok(Plan { load: Load::None, ..fresh }),
                            Some(Phase::Cdc) if cdc => Ok(Plan { stream: true, ..nothing }),
                            Some(Phase::Cdc | Phase::Done) => Ok(nothing),
                        };
                        assert_eq!(got, want, "recorded {recorded:?}, {mode:?}, {prep:?}, slot exists: {slot}");
                    }
                }
            }
        }
        assert_eq!(seen, 6 * 2 * 3 * 2);
    }

    #[test]
    fn the_cases_users_meet() {
        // A first run.
        let p = plan(None, Mode::FullLoadAndCdc, Prep::DropAndCreate, false).unwrap();
        assert_eq!((p.load, p.post_data, p.stream), (Load::Fresh, true, true));
        // A crash during the load, slot still there: the remaining tables, then on.
        let p = plan(Some(Phase::Load), Mode::FullLoadAndCdc, Prep::Truncate, true).unwrap();
        assert_eq!((p.load, p.post_data, p.stream), (Load::Resume, true, true));
        // A rerun while streaming: streaming again.
        assert_eq!(
            plan(Some(Phase::Cdc), Mode::FullLoadAndCdc, Prep::DropAndCreate, true),
            Ok(Plan { start_over: false, load: Load::None, post_data: false, stream: true })
        );
        // The slot was dropped under a streaming migration.
        assert_eq!(plan(Some(Phase::Cdc), Mode::FullLoadAndCdc, Prep::DropAndCreate, false), Err(Refusal::SlotGone));
        // Someone else's slot of the same name.
        assert_eq!(plan(None, Mode::FullLoad, Prep::DropAndCreate, true), Err(Refusal::SlotWithoutMigration));
        // Finished migrations stay finished.
        assert!(!plan(Some(Phase::Done), Mode::FullLoadAndCdc, Prep::DropAndCreate, false).unwrap().stream);
    }
}
