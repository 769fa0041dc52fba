//! When the consumer has the kernel report idle folds (see `loader::FoldReporter`): once
//! per fold window while running, and for every fold with attempts pending when it stops,
//! so that the last attempts of a flood reach the store without waiting for another one.

use std::time::{Duration, Instant};

use crate::loader::{FoldReporter, PinnedMaps, Swept};

/// The shortest time between two sweeps, whatever the window.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The consumer's fold sweeps.
pub struct FoldSweeps {
    reporter: FoldReporter,
    window: Duration,
    next: Instant,
}

impl FoldSweeps {
    /// Sweeps for folds of `window` (zero: the kernel keeps no folds, and nothing is swept).
    pub fn new(reporter: FoldReporter, window: Duration) -> Self {
        Self {
            reporter,
            window,
            next: Instant::now() + window.max(MIN_INTERVAL),
        }
    }

    /// Reports the folds idle for a window, if a sweep is due.
    pub fn if_due(&mut self, maps: &mut PinnedMaps) -> anyhow::Result<Option<Swept>> {
        if self.window.is_zero() || Instant::now() < self.next {
            return Ok(None);
        }
        self.next = Instant::now() + self.window.max(MIN_INTERVAL);
        self.sweep(maps, false).map(Some)
    }

    /// Reports every fold with attempts pending.
    pub fn everything(&mut self, maps: &mut PinnedMaps) -> anyhow::Result<Swept> {
        self.sweep(maps, true)
    }

    fn sweep(&self, maps: &mut PinnedMaps, all: bool) -> anyhow::Result<Swept> {
        let window_ns = u64::try_from(self.window.as_nanos()).unwrap_or(u64::MAX);
        let swept = self.reporter.sweep(maps, window_ns, boot_ns(), all)?;
        if swept.ring_full > 0 {
            tracing::debug!(
                folds = swept.ring_full,
                "folds left pending: the event ring is full"
            );
        }
        Ok(swept)
    }
}

/// The kernel's boot-time clock (`bpf_ktime_get_boot_ns`), now.
fn boot_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}
