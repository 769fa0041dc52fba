//! The writer of the local audit store: append-only segment files in one directory (the
//! compact format of [`super::compact`]; an earlier store's JSON Lines files are read,
//! continued from and sealed in their own format), hash-chained across files, rotated by
//! size and age, sealed on rotation, trimmed by total size and age, synced to disk as
//! configured.
//!
//! A batch is written whole or not at all: on a write error the file is cut back to the
//! end of the last complete batch and the chain stays where it was, so a full disk never
//! leaves a torn record behind and writing resumes cleanly when space returns.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{
    chain::{self, Head},
    compact::{self, Decoder, Encoder, FlowFacts},
    files::{self, Format, SegmentFile},
    record::{FileDetails, FileSummary, FlowNames, Kind, Record, RemovedFile, SEVERITY_HIGH},
    seal::{KeyFileError, Sealer},
};

/// When written records are forced to disk (`fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// After every batch: nothing acknowledged is lost on power failure.
    Batch,
    /// At most this long after a batch.
    Interval(Duration),
    /// Never explicitly: the kernel writes back when it likes.
    Never,
}

/// How the store rotates, trims and syncs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// The store's directory.
    pub dir: PathBuf,
    /// Start a new file once the current one holds this many bytes.
    pub rotate_bytes: u64,
    /// Start a new file once the current one is this old.
    pub rotate_age: Duration,
    /// Remove the oldest sealed files while all files together exceed this.
    pub retain_bytes: u64,
    /// Remove sealed files whose last record is older than this.
    pub retain_age: Duration,
    /// When to sync.
    pub fsync: Fsync,
    /// The format of the files it starts.
    pub format: Format,
}

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory could not be prepared or read.
    #[error("audit store {}: {source}", .dir.display())]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The sealing key could not be brought past the store's last seal.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// A batch could not be written; nothing of it is in the store.
    #[error("writing {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// What the current file holds so far, for its seal.
#[derive(Debug, Clone, Default)]
struct FileStats {
    records: u64,
    first_sequence: u64,
    first_time: i64,
    last_time: i64,
    flows: u64,
    lost: u64,
    summary: FileSummary,
}

impl FileStats {
    /// The seal of segment file `number`, named `name`, holding these records; `how`
    /// ends its message.
    fn seal(&self, (number, name): (u64, &str), time: i64, hostname: &str, how: &str) -> Record {
        let mut seal = Record::new(
            Kind::Seal,
            time,
            hostname,
            format!("audit file {name} sealed{how}: {} records", self.records),
        );
        seal.unmapped.file = Some(FileDetails {
            number,
            opened: None,
            records: Some(self.records),
            first_sequence: Some(self.first_sequence),
            first_time: Some(self.first_time),
            last_time: Some(self.last_time),
            flows: Some(self.flows),
            lost: Some(self.lost),
            summary: Some(self.summary.clone()),
        });
        seal
    }

    /// Counts a flow written from its facts, as record `sequence`.
    fn add_facts(&mut self, facts: &FlowFacts<'_>, sequence: u64) {
        if self.records == 0 {
            self.first_sequence = sequence;
            self.first_time = facts.time;
        }
        self.records += 1;
        self.last_time = facts.time;
        self.flows += 1;
        if let Some(details) = &facts.details {
            self.summary.add_flow(&FlowNames {
                src_segment: details.src_segment,
                dst_segment: details.dst_segment,
                decided_by: details.rule.unwrap_or(details.reason),
                verdict: details.verdict,
                protocol: facts
                    .connection
                    .as_ref()
                    .map(|info| (info.protocol_name, info.protocol_num)),
            });
        }
    }

    fn add(&mut self, record: &Record) {
        if self.records == 0 {
            self.first_sequence = record.sequence();
            self.first_time = record.time;
        }
        self.records += 1;
        self.last_time = record.time;
        match record.unmapped.kind {
            Kind::Flow => self.flows += 1,
            Kind::Gap => self.lost += record.unmapped.gap.as_ref().map_or(0, |gap| gap.lost),
            _ => {}
        }
        self.summary.add(record);
    }
}

