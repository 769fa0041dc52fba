//! The agent's audit consumer: waits on the kernel's event ring with tokio's `AsyncFd`,
//! turns each event into a record and writes them to the store in batches. Losses are
//! never silent: the kernel's count of events a full ring refused, and every event the
//! consumer drained but could not store, become `gap` records in the store itself as soon
//! as it can write one.
//!
//! On a write error (a full disk) the consumer counts the batch it could not store (in a
//! pinned map, so the count outlives the agent), stops draining the ring (events wait
//! there; the kernel counts any the ring cannot hold) and retries once a second; the
//! configured [`WriteErrorAction`] decides whether the kernel meanwhile denies every new
//! flow but failsafe access.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, watch},
};

use enforcer_common::event::FlowEvent;

use super::{audit::Note, enrich::Enricher, sweep::FoldSweeps};
use crate::{
    audit::{
        compact::FlowFacts,
        history,
        record::{Gap, Kind, Record, SEVERITY_HIGH, now_ms},
        store::{FlowSource, Store},
    },
    config::WriteErrorAction,
    loader::{EventReader, PinnedMaps},
    policy::names::GenerationNames,
};

/// Most events turned into one batch.
const BATCH_MAX: usize = 8192;
/// How long a failing store is left alone between attempts.
const RETRY: Duration = Duration::from_secs(1);
/// How often the consumer looks at the kernel's loss counter and the fsync timer when no
/// events arrive.
const TICK: Duration = Duration::from_millis(100);

/// Counts the metrics endpoint shows.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Flow records stored.
    pub flows: AtomicU64,
    /// Events accounted as lost in gap records, by cause: ring full.
    pub lost_ring: AtomicU64,
    /// Events drained but not stored (write errors) and accounted in gap records.
    pub lost_write: AtomicU64,
    /// Whether the last write succeeded.
    pub store_ok: AtomicBool,
}

/// Everything the consumer needs.
pub struct Consumer {
    /// The pinned maps: the kernel's loss counter and fail-closed switch.
    pub maps: PinnedMaps,
    /// The store.
    pub store: Store,
    /// Event to record.
    pub enricher: Enricher,
    /// The kernel's loss count that the store already accounts for.
    pub ring_lost_accounted: u64,
    /// What to do on a write error.
    pub on_write_error: WriteErrorAction,
    /// Counts for metrics.
    pub stats: Arc<AuditStats>,
    /// The kernel's folds, reported when idle.
    pub folds: FoldSweeps,
}

/// What the consumer has drained but not yet stored, and what it owes the store.
struct Owed {
    /// Events drained but not stored since the last successful write.
    unwritten: u64,
    /// Records that could not be decoded.
    undecodable: u64,
    /// The last write error.
    error: Option<String>,
    /// When the store last failed, while it is failing.
    failing_since: Option<Instant>,
}

pub(super) fn gap(enricher: &Enricher, lost: u64, cause: &str, error: Option<String>) -> Record {
    let mut record = Record::new(
        Kind::Gap,
        now_ms(),
        enricher.hostname(),
        match &error {
            Some(error) => format!("{lost} events lost ({cause}: {error})"),
            None => format!("{lost} events lost ({cause})"),
        },
    );
    record.severity_id = SEVERITY_HIGH;
    record.unmapped.gap = Some(Gap {
        lost,
        cause: cause.to_owned(),
        error,
    });
    record
}

