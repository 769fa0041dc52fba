//! The agent's side of the kernel's folds (`enforcer_common::maps::FOLDS`): attempts that
//! share a fold within the window wait in the kernel as a pending count until the fold's
//! next event carries them. A flood that stops leaves its last attempts pending; the
//! [`FoldReporter`] has the kernel write them (the `fold_report` program, run through
//! `BPF_PROG_TEST_RUN` with the fold's key as the packet), so the kernel alone takes counts
//! out of a fold and no attempt is carried twice, whichever agent sweeps or when.

use std::{io, os::fd::AsFd as _};

use aya::{
    maps::{HashMap, MapData},
    programs::ProgramFd,
};
use aya_obj::generated::bpf_cmd;
use enforcer_common::maps::{FOLDS, FOLDS_CAPACITY, FoldKey, FoldState};

use super::{
    LoaderError, MapSet, map_error,
    sys::{bpf, raw, zeroed_attr},
};

/// `XDP_PASS`: `fold_report` wrote the pending attempts (or none were pending).
const REPORTED: u32 = 2;
/// `XDP_DROP`: `fold_report` found the ring full; the attempts stay pending.
const RING_FULL: u32 = 1;

/// A fold idle this many windows with nothing pending is deleted.
const IDLE_WINDOWS: u64 = 3;

/// The loaded `fold_report` program.
pub struct FoldReporter {
    program: ProgramFd,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Folds whose pending attempts became an event.
    pub reported: u64,
    /// Folds left pending because the ring was full.
    pub ring_full: u64,
    /// Idle, empty folds deleted.
    pub deleted: u64,
}

impl FoldReporter {
    pub(super) fn new(program: ProgramFd) -> Self {
        Self { program }
    }

    /// Reports every fold with attempts pending and no attempt for a whole `window_ns`
    /// before `now_ns` (boot-time clock), or every fold with attempts pending when `all`;
    /// deletes folds idle for three windows with nothing pending.
    pub fn sweep(
        &self,
        maps: &mut impl MapSet,
        window_ns: u64,
        now_ns: u64,
        all: bool,
    ) -> Result<Swept, LoaderError> {
        let map = maps.map_mut(FOLDS)?;
        let mut folds: HashMap<&mut MapData, FoldKey, FoldState> =
            HashMap::try_from(map).map_err(map_error(FOLDS))?;
        // Entries first: deleting the key the walk stands on would restart it from the
        // first key. The walk is bounded by the map's capacity whatever happens to the map
        // meanwhile (a fold missed is swept next time).
        let entries: Vec<(FoldKey, FoldState)> = folds
            .iter()
            .take(FOLDS_CAPACITY as usize)
            .filter_map(Result::ok)
            .collect();
        let mut swept = Swept::default();
        for (key, state) in entries {
            let idle = now_ns.saturating_sub(state.last_ns);
            if state.pending > 0 && (all || idle >= window_ns) {
                match self.report(&key) {
                    Ok(RING_FULL) => swept.ring_full += 1,
                    Ok(_) => swept.reported += 1,
                    Err(err) => {
                        return Err(LoaderError::Link {
                            what: "fold report".to_owned(),
                            reason: err.to_string(),
                        });
                    }
                }
            } else if state.pending == 0 && idle >= window_ns.saturating_mul(IDLE_WINDOWS) {
                // An attempt racing this delete is written as an event by its own hook
                // (the fold's window has long passed), from the fold it found.
                if folds.remove(&key).is_ok() {
                    swept.deleted += 1;
                }
            }
        }
        Ok(swept)
    }

    /// Runs `fold_report` on `key`; returns its action.
    fn report(&self, key: &FoldKey) -> io::Result<u32> {
        // SAFETY: `FoldKey` is plain old data without padding (asserted in
        // enforcer-common); viewing it as bytes reads only initialised memory.
        let packet = unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(key).cast::<u8>(), size_of::<FoldKey>())
        };
        let mut attr = zeroed_attr();
        attr.test.prog_fd = raw(self.program.as_fd());
        attr.test.data_in = packet.as_ptr() as u64;
        attr.test.data_size_in = u32::try_from(packet.len()).expect("a key is 64 bytes");
        attr.test.repeat = 1;
        // SAFETY: the `test` member is filled in as BPF_PROG_TEST_RUN expects; the kernel
        // reads `data_size_in` bytes at `data_in`, which `packet` holds for the call, and
        // writes no output (no output buffer given).
        unsafe { bpf(bpf_cmd::BPF_PROG_TEST_RUN, &mut attr) }?;
        // SAFETY: the kernel wrote the `test` member; every bit pattern is an integer.
        let action = unsafe { attr.test.retval };
        debug_assert!(action == REPORTED || action == RING_FULL || action == 0);
        Ok(action)
    }
}