/// How a segment file takes records: in its format, with what that needs.
enum Writer {
    /// A JSON Lines file of an earlier store (only its seal is written).
    Lines,
    /// A compact file, with its table of names.
    Compact(Encoder),
}

/// A batch being built by a [`Writer`].
enum Building {
    Lines,
    Compact(compact::Batch),
}

impl Writer {
    /// The writer of a file in `format`, with no names yet.
    fn new(format: Format) -> Self {
        match format {
            Format::Lines => Self::Lines,
            Format::Compact => Self::Compact(Encoder::default()),
        }
    }

    fn begin(&self, head: &Head, out: &mut Vec<u8>) -> Building {
        match self {
            Self::Lines => Building::Lines,
            Self::Compact(encoder) => Building::Compact(encoder.begin(head, out)),
        }
    }

    /// Appends a flow given by its facts as the record after `head` and advances `head`.
    fn push_facts(
        &mut self,
        building: &mut Building,
        facts: &FlowFacts<'_>,
        head: &mut Head,
        out: &mut Vec<u8>,
    ) {
        match (self, building) {
            (Self::Compact(encoder), Building::Compact(batch)) => {
                encoder.push_facts(batch, facts, head, out);
            }
            _ => chain::append(&mut facts.record(), head, out),
        }
    }

    /// Appends `record` as the record after `head` and advances `head`.
    fn push(
        &mut self,
        building: &mut Building,
        record: &mut Record,
        head: &mut Head,
        out: &mut Vec<u8>,
    ) {
        match (self, building) {
            (Self::Compact(encoder), Building::Compact(batch)) => {
                encoder.push(batch, record, head, out);
            }
            _ => chain::append(record, head, out),
        }
    }

    fn end(building: Building, head: &Head, out: &mut Vec<u8>) {
        if let Building::Compact(batch) = building {
            Encoder::end(batch, head, out);
        }
    }

    /// Where its names stand, to go back to when a batch is not written.
    fn mark(&self) -> Option<compact::Mark> {
        match self {
            Self::Lines => None,
            Self::Compact(encoder) => Some(encoder.mark()),
        }
    }

    fn rollback(&mut self, mark: Option<compact::Mark>) {
        if let (Self::Compact(encoder), Some(mark)) = (self, mark) {
            encoder.rollback(mark);
        }
    }
}

/// Appends `records` to `out` as one batch in `writer`'s format after `head`.
fn batch_for(writer: &mut Writer, records: &mut [&mut Record], head: &mut Head, out: &mut Vec<u8>) {
    let mut building = writer.begin(head, out);
    for record in records {
        writer.push(&mut building, record, head, out);
    }
    Writer::end(building, head, out);
}

/// Flows a batch writes from their facts, without records (the agent's kernel events).
pub trait FlowSource {
    /// How many flows.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The facts of flow `index` (from 0), made when the store writes it.
    fn facts(&mut self, index: usize) -> FlowFacts<'_>;
}

/// The open segment file.
struct Current {
    number: u64,
    path: PathBuf,
    file: File,
    writer: Writer,
    /// Bytes of complete batches.
    len: u64,
    opened: Instant,
    stats: FileStats,
    /// Its seal is written (a rotation that could not create the next file).
    sealed: bool,
}

/// The audit store's writer.
pub struct Store {
    settings: StoreSettings,
    hostname: String,
    current: Current,
    head: Head,
    /// Store records waiting to lead the next batch (a new file's open record, a
    /// retention record).
    pending: Vec<Record>,
    /// An earlier writer's newest file and the seal it still needs (appended before the
    /// next batch, so the chain runs through it).
    unsealed: Option<(SegmentFile, Record)>,
    /// Files a pending retention record names; removed once that record is written.
    doomed: Vec<PathBuf>,
    unsynced: Option<Instant>,
    buf: Vec<u8>,
    /// Written into `HEAD` (see [`files::HeadRecord::ring_lost_accounted`]).
    ring_lost_accounted: u64,
    /// The forward-secure sealer, when a sealing key is set up.
    sealer: Option<Sealer>,
    /// The previous writer ended without sealing its newest file.
    recovered: bool,
}