impl Consumer {
    /// Runs until `stop` turns true, then drains the ring, accounts for every loss it can
    /// and seals the store.
    pub async fn run(
        mut self,
        events: EventReader,
        mut names: mpsc::UnboundedReceiver<GenerationNames>,
        mut notes: mpsc::UnboundedReceiver<Note>,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        // SAFETY: the descriptor belongs to the ring map inside the reader, which the
        // `AsyncFd` owns: it stays open and the same until the `AsyncFd` is dropped.
        let mut ring = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        // Events an earlier agent took off the ring but could not store are owed too.
        let mut owed = Owed {
            unwritten: self.maps.event_counts()?.unstored,
            undecodable: 0,
            error: None,
            failing_since: None,
        };
        let mut batch = Vec::with_capacity(BATCH_MAX);
        // Who waits for a noted record to be written.
        let mut written = Vec::new();
        self.stats.store_ok.store(true, Ordering::Relaxed);
        loop {
            let wait = self.store.tick(now_ms())?.map_or(TICK, |due| due.min(TICK));
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                Some(generation) = names.recv() => self.enricher.learn(generation),
                Some(note) = notes.recv() => self.take(note, &mut written),
                // While the store fails, events stay in the ring (where the kernel
                // counts any it cannot hold) instead of being drained and dropped.
                ready = ring.readable_mut(), if owed.failing_since.is_none() => {
                    let mut guard = ready?;
                    let drained = drain(guard.get_inner_mut(), &mut batch, &mut owed);
                    if drained < BATCH_MAX {
                        guard.clear_ready();
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
            while let Ok(generation) = names.try_recv() {
                self.enricher.learn(generation);
            }
            while let Ok(note) = notes.try_recv() {
                self.take(note, &mut written);
            }
            self.flush(&mut batch, &mut owed)?;
            // A failing store leaves the ring undrained: reports would only wait there.
            if owed.failing_since.is_none() {
                self.folds.if_due(&mut self.maps)?;
            }
            if !self.store.has_pending() {
                for waiter in written.drain(..) {
                    let _ = waiter.send(());
                }
            }
        }
        // Stopping: the folds' pending attempts and what the ring holds go in too, unless
        // the store fails (then they wait in the kernel for the next start).
        if owed.failing_since.is_none() {
            self.folds.everything(&mut self.maps)?;
        }
        while owed.failing_since.is_none() {
            let drained = drain(ring.get_mut(), &mut batch, &mut owed);
            self.flush(&mut batch, &mut owed)?;
            if drained < BATCH_MAX {
                break;
            }
        }
        if owed.failing_since.is_some() {
            // Waiting events stay in the ring for the next start; the count of those
            // taken off it is in the pinned map, and the next start seals the newest file.
            tracing::error!(
                unstored = owed.unwritten,
                "stopping while audit records cannot be written; waiting events stay in the ring for the next start"
            );
            return Ok(());
        }
        while let Ok(note) = notes.try_recv() {
            self.store.note(note.record);
        }
        self.store
            .note(history::stopping(now_ms(), self.enricher.hostname()));
        self.store.close(now_ms())?;
        Ok(())
    }

    /// Writes the drained records, preceded by gap records for any loss not yet
    /// accounted for. While the store fails, attempts are spaced by [`RETRY`].
    /// Queues a noted record for the next batch; its waiter, if any, joins `written`.
    fn take(&mut self, note: Note, written: &mut Vec<std::sync::mpsc::SyncSender<()>>) {
        self.store.note(note.record);
        written.extend(note.written);
    }

    fn flush(&mut self, batch: &mut Vec<FlowEvent>, owed: &mut Owed) -> anyhow::Result<()> {
        let kernel_lost = self.maps.event_counts()?.lost;
        let ring_lost = kernel_lost.saturating_sub(self.ring_lost_accounted);
        if batch.is_empty()
            && ring_lost == 0
            && owed.unwritten == 0
            && owed.undecodable == 0
            && !self.store.has_pending()
        {
            return Ok(());
        }
        if owed
            .failing_since
            .is_some_and(|since| since.elapsed() < RETRY)
        {
            // Only a batch drained before the failure was known gets here.
            if !batch.is_empty() {
                owed.unwritten += batch.len() as u64;
                self.maps.set_unstored(owed.unwritten)?;
                batch.clear();
            }
            return Ok(());
        }
        let mut gaps = Vec::new();
        if ring_lost > 0 {
            gaps.push(gap(&self.enricher, ring_lost, "ring-full", None));
        }
        if owed.unwritten > 0 {
            gaps.push(gap(
                &self.enricher,
                owed.unwritten,
                "write-error",
                owed.error.clone(),
            ));
        }
        if owed.undecodable > 0 {
            gaps.push(gap(&self.enricher, owed.undecodable, "decode-error", None));
        }
        let flows = batch.len() as u64;
        let accounted_before = self.ring_lost_accounted;
        self.store.set_ring_lost_accounted(kernel_lost);
        let mut events = Enriching {
            enricher: &mut self.enricher,
            events: batch,
        };
        match self
            .store
            .write_with_flows(&mut gaps, &mut events, now_ms())
        {
            Ok(()) => {
                self.ring_lost_accounted = kernel_lost;
                self.stats.flows.fetch_add(flows, Ordering::Relaxed);
                self.stats.lost_ring.fetch_add(ring_lost, Ordering::Relaxed);
                self.stats
                    .lost_write
                    .fetch_add(owed.unwritten, Ordering::Relaxed);
                if owed.failing_since.take().is_some() {
                    tracing::warn!(
                        lost = owed.unwritten,
                        "audit store writable again; the lost events are recorded as a gap"
                    );
                    self.stats.store_ok.store(true, Ordering::Relaxed);
                    if self.on_write_error == WriteErrorAction::FailClosed {
                        self.maps.set_fail_closed(false)?;
                        tracing::warn!("fail-closed lifted: flows are decided by the policy again");
                        self.store.note(history::fail_closed(
                            false,
                            now_ms(),
                            self.enricher.hostname(),
                        ));
                    }
                }
                if owed.unwritten > 0 {
                    self.maps.set_unstored(0)?;
                }
                owed.unwritten = 0;
                owed.undecodable = 0;
                owed.error = None;
            }
            Err(err) => {
                self.store.set_ring_lost_accounted(accounted_before);
                owed.unwritten += flows;
                self.maps.set_unstored(owed.unwritten)?;
                let first = owed.failing_since.is_none();
                owed.failing_since = Some(Instant::now());
                owed.error = Some(err.to_string());
                self.stats.store_ok.store(false, Ordering::Relaxed);
                if first {
                    tracing::error!(error = %err, action = ?self.on_write_error, "cannot write audit records; events wait in the ring (losses are counted) and writing is retried every second");
                    if self.on_write_error == WriteErrorAction::FailClosed {
                        self.maps.set_fail_closed(true)?;
                        self.store.note(history::fail_closed(
                            true,
                            now_ms(),
                            self.enricher.hostname(),
                        ));
                        tracing::error!(
                            "fail-closed: every new flow but failsafe access is denied until audit records can be written"
                        );
                    }
                }
            }
        }
        batch.clear();
        Ok(())
    }
}

/// A batch's events, each enriched as the store writes it.
struct Enriching<'a> {
    enricher: &'a mut Enricher,
    events: &'a [FlowEvent],
}

impl FlowSource for Enriching<'_> {
    fn len(&self) -> usize {
        self.events.len()
    }

