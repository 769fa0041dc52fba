//! The agent's audit threads: the [`Consumer`] on its own single-threaded runtime, so
//! turning a burst of events into records never delays reloads, signals or metrics, and
//! the [`Forwarder`] to a syslog collector when one is configured.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    consumer::{AuditStats, Consumer},
    enrich::Enricher,
    sweep::FoldSweeps,
};
use crate::{
    audit::{
        files,
        forward::{ForwardStats, Forwarder, Tls},
        history,
        record::{self, Record},
        seal::Sealer,
        store::{Store, StoreSettings},
    },
    config::Config,
    host,
    loader::{EventReader, FoldReporter, PinLayout, PinnedMaps},
    policy::names::GenerationNames,
};

/// A record of the agent's or a policy's history for the store, and who waits until it
/// is written.
pub struct Note {
    /// The record.
    pub record: Record,
    /// Told once the record is in the store's file.
    pub written: Option<std::sync::mpsc::SyncSender<()>>,
}

/// The running audit thread (and the forwarder's, when one is configured).
pub struct AuditThread {
    names: mpsc::UnboundedSender<GenerationNames>,
    notes: mpsc::UnboundedSender<Note>,
    stop: watch::Sender<bool>,
    ended: Option<oneshot::Receiver<()>>,
    thread: JoinHandle<anyhow::Result<()>>,
    forwarder: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    /// The consumer's counts, for metrics.
    pub stats: Arc<AuditStats>,
    /// The forwarder's counts, for metrics.
    pub forward_stats: Option<Arc<ForwardStats>>,
}

impl AuditThread {
    /// Opens the store in `config.audit.dir` and starts consuming `events`.
    /// `adopting`: the kernel maps (and their loss counter) are an earlier agent's, so
    /// the losses its store already accounts for are not counted again.
    pub fn start(
        config: &Config,
        events: EventReader,
        folds: FoldReporter,
        pins: &PinLayout,
        cgroup_root: &Path,
        generations: Vec<GenerationNames>,
        adopting: bool,
    ) -> anyhow::Result<Self> {
        let audit = &config.audit;
        let now_ms = record::now_ms();
        let ring_lost_accounted = if adopting {
            files::read_head(&audit.dir)
                .ok()
                .flatten()
                .map_or(0, |head| head.ring_lost_accounted)
        } else {
            0
        };
        let host = host::hostname();
        let sealer = audit.seal_key.as_deref().and_then(|path| {
            match Sealer::load(path, audit.seal_interval) {
                Ok(sealer) => Some(sealer),
                Err(err) => {
                    tracing::error!(error = %err, "audit records are NOT sealed: the sealing key cannot be read (create it with `enforcer audit setup-keys`)");
                    None
                }
            }
        });
        if let Some(sealer) = &sealer {
            tracing::info!(
                epoch = sealer.index(),
                interval_s = audit.seal_interval.as_secs(),
                "audit records are sealed forward-securely"
            );
        }
        let store = Store::open(
            StoreSettings {
                dir: audit.dir.clone(),
                rotate_bytes: audit.rotate_bytes,
                rotate_age: audit.rotate_age,
                retain_bytes: audit.retain_bytes,
                retain_age: audit.retain_age,
                fsync: audit.fsync,
                format: audit.format,
            },
            &host,
            now_ms,
            sealer,
        )
        .context("audit.dir")?;
        let mut store = store;
        store.note(history::started(store.recovered(), now_ms, &host));
        let stats = Arc::new(AuditStats::default());
        let consumer = Consumer {
            maps: PinnedMaps::open(&pins.maps_dir())?,
            store,
            enricher: Enricher::new(host, cgroup_root.to_owned(), generations),
            ring_lost_accounted,
            on_write_error: audit.on_write_error,
            stats: Arc::clone(&stats),
            folds: FoldSweeps::new(folds, audit.dedup_window),
        };
        let (names, names_rx) = mpsc::unbounded_channel();
        let (notes, notes_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let (ended_tx, ended) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("audit".to_owned())
            .spawn(move || {
                let outcome = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting the audit runtime")
                    .and_then(|runtime| {
                        runtime.block_on(consumer.run(events, names_rx, notes_rx, stop_rx))
                    });
                let _ = ended_tx.send(());
                outcome
            })
            .context("starting the audit thread")?;
        let forward_stats = audit
            .forward
            .as_ref()
            .map(|_| Arc::new(ForwardStats::default()));
        let forwarder = match (&audit.forward, &forward_stats) {
            (Some(forward), Some(stats)) => {
                let tls = forward
                    .tls
                    .as_ref()
                    .map(|tls| {
                        Tls::new(
                            &tls.ca_file,
                            tls.client_certificate.as_ref(),
                            &tls.server_name,
                        )
                        .map_err(|err| anyhow::anyhow!("`audit.forward.{}`: {err}", err.key()))
                    })
                    .transpose()?;
                let forwarder = Forwarder {
                    dir: audit.dir.clone(),
                    address: forward.address.clone(),
                    framing: forward.framing,
                    tls,
                    pid: std::process::id(),
                    stats: Arc::clone(stats),
                };
                let stop = Arc::new(AtomicBool::new(false));
                let stop_flag = Arc::clone(&stop);
                let thread = std::thread::Builder::new()
                    .name("forward".to_owned())
                    .spawn(move || forwarder.run(&stop_flag))
                    .context("starting the forwarding thread")?;
                Some((stop, thread))
            }
            _ => None,
        };
        Ok(Self {
            names,
            notes,
            stop,
            ended: Some(ended),
            thread,
            forwarder,
            stats,
            forward_stats,
        })
    }

    /// Tells the consumer a new generation's names.
    pub fn learn(&self, names: GenerationNames) {
        // A send fails only when the consumer ended, which `ended` reports.
        let _ = self.names.send(names);
    }

    /// Hands the consumer a record of the agent's or a policy's history for the store.
    pub fn note(&self, record: Record) {
        // A send fails only when the consumer ended, which `ended` reports.
        let _ = self.notes.send(Note {
            record,
            written: None,
        });
    }

    /// As [`AuditThread::note`], then waits up to `within` until the record is in the
    /// store's file (so a crash right after cannot lose it); whether it got there in time.
    /// A store that cannot write keeps the record pending and this returns `false`.
    pub fn note_written(&self, record: Record, within: Duration) -> bool {
        let (written, wait) = std::sync::mpsc::sync_channel(1);
        let note = Note {
            record,
            written: Some(written),
        };
        self.notes.send(note).is_ok() && wait.recv_timeout(within).is_ok()
    }

    /// A receiver that resolves when the consumer ends (by itself only on an error);
    /// there is one.
    pub fn take_ended(&mut self) -> Option<oneshot::Receiver<()>> {
        self.ended.take()
    }

    /// Stops the consumer (it drains the ring, records what was lost and seals the
    /// store) and returns how it ended.
    pub fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let outcome = self
            .thread
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the audit thread panicked")));
        // The forwarder goes last: it sends what the consumer wrote while stopping.
        if let Some((stop, thread)) = self.forwarder {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
        outcome
    }
}