impl Store {
    /// Opens the store in `settings.dir` (creating it), continuing the chain of the files
    /// already there. The newest file is sealed (a torn last line from a crash is cut
    /// off first, and counted in a gap record) and a new one started. A full disk does
    /// not stop this: the seal and the new file's first records wait for the first write
    /// that fits. With a `sealer`, its key is moved past the last epoch the store holds a
    /// seal of, and the chain is sealed every interval, at rotation and at close.
    pub fn open(
        settings: StoreSettings,
        hostname: &str,
        now_ms: i64,
        mut sealer: Option<Sealer>,
    ) -> Result<Self, StoreError> {
        let dir_error = |source| StoreError::Dir {
            dir: settings.dir.clone(),
            source,
        };
        fs::create_dir_all(&settings.dir).map_err(dir_error)?;
        let existing = files::segments(&settings.dir).map_err(dir_error)?;
        if let Some(sealer) = &mut sealer {
            sealer.resume_after(last_epoch(&existing).map_err(dir_error)?)?;
        }
        let mut head = Head::GENESIS;
        let mut pending = Vec::new();
        let mut unsealed = None;
        let (number, opened) = match existing.last() {
            None => (1, "first"),
            Some(last) => {
                let resumed = resume(last).map_err(dir_error)?;
                head = resumed.head;
                if resumed.torn_bytes > 0 {
                    let mut gap = Record::new(
                        Kind::Gap,
                        now_ms,
                        hostname,
                        format!(
                            "an incomplete record ({} bytes) at the end of {} was cut off at restart",
                            resumed.torn_bytes,
                            files::name_in(last.number, last.format)
                        ),
                    );
                    gap.severity_id = SEVERITY_HIGH;
                    gap.unmapped.gap = Some(super::record::Gap {
                        lost: 1,
                        cause: "torn-write".to_owned(),
                        error: None,
                    });
                    pending.push(gap);
                }
                unsealed = resumed.seal.map(|seal| (last.clone(), seal));
                (last.number + 1, "restart")
            }
        };
        let current = create(&settings.dir, number, settings.format).map_err(dir_error)?;
        let mut store = Self {
            hostname: hostname.to_owned(),
            settings,
            current,
            head,
            pending: Vec::new(),
            unsealed,
            doomed: Vec::new(),
            unsynced: None,
            buf: Vec::with_capacity(1 << 20),
            ring_lost_accounted: 0,
            sealer,
            recovered: false,
        };
        store.recovered = store.unsealed.is_some();
        store.pending.push(store.open_record(now_ms, opened));
        store.pending.append(&mut pending);
        // A full disk keeps these pending: they lead the first batch that fits.
        if let Err(err) = store.commit(&mut [], None, now_ms, false) {
            tracing::warn!(error = %err, "the audit store could not write its open record yet");
        }
        Ok(store)
    }

    /// Queues `record` (the agent's or a policy's history) to lead the next batch.
    pub fn note(&mut self, record: Record) {
        self.pending.push(record);
    }

    /// Whether records wait for the next batch.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether the previous writer ended without sealing its newest file (a crash, a
    /// kill): found when the store was opened.
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    /// Sets the kernel ring-loss count that `HEAD` says the store accounts for, from the
    /// next batch on.
    pub fn set_ring_lost_accounted(&mut self, count: u64) {
        self.ring_lost_accounted = count;
    }

    fn open_record(&self, now_ms: i64, why: &str) -> Record {
        let mut record = Record::new(
            Kind::Open,
            now_ms,
            &self.hostname,
            format!(
                "audit file {} opened ({why})",
                files::name_in(self.current.number, self.settings.format)
            ),
        );
        record.unmapped.file = Some(FileDetails {
            number: self.current.number,
            opened: Some(why.to_owned()),
            records: None,
            first_sequence: None,
            first_time: None,
            last_time: None,
            flows: None,
            lost: None,
            summary: None,
        });
        record
    }