    fn facts(&mut self, index: usize) -> FlowFacts<'_> {
        self.enricher.facts(&self.events[index])
    }
}

/// Moves up to [`BATCH_MAX`] waiting events into `batch`; returns how many were taken
/// off the ring.
fn drain(ring: &mut EventReader, batch: &mut Vec<FlowEvent>, owed: &mut Owed) -> usize {
    let mut taken = 0;
    while taken < BATCH_MAX {
        let Some(event) = ring.next_event() else {
            break;
        };
        taken += 1;
        match event {
            Ok(event) => batch.push(event),
            Err(err) => {
                if owed.undecodable == 0 {
                    tracing::error!(error = %err, "an event could not be decoded");
                }
                owed.undecodable += 1;
            }
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A loss is High severity (4), whatever its cause.
    #[test]
    fn a_gap_record_is_high_severity() {
        let enricher = Enricher::new("host-a".into(), PathBuf::from("/nonexistent"), vec![]);
        for (cause, error) in [
            ("ring-full", None),
            ("write-error", Some("No space left on device".to_owned())),
            ("decode-error", None),
        ] {
            let record = gap(&enricher, 3, cause, error);
            assert_eq!(record.severity_id, SEVERITY_HIGH, "{cause}");
            assert_eq!(record.unmapped.gap.as_ref().unwrap().lost, 3);
        }
    }
}