    /// Writes `records` (after any pending store records) as one batch: all of them or,
    /// on error, none. Rotates first when the current file is due.
    pub fn write(&mut self, records: &mut [Record], now_ms: i64) -> Result<(), StoreError> {
        self.rotate_when_due(now_ms)?;
        self.commit(records, None, now_ms, false)
    }

    /// [`Store::write`], with `flows` after `records` in the batch: written from their
    /// facts, without records.
    pub fn write_with_flows(
        &mut self,
        records: &mut [Record],
        flows: &mut dyn FlowSource,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.rotate_when_due(now_ms)?;
        self.commit(records, Some(flows), now_ms, false)
    }

    /// Seals the current file and starts the next when it is due by size or age.
    fn rotate_when_due(&mut self, now_ms: i64) -> Result<(), StoreError> {
        if self.current.len >= self.settings.rotate_bytes
            || self.current.opened.elapsed() >= self.settings.rotate_age
        {
            self.rotate(now_ms)?;
        }
        Ok(())
    }

    /// Writes the pending records, `records`, an epoch seal when one is due (or the file
    /// is being sealed) and, with `seal_file`, the current file's seal, as one batch,
    /// whole or not at all.
    fn commit(
        &mut self,
        records: &mut [Record],
        flows: Option<&mut dyn FlowSource>,
        now_ms: i64,
        seal_file: bool,
    ) -> Result<(), StoreError> {
        self.seal_earlier_file()?;
        let head_before = self.head;
        let stats_before = self.current.stats.clone();
        let names_before = self.current.writer.mark();
        self.buf.clear();
        self.buf
            .extend_from_slice(file_start(self.settings.format, self.current.len));
        let writer = &mut self.current.writer;
        let mut building = writer.begin(&self.head, &mut self.buf);
        for record in self.pending.iter_mut().chain(records.iter_mut()) {
            writer.push(&mut building, record, &mut self.head, &mut self.buf);
            self.current.stats.add(record);
        }
        if let Some(flows) = flows {
            for index in 0..flows.len() {
                let facts = flows.facts(index);
                writer.push_facts(&mut building, &facts, &mut self.head, &mut self.buf);
                self.current.stats.add_facts(&facts, self.head.sequence);
            }
        }
        let epoch = self
            .sealer
            .as_ref()
            .filter(|sealer| seal_file || sealer.due_in().is_zero())
            .map(|sealer| sealer.seal(&self.head, now_ms, &self.hostname));
        if let Some(mut epoch) = epoch.clone() {
            writer.push(&mut building, &mut epoch, &mut self.head, &mut self.buf);
            self.current.stats.add(&epoch);
        }
        if seal_file {
            let mut seal = self.current.stats.seal(
                (
                    self.current.number,
                    &files::name_in(self.current.number, self.settings.format),
                ),
                now_ms,
                &self.hostname,
                "",
            );
            writer.push(&mut building, &mut seal, &mut self.head, &mut self.buf);
        }
        Writer::end(building, &self.head, &mut self.buf);
        if let Err(source) = self.current.file.write_all(&self.buf) {
            // Cut back whatever part of the batch reached the file.
            let _ = self.current.file.set_len(self.current.len);
            self.head = head_before;
            self.current.stats = stats_before;
            self.current.writer.rollback(names_before);
            return Err(StoreError::Write {
                path: self.current.path.clone(),
                source,
            });
        }
        self.current.len += self.buf.len() as u64;
        self.pending.clear();
        self.unsynced.get_or_insert_with(Instant::now);
        if self.settings.fsync == Fsync::Batch || seal_file || epoch.is_some() {
            self.sync()?;
        }
        // The seal is on disk: only now may its key go.
        if epoch.is_some()
            && let Some(sealer) = &mut self.sealer
        {
            sealer.sealed();
        }
        for doomed in self.doomed.drain(..) {
            if let Err(err) = fs::remove_file(&doomed) {
                tracing::warn!(file = %doomed.display(), error = %err, "retention could not remove an audit file");
            }
        }
        if let Err(err) = files::write_head(
            &self.settings.dir,
            self.current.number,
            &self.head,
            self.ring_lost_accounted,
        ) {
            tracing::warn!(error = %err, "cannot update the audit store's HEAD");
        }
        Ok(())
    }

    /// Appends the seal an earlier writer's newest file still needs, if any.
    fn seal_earlier_file(&mut self) -> Result<(), StoreError> {
        let Some((file, seal)) = &mut self.unsealed else {
            return Ok(());
        };
        let mut head = self.head;
        let len = fs::metadata(&file.path)
            .map_err(|source| StoreError::Write {
                path: file.path.clone(),
                source,
            })?
            .len();
        let mut out = file_start(file.format, len).to_vec();
        batch_for(
            &mut Writer::new(file.format),
            &mut [seal],
            &mut head,
            &mut out,
        );
        append_to(&file.path, &out).map_err(|source| StoreError::Write {
            path: file.path.clone(),
            source,
        })?;
        self.head = head;
        self.unsealed = None;
        Ok(())
    }

    /// Writes an epoch seal when one is due and syncs written records to disk when the
    /// fsync interval says so (call it now and then); returns when the next of either is
    /// due, if one is. A seal that cannot be written is logged and tried again.
    pub fn tick(&mut self, now_ms: i64) -> Result<Option<Duration>, StoreError> {
        let seal_due = self.sealer.as_ref().map(Sealer::due_in);
        let seal_due = match seal_due {
            Some(due) if due.is_zero() => match self.commit(&mut [], None, now_ms, false) {
                Ok(()) => self.sealer.as_ref().map(Sealer::due_in),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot write the audit chain's epoch seal yet");
                    Some(Duration::from_secs(1))
                }
            },
            other => other,
        };
        let sync_due = match (self.settings.fsync, self.unsynced) {
            (Fsync::Interval(interval), Some(since)) => {
                let elapsed = since.elapsed();
                if elapsed >= interval {
                    self.sync()?;
                    None
                } else {
                    Some(interval - elapsed)
                }
            }
            _ => None,
        };
        Ok(match (seal_due, sync_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Forces everything written to disk.
    fn sync(&mut self) -> Result<(), StoreError> {
        if self.unsynced.take().is_some() {
            self.current
                .file
                .sync_data()
                .map_err(|source| StoreError::Write {
                    path: self.current.path.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Seals the current file, starts the next one and applies retention.
    fn rotate(&mut self, now_ms: i64) -> Result<(), StoreError> {
        if !self.current.sealed {
            self.commit(&mut [], None, now_ms, true)?;
            self.current.sealed = true;
        }
        let number = self.current.number + 1;
        self.current =
            create(&self.settings.dir, number, self.settings.format).map_err(|source| {
                StoreError::Dir {
                    dir: self.settings.dir.clone(),
                    source,
                }
            })?;
        self.pending.push(self.open_record(now_ms, "rotate"));
        self.retain(now_ms);
        Ok(())
    }

    /// Picks the oldest sealed files to remove (by total size, then by age) and queues a
    /// retention record naming them; they are removed once that record is written.
    fn retain(&mut self, now_ms: i64) {
        let Ok(segments) = files::segments(&self.settings.dir) else {
            return;
        };
        let sizes: Vec<u64> = segments
            .iter()
            .map(|file| fs::metadata(&file.path).map_or(0, |m| m.len()))
            .collect();
        let mut total: u64 = sizes.iter().sum();
        let max_age_ms = i64::try_from(self.settings.retain_age.as_millis()).unwrap_or(i64::MAX);
        let mut removed = Vec::new();
        for (file, size) in segments.iter().zip(&sizes) {
            if file.number >= self.current.number {
                break;
            }
            let Ok(Some((seal, seal_hash))) = files::seal_of(file) else {
                // An unsealed old file is evidence of something wrong: keep it.
                break;
            };
            let last_time = seal
                .unmapped
                .file
                .as_ref()
                .and_then(|f| f.last_time)
                .unwrap_or(seal.time);
            let too_old = now_ms.saturating_sub(last_time) > max_age_ms;
            if total <= self.settings.retain_bytes && !too_old {
                break;
            }
            total -= size;
            removed.push((file.clone(), seal.sequence(), seal_hash));
        }
        if removed.is_empty() {
            return;
        }
        let names: Vec<String> = removed
            .iter()
            .map(|(file, ..)| files::name_in(file.number, file.format))
            .collect();
        let mut record = Record::new(
            Kind::Retention,
            now_ms,
            &self.hostname,
            format!("retention removed {}", names.join(", ")),
        );
        record.unmapped.removed = Some(
            removed
                .iter()
                .map(|(file, last_sequence, seal_hash)| RemovedFile {
                    number: file.number,
                    last_sequence: *last_sequence,
                    seal_hash: hex::encode(seal_hash),
                })
                .collect(),
        );
        self.pending.push(record);
        self.doomed.extend(
            removed
                .into_iter()
                .map(|(SegmentFile { path, .. }, ..)| path),
        );
    }

    /// Seals the current file (at shutdown); the next start continues in a new file.
    pub fn close(mut self, now_ms: i64) -> Result<(), StoreError> {
        self.commit(&mut [], None, now_ms, true)
    }
}

/// Creates segment file `number` in `dir`, in `format`.
fn create(dir: &Path, number: u64, format: Format) -> io::Result<Current> {
    let path = dir.join(files::name_in(number, format));
    // Nothing is written yet: on a full disk the file's first bytes wait for the first
    // batch that fits.
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    Ok(Current {
        number,
        path,
        file,
        writer: Writer::new(format),
        len: 0,
        opened: Instant::now(),
        stats: FileStats::default(),
        sealed: false,
    })
}

/// What a file in `format` holding `len` bytes needs before its next batch: a compact
/// file's first bytes, when it has none yet.
fn file_start(format: Format, len: u64) -> &'static [u8] {
    match format {
        Format::Compact if len == 0 => compact::FILE_MAGIC,
        _ => &[],
    }
}

/// Appends `bytes` to the file at `path` whole or not at all (a failed write is cut
/// back), and syncs it.
fn append_to(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().append(true).open(path)?;
    let before = file.metadata()?.len();
    if let Err(err) = file.write_all(bytes).and_then(|()| file.sync_data()) {
        let _ = file.set_len(before);
        return Err(err);
    }
    Ok(())
}

/// The epoch of the newest forward-secure seal in the newest two of `files`, if any:
/// while sealing is on, every file seal follows an epoch seal, so the last one is in the
/// newest file or, when that one was cut short by a crash, in the file before. (A store
/// sealed for the first time has none, and is not read through to its oldest file.)
fn last_epoch(files: &[SegmentFile]) -> io::Result<Option<u64>> {
    for file in files.iter().rev().take(2) {
        let mut found = None;
        files::read_records(file, |stored| {
            if let Ok(stored) = stored
                && let Some(epoch) = stored.record.unmapped.epoch
            {
                found = Some(epoch.index);
            }
            true
        })?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// Where an earlier writer left the newest file.
struct Resumed {
    head: Head,
    /// Bytes of an incomplete last line, now cut off.
    torn_bytes: u64,
    /// The seal to append, when the file was not sealed.
    seal: Option<Record>,
}

/// What the records of the newest file say, for its seal and the chain's end.
#[derive(Default)]
struct Found {
    stats: FileStats,
    head: Option<Head>,
    sealed: bool,
    hostname: String,
}

impl Found {
    /// Takes in a record that parses; one that does not is the verifier's business, and
    /// the chain continues from the last one that does.
    fn add(&mut self, record: &Record, claimed: chain::Hash) {
        self.stats.add(record);
        self.sealed = record.unmapped.kind == Kind::Seal;
        self.hostname.clone_from(&record.device.hostname);
        self.head = Some(Head {
            sequence: record.sequence(),
            hash: claimed,
        });
    }
}

/// Reads the newest file of an earlier writer: cuts off a torn last record, finds the
/// chain's end and, when the file is unsealed, the seal it needs.
fn resume(last: &SegmentFile) -> io::Result<Resumed> {
    let bytes = fs::read(&last.path)?;
    let mut found = Found::default();
    let complete = match last.format {
        Format::Lines => {
            let complete = bytes
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |at| at + 1);
            files::Records::new(Format::Lines).read(&bytes[..complete], 0, |stored| {
                if let Ok(stored) = stored {
                    found.add(&stored.record, stored.claimed);
                }
                true
            });
            complete
        }
        Format::Compact => {
            let read = Decoder::default().read(&bytes, 0, |entry| {
                if let Ok(record) = entry.record() {
                    found.add(&record, entry.claimed);
                }
                true
            });
            match read {
                // Past the last complete batch: what follows is a torn one.
                Ok(end) => usize::try_from(end).unwrap_or(bytes.len()),
                // Damage is the verifier's business: nothing is cut.
                Err(_) => bytes.len(),
            }
        }
    };
    // A compact file torn before its first bytes were all there starts again empty.
    let complete = if last.format == Format::Compact && complete < compact::FILE_MAGIC.len() {
        0
    } else {
        complete
    };
    let torn_bytes = (bytes.len() - complete) as u64;
    if torn_bytes > 0 {
        OpenOptions::new()
            .write(true)
            .open(&last.path)?
            .set_len(complete as u64)?;
    }
    let head = found.head.unwrap_or(Head::GENESIS);
    let name = files::name_in(last.number, last.format);
    let seal = (!found.sealed).then(|| {
        found.stats.seal(
            (last.number, &name),
            found.stats.last_time,
            &found.hostname,
            " at restart",
        )
    });
    Ok(Resumed {
        head,
        torn_bytes,
        seal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::Gap;

    const NOW: i64 = 1_700_000_000_000;

    fn settings(dir: &Path) -> StoreSettings {
        StoreSettings {
            dir: dir.to_owned(),
            rotate_bytes: 1 << 20,
            rotate_age: Duration::from_secs(3600),
            retain_bytes: u64::MAX,
            retain_age: Duration::from_secs(86_400),
            fsync: Fsync::Never,
            format: Format::Compact,
        }
    }

    /// Every record in the store's files, in order.
    fn stored(dir: &Path) -> Vec<Record> {
        files::stored_lines(dir)
            .iter()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn a_file_seal_counts_its_records_flows_and_losses() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(settings(dir.path()), "host-a", NOW, None).unwrap();
        let mut gap = Record::new(Kind::Gap, NOW, "host-a", "5 lost".into());
        gap.unmapped.gap = Some(Gap {
            lost: 5,
            cause: "ring-full".into(),
            error: None,
        });
        let mut records = vec![
            Record::example_flow("deny", ("tcp", 6), 5432),
            Record::example_flow("allow", ("tcp", 6), 80),
            gap,
            Record::example_flow("audit", ("udp", 17), 53),
        ];
        store.write(&mut records, NOW).unwrap();
        store.close(NOW + 1).unwrap();

        let records = stored(dir.path());
        let seal = records.last().unwrap();
        assert_eq!(seal.unmapped.kind, Kind::Seal, "{seal:?}");
        let file = seal.unmapped.file.as_ref().unwrap();
        assert_eq!(file.flows, Some(3), "{file:?}");
        assert_eq!(file.lost, Some(5), "{file:?}");
        // Every record before the seal, the file's opening record included.
        assert_eq!(file.records, Some(records.len() as u64 - 1), "{file:?}");
        assert_eq!(file.first_sequence, Some(records[0].sequence()));
    }

    #[test]
    fn a_reopened_store_knows_whether_its_last_writer_sealed_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(settings(dir.path()), "host-a", NOW, None).unwrap();
        assert!(!store.recovered(), "a new store recovered nothing");
        store.close(NOW).unwrap();
        let mut store = Store::open(settings(dir.path()), "host-a", NOW, None).unwrap();
        assert!(!store.recovered(), "the last writer sealed the store");
        store
            .write(&mut [Record::example_flow("deny", ("tcp", 6), 22)], NOW)
            .unwrap();
        // A kill: the writer ends without sealing its file.
        drop(store);
        let store = Store::open(settings(dir.path()), "host-a", NOW, None).unwrap();
        assert!(store.recovered(), "the last writer was killed");
    }
}
