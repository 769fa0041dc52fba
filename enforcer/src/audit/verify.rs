//! `enforcer audit verify`: walks a store's chain from its first file to `HEAD` and names
//! the first record that does not fit: an edited record (its hash), a deleted, inserted
//! or reordered one (sequence numbers and `prev` links), a truncated file (no seal, or
//! fewer records than its seal or `HEAD` say), a removed file (numbering, or a first
//! file no retention record accounts for) and a chain rewritten up to its end (the record
//! `HEAD` names has another hash or is in another file than `HEAD` says).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{
    chain::{self, GENESIS, Hash},
    compact::{Decoder, FlowView, FormatError},
    files::{self, Format, SegmentFile},
    ordered,
    record::{FileSummary, FlowNames, Kind, Record, rfc3339},
    seal::{SealingKey, VerifyKey},
};
use crate::digest::{finish, hasher};

/// What proves the seals beyond the chain itself.
#[derive(Debug, Clone, Default)]
pub struct Proof {
    /// The verification key (`enforcer audit setup-keys`): every epoch seal is checked
    /// under its epoch's key.
    pub verify_key: Option<VerifyKey>,
    /// The host's current sealing key: it is never behind the store's last seal, so a
    /// store whose sealed end was cut off shows.
    pub host_key: Option<SealingKey>,
}

/// The forward-secure seals of an intact store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Sealing {
    /// Epoch seals found.
    pub seals: u64,
    /// The first seal's epoch.
    pub first_epoch: u64,
    /// The last seal's epoch.
    pub last_epoch: u64,
    /// Whether each seal was checked under its epoch's key (a verification key was given).
    pub proven: bool,
    /// The last record a seal covers.
    pub sealed_through: u64,
    /// The last seal's own sequence number.
    pub last_seal_sequence: u64,
    /// When the last seal was written (ms since the epoch).
    pub last_sealed_at: i64,
    /// Records after the last seal, which no seal covers yet.
    pub unsealed_records: u64,
}

/// The first place the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    /// The file.
    pub file: PathBuf,
    /// The line (from 1); 0 when the problem is the file as a whole.
    pub line: usize,
    /// The sequence number the record claims, when it has one.
    pub sequence: Option<u64>,
    /// What is wrong.
    pub why: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(sequence) = self.sequence {
            write!(f, " (record {sequence})")?;
        }
        write!(f, ": {}", self.why)
    }
}

/// An intact store, summarised.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Segment files checked.
    pub files: u64,
    /// Records checked.
    pub records: u64,
    /// Flow records among them.
    pub flows: u64,
    /// Events the gap records count as lost.
    pub lost: u64,
    /// The first record's sequence number.
    pub first_sequence: u64,
    /// The last record's sequence number.
    pub last_sequence: u64,
    /// Files before the first one that retention removed (as its records say).
    pub removed_by_retention: u64,
    /// The forward-secure seals, when the store has any.
    pub sealing: Option<Sealing>,
}

/// The outcome of a verification.
pub type Outcome = Result<Summary, Break>;

/// An epoch seal found in a file walked alone, and the record before it (its sequence
/// number and hash).
type EpochSeen = (Record, Option<(u64, Hash)>);

/// Where the walk stands.
#[derive(Clone)]
struct Walk {
    summary: Summary,
    /// The previous record's sequence number and hash.
    last: Option<(u64, Hash)>,
    /// Retention records seen: removed file number → (last sequence, seal hash).
    removed: BTreeMap<u64, (u64, String)>,
    /// The sequence number `HEAD` names, if there is a `HEAD`.
    head_sequence: Option<u64>,
    /// Where the record `HEAD` names was found: its file's number and path, its line and
    /// its hash.
    head_record: Option<(u64, PathBuf, usize, Hash)>,
    /// The seals so far.
    sealing: Option<Sealing>,
    /// The key of the epoch checked last, derived from the verification key.
    key: Option<SealingKey>,
    /// When the walk is one file's own (on a core of its own, not knowing the files
    /// before it): the file's epoch seals, each with the record before it, checked when
    /// the file is linked to the chain before it.
    epochs: Option<Vec<EpochSeen>>,
}

impl Walk {
    /// A walk of one file alone, starting from nothing.
    fn of_one_file(head_sequence: Option<u64>) -> Self {
        Self {
            summary: Summary::default(),
            last: None,
            removed: BTreeMap::new(),
            head_sequence,
            head_record: None,
            sealing: None,
            key: None,
            epochs: Some(Vec::new()),
        }
    }
}

/// Verifies the store in `dir`, its seals with what `proof` holds.
pub fn verify(dir: &Path, proof: &Proof) -> Result<Outcome, std::io::Error> {
    let segments = files::segments(dir)?;
    let head = files::read_head(dir)?;
    let mut walk = Walk {
        summary: Summary::default(),
        last: None,
        removed: BTreeMap::new(),
        head_sequence: head.as_ref().map(|head| head.sequence),
        head_record: None,
        sealing: None,
        key: proof.verify_key.as_ref().map(VerifyKey::first),
        epochs: None,
    };
    let Some(first) = segments.first() else {
        return Ok(Err(match head {
            Some(head) => Break {
                file: dir.join(files::HEAD_FILE),
                line: 0,
                sequence: Some(head.sequence),
                why: format!(
                    "HEAD names record {} in {} but the store has no files: they were removed",
                    head.sequence,
                    files::segment_name(head.file)
                ),
            },
            None => Break {
                file: dir.to_owned(),
                line: 0,
                sequence: None,
                why: "the store is empty: no record files and no HEAD (an agent writes a record as it starts, so everything was removed, or this is not a store)".to_owned(),
            },
        }));
    };
    let mut first_prev = None;
    if let Err(broken) = walk_files(dir, &segments, &mut walk, &mut first_prev) {
        return Ok(Err(broken));
    }

    // The first file either starts the chain or follows a file retention removed.
    let Some((first_sequence, prev)) = first_prev else {
        // Only the newest file may be empty (a writer that has not got its first batch
        // on disk yet), so the store has that one file and no record.
        return Ok(Err(Break {
            file: first.path.clone(),
            line: 0,
            sequence: None,
            why: "the store holds no record: its only file is empty (an agent writes a record as it starts, so it never wrote one, or the file was emptied)".to_owned(),
        }));
    };
    if first.number != 1 || prev != GENESIS {
        let accounted = walk
            .removed
            .get(&(first.number - 1))
            .is_some_and(|(last, hash)| *last + 1 == first_sequence && *hash == prev);
        if first.number == 1 || !accounted {
            return Ok(Err(Break {
                file: first.path.clone(),
                line: 1,
                sequence: Some(first_sequence),
                why: format!(
                    "the store's first record follows a record that is not here, and no retention record accounts for {}",
                    files::segment_name(first.number.saturating_sub(1))
                ),
            }));
        }
        walk.summary.removed_by_retention = first.number - 1;
    }
    walk.summary.first_sequence = first_sequence;

    if let Some(head) = head {
        let last = walk.last.map_or(0, |(sequence, _)| sequence);
        let last_file = segments.last().expect("there are files");
        if head.sequence > last || head.file > last_file.number {
            return Ok(Err(Break {
                file: last_file.path.clone(),
                line: 0,
                sequence: Some(last),
                why: format!(
                    "the store ends at record {last} but HEAD says record {} in {} was written: records were cut off",
                    head.sequence,
                    files::segment_name(head.file)
                ),
            }));
        }
        if let Err(broken) = check_head(&head, &walk, &first.path, first_sequence) {
            return Ok(Err(broken));
        }
    } else {
        let last_file = segments.last().expect("there are files");
        return Ok(Err(Break {
            file: dir.join(files::HEAD_FILE),
            line: 0,
            sequence: None,
            why: format!(
                "HEAD is missing: the writer keeps it beside the files, so it was removed, and with it the proof of where the store ends (the files end at record {} in {})",
                walk.summary.last_sequence,
                files::segment_name(last_file.number)
            ),
        }));
    }
    if let Some(sealing) = &mut walk.sealing {
        sealing.proven = proof.verify_key.is_some();
        sealing.unsealed_records = walk.summary.last_sequence - sealing.last_seal_sequence;
    }
    if let Some(host_key) = &proof.host_key
        && let Err(broken) = check_host_key(host_key, proof, &walk, dir)
    {
        return Ok(Err(broken));
    }
    walk.summary.sealing = walk.sealing;
    Ok(Ok(walk.summary))
}

/// The host's sealing key is the one after the store's last seal: the agent moves it
/// forward after every seal and never back. A key further ahead means the seals in
/// between, and the records they covered, were cut off the store's end; a key the
/// verification key does not derive was replaced.
fn check_host_key(
    host_key: &SealingKey,
    proof: &Proof,
    walk: &Walk,
    dir: &Path,
) -> Result<(), Break> {
    let broken = |why: String| Break {
        file: dir.to_owned(),
        line: 0,
        sequence: Some(walk.summary.last_sequence),
        why,
    };
    if let Some(verify_key) = &proof.verify_key {
        let mut derived = verify_key.first();
        derived.advance_to(host_key.index());
        if &derived != host_key {
            return Err(broken(format!(
                "the host's sealing key (epoch {}) is not derived from this verification key: it was replaced, or belongs to another store",
                host_key.index()
            )));
        }
    }
    let expected = walk.sealing.as_ref().map_or(0, |s| s.last_epoch + 1);
    if host_key.index() > expected {
        let since = walk.sealing.as_ref().map_or_else(
            || "the store's start".to_owned(),
            |s| {
                format!(
                    "epoch {} sealed at {}",
                    s.last_epoch,
                    time_text(s.last_sealed_at)
                )
            },
        );
        return Err(broken(format!(
            "the host's sealing key is at epoch {} but the store's last seal is {}: the seals of epochs {expected}..={} and the records they covered were cut off the store's end (after {since})",
            host_key.index(),
            walk.sealing
                .as_ref()
                .map_or_else(|| "none".to_owned(), |s| format!("epoch {}", s.last_epoch)),
            host_key.index() - 1,
        )));
    }
    Ok(())
}

/// A record time for people.
fn time_text(ms: i64) -> String {
    rfc3339(ms).unwrap_or_else(|| format!("{ms} ms"))
}

/// The record `HEAD` names (the chain's end when the writer last updated `HEAD`, at most
/// a few records before the store's end) must be in the file `HEAD` says, with the hash
/// `HEAD` says: a chain rewritten from some record to its end, every hash and link
/// recomputed, still ends in another hash.
fn check_head(
    head: &files::HeadRecord,
    walk: &Walk,
    first_path: &Path,
    first_sequence: u64,
) -> Result<(), Break> {
    let Some((file, path, line, hash)) = &walk.head_record else {
        return Err(Break {
            file: first_path.to_owned(),
            line: 1,
            sequence: Some(first_sequence),
            why: format!(
                "HEAD names record {} but the store starts at record {first_sequence}",
                head.sequence
            ),
        });
    };
    let broken = |why: String| Break {
        file: path.clone(),
        line: *line,
        sequence: Some(head.sequence),
        why,
    };
    if hex::encode(hash) != head.hash {
        return Err(broken(format!(
            "record {} is not the one HEAD names: its hash is {} but HEAD says {}: the chain was rewritten",
            head.sequence,
            hex::encode(hash),
            head.hash
        )));
    }
    if *file != head.file {
        return Err(broken(format!(
            "HEAD says record {} is in {}: files were renumbered",
            head.sequence,
            files::segment_name(head.file)
        )));
    }
    Ok(())
}

/// Checks the epoch seal `record` against the one before it (epochs follow one another:
/// the agent seals every epoch it holds a key for) and, with a verification key, its tag
/// under its epoch's key over the record before it.
fn check_epoch(record: &Record, walk: &mut Walk) -> Result<(), String> {
    let sequence = record.sequence();
    let Some(epoch) = &record.unmapped.epoch else {
        return Err("an epoch seal without its epoch and tag".to_owned());
    };
    if let Some(before) = &walk.sealing
        && epoch.index != before.last_epoch + 1
    {
        return Err(if epoch.index <= before.last_epoch {
            format!(
                "the seal of epoch {} follows the seal of epoch {}: seals were reordered or replayed",
                epoch.index, before.last_epoch
            )
        } else {
            format!(
                "the seal of epoch {} follows the seal of epoch {}: the seals of epochs {}..={} are missing, and with them the records written between {} and {}",
                epoch.index,
                before.last_epoch,
                before.last_epoch + 1,
                epoch.index - 1,
                time_text(before.last_sealed_at),
                time_text(record.time)
            )
        });
    }
    if let Some(key) = &mut walk.key {
        if key.index() > epoch.index {
            return Err(format!(
                "the seal of epoch {} comes after a later epoch's: seals were reordered",
                epoch.index
            ));
        }
        key.advance_to(epoch.index);
        let (covered, hash) = walk.last.unwrap_or((0, [0; 32]));
        if hex::encode(key.tag(covered, &hash, record.time)) != epoch.tag {
            let since = walk.sealing.as_ref().map_or_else(
                || "the store's start".to_owned(),
                |s| time_text(s.last_sealed_at),
            );
            return Err(format!(
                "the seal of epoch {} does not prove the chain up to record {covered}: records written before {} (since {since}, or earlier) were altered, removed or reordered and the chain recomputed, or the seal was forged",
                epoch.index,
                time_text(record.time)
            ));
        }
    }
    let sealing = walk.sealing.get_or_insert(Sealing {
        first_epoch: epoch.index,
        ..Sealing::default()
    });
    sealing.seals += 1;
    sealing.last_epoch = epoch.index;
    sealing.sealed_through = sequence.saturating_sub(1);
    sealing.last_seal_sequence = sequence;
    sealing.last_sealed_at = record.time;
    Ok(())
}

/// Walks every file in order. Each file is first walked alone, on every core, then
/// linked to the chain before it (its first record to the last one before, its epoch
/// seals to the seals before); a file that breaks alone or does not link is walked again
/// in the chain's own walk, which names the first broken record exactly as a walk of
/// file after file does.
fn walk_files(
    dir: &Path,
    segments: &[SegmentFile],
    walk: &mut Walk,
    first_prev: &mut Option<(u64, String)>,
) -> Result<(), Break> {
    let first = segments.first().map_or(0, |segment| segment.number);
    let last = segments.last().map_or(0, |segment| segment.number);
    let numbered: Vec<(u64, &SegmentFile)> = (first..).zip(segments).collect();
    let head_sequence = walk.head_sequence;
    let mut outcome = Ok(());
    ordered::for_each_in_order(
        &numbered,
        |&(expected_number, segment), emit| {
            let alone = (segment.number == expected_number).then(|| {
                let is_last = segment.number == last;
                let mut alone = Walk::of_one_file(head_sequence);
                let mut alone_first = None;
                walk_file(segment, is_last, &mut alone, &mut alone_first)
                    .is_ok()
                    .then_some((alone, alone_first))
            });
            emit((expected_number, segment, alone));
        },
        |(expected_number, segment, alone)| {
            outcome = match alone {
                None => Err(missing(dir, segment, expected_number)),
                Some(alone) => link(segment, segment.number == last, alone, walk, first_prev),
            };
            outcome.is_ok()
        },
    );
    outcome
}

/// The break of a file missing before `segment`, where `expected_number` belongs.
fn missing(dir: &Path, segment: &SegmentFile, expected_number: u64) -> Break {
    Break {
        file: dir.join(files::name_in(expected_number, segment.format)),
        line: 0,
        sequence: None,
        why: format!(
            "the file is missing: {} follows {}",
            files::segment_name(segment.number),
            files::segment_name(expected_number - 1)
        ),
    }
}

/// Adds `segment`, walked `alone` (`None` when it broke alone), to the chain's walk; walks
/// it again in the chain's walk when it broke or does not link.
fn link(
    segment: &SegmentFile,
    is_last: bool,
    alone: Option<(Walk, Option<(u64, String)>)>,
    walk: &mut Walk,
    first_prev: &mut Option<(u64, String)>,
) -> Result<(), Break> {
    let before = walk.clone();
    if let Some((alone, alone_first)) = alone
        && join(walk, alone, alone_first.as_ref(), first_prev).is_ok()
    {
        return Ok(());
    }
    *walk = before;
    walk_file(segment, is_last, walk, first_prev)
}

/// Joins one file's own walk to the chain's: `Err` when its first record does not follow
/// the chain's last or one of its epoch seals does not follow the seals before it.
fn join(
    walk: &mut Walk,
    alone: Walk,
    alone_first: Option<&(u64, String)>,
    first_prev: &mut Option<(u64, String)>,
) -> Result<(), ()> {
    if let (Some((last, hash)), Some((sequence, prev))) = (walk.last, alone_first)
        && (*sequence != last + 1 || !names_hash(prev, &hash))
    {
        return Err(());
    }
    for (epoch, covered) in alone.epochs.iter().flatten() {
        walk.last = *covered;
        check_epoch(epoch, walk).map_err(|_| ())?;
    }
    if first_prev.is_none() {
        *first_prev = alone_first.cloned();
    }
    let (summary, more) = (&mut walk.summary, alone.summary);
    summary.files += more.files;
    summary.records += more.records;
    summary.flows += more.flows;
    summary.lost += more.lost;
    if more.records > 0 {
        summary.last_sequence = more.last_sequence;
    }
    walk.last = alone.last.or(walk.last);
    walk.removed.extend(alone.removed);
    if alone.head_record.is_some() {
        walk.head_record = alone.head_record;
    }
    Ok(())
}

/// Whether `prev` is `hash` written as the chain writes it (64 lowercase hex digits).
fn names_hash(prev: &str, hash: &Hash) -> bool {
    let mut digits = [0_u8; 64];
    hex::encode_to_slice(hash, &mut digits).expect("64 digits hold 32 bytes");
    prev.as_bytes() == digits
}

/// One line taken apart for the walk: a flow (the most of a store) parsed only as far as
/// the walk needs, any other record whole.
enum Line<'a> {
    /// A flow.
    Flow(FlowLine<'a>),
    /// A flow of a compact file, read in place; its sequence number and `prev`.
    Compact(FlowView<'a>, u64, Hash),
    /// Any other record.
    Other(Box<Record>),
}

/// What the walk needs of a flow's line (the rest is hashed, not parsed).
#[derive(serde::Deserialize)]
struct FlowLine<'a> {
    metadata: SequenceOnly,
    #[serde(borrow, default)]
    connection_info: Option<ProtocolOnly<'a>>,
    #[serde(borrow)]
    unmapped: FlowUnmapped<'a>,
}

#[derive(serde::Deserialize)]
struct SequenceOnly {
    sequence: u64,
}

#[derive(serde::Deserialize)]
struct ProtocolOnly<'a> {
    protocol_num: u32,
    #[serde(borrow, default)]
    protocol_name: std::borrow::Cow<'a, str>,
}

#[derive(serde::Deserialize)]
struct FlowUnmapped<'a> {
    kind: Kind,
    #[serde(borrow)]
    flow: FlowNamesOnly<'a>,
    #[serde(borrow)]
    prev: std::borrow::Cow<'a, str>,
}

#[derive(serde::Deserialize)]
struct FlowNamesOnly<'a> {
    #[serde(borrow)]
    verdict: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    reason: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    rule: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    src_segment: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    dst_segment: std::borrow::Cow<'a, str>,
}

impl Line<'_> {
    fn sequence(&self) -> u64 {
        match self {
            Self::Flow(flow) => flow.metadata.sequence,
            Self::Compact(_, sequence, _) => *sequence,
            Self::Other(record) => record.sequence(),
        }
    }

    /// The `prev` it names, as written in JSON.
    fn prev(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Self::Flow(flow) => flow.unmapped.prev.as_ref().into(),
            Self::Compact(_, _, prev) => hex::encode(prev).into(),
            Self::Other(record) => record.unmapped.prev.as_str().into(),
        }
    }

    /// Whether its `prev` is `hash`.
    fn follows(&self, hash: &Hash) -> bool {
        match self {
            Self::Compact(_, _, prev) => prev == hash,
            _ => names_hash(&self.prev(), hash),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Self::Flow(_) | Self::Compact(..) => Kind::Flow,
            Self::Other(record) => record.unmapped.kind,
        }
    }

    /// The whole record, for any but a flow.
    fn whole(&self) -> Option<&Record> {
        match self {
            Self::Flow(_) | Self::Compact(..) => None,
            Self::Other(record) => Some(record),
        }
    }

    fn add_to(&self, summary: &mut FileSummary) {
        match self {
            Self::Flow(line) => {
                let flow = &line.unmapped.flow;
                summary.add_flow(&FlowNames {
                    src_segment: &flow.src_segment,
                    dst_segment: &flow.dst_segment,
                    decided_by: flow.rule.as_deref().unwrap_or(&flow.reason),
                    verdict: &flow.verdict,
                    protocol: line
                        .connection_info
                        .as_ref()
                        .map(|info| (&*info.protocol_name, info.protocol_num)),
                });
            }
            Self::Compact(flow, ..) => {
                let (src_segment, dst_segment) = flow.segments().unwrap_or_default();
                let reason = flow.reason().unwrap_or_default();
                summary.add_flow(&FlowNames {
                    src_segment,
                    dst_segment,
                    decided_by: flow.rule().unwrap_or(reason),
                    verdict: flow.verdict().unwrap_or_default(),
                    protocol: flow.protocol(),
                });
            }
            Self::Other(record) => summary.add(record),
        }
    }
}

/// Takes a line apart as [`chain::check`] does: the record, the hash it claims and the
/// hash of its content. A flow's line is parsed only as far as the walk needs when it
/// can be; anything else (and any line that does not parse so) goes through
/// [`chain::check`], whose errors name what is wrong.
fn take_apart(line: &str) -> Result<(Line<'_>, Hash, Hash), chain::LineError> {
    if let Some(claimed) = chain::claimed_hash(line)
        && let Ok(flow) = serde_json::from_str::<FlowLine<'_>>(line)
        && flow.unmapped.kind == Kind::Flow
    {
        let mut hasher = hasher();
        hasher.update(&line.as_bytes()[..line.len() - chain::SUFFIX_LEN]);
        hasher.update(b"}}");
        return Ok((Line::Flow(flow), claimed, finish(hasher)));
    }
    let checked = chain::check(line)?;
    Ok((
        Line::Other(Box::new(checked.record)),
        checked.claimed,
        checked.actual,
    ))
}

fn walk_file(
    segment: &SegmentFile,
    is_last: bool,
    walk: &mut Walk,
    first_prev: &mut Option<(u64, String)>,
) -> Result<(), Break> {
    let broken = |line: usize, sequence: Option<u64>, why: String| Break {
        file: segment.path.clone(),
        line,
        sequence,
        why,
    };
    let bytes = fs::read(&segment.path).map_err(|err| broken(0, None, err.to_string()))?;
    let mut file = FileWalk {
        segment,
        in_file: 0,
        last_kind: None,
        summary: FileSummary::default(),
    };
    if segment.format == Format::Compact {
        let mut failed = None;
        let read = Decoder::default().read(&bytes, 0, |entry| {
            let record = match entry.flow() {
                Some(flow) => Line::Compact(flow, entry.sequence, entry.prev),
                None => match entry.record() {
                    Ok(record) => Line::Other(Box::new(record)),
                    Err(why) => {
                        failed = Some(broken(entry.number, Some(entry.sequence), why));
                        return false;
                    }
                },
            };
            match file.step(
                walk,
                first_prev,
                entry.number,
                (record, entry.claimed, entry.actual),
                &|_| None,
            ) {
                Ok(()) => true,
                Err(err) => {
                    failed = Some(err);
                    false
                }
            }
        });
        if let Some(failed) = failed {
            return Err(failed);
        }
        match read {
            Ok(end) if end == bytes.len() as u64 => {}
            Ok(_) => {
                return Err(broken(
                    usize::try_from(file.in_file).unwrap_or(0) + 1,
                    None,
                    "the last batch of records is incomplete: the file was truncated".to_owned(),
                ));
            }
            Err(err) => {
                let number = match &err {
                    FormatError::Entry { number, .. } => *number,
                    _ => usize::try_from(file.in_file).unwrap_or(0) + 1,
                };
                return Err(broken(number, None, err.to_string()));
            }
        }
        return file.finish(walk, is_last, usize::try_from(file.in_file).unwrap_or(0));
    }
    let text = String::from_utf8(bytes)
        .map_err(|err| broken(0, None, format!("not UTF-8 text: {err}")))?;
    if !text.is_empty() && !text.ends_with('\n') {
        let line = text.lines().count();
        return Err(broken(
            line,
            None,
            "the last record is incomplete: the file was truncated".to_owned(),
        ));
    }
    // Where a record that comes too late is, when it is later in the file.
    let moved = |after: usize, expected: u64| {
        text.lines()
            .enumerate()
            .skip(after)
            .find(|(_, later)| chain::check(later).is_ok_and(|c| c.record.sequence() == expected))
            .map(|(at, _)| at + 1)
    };
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let taken = take_apart(line).map_err(|err| broken(number, None, format!("{err}")))?;
        file.step(walk, first_prev, number, taken, &|expected| {
            moved(number, expected)
        })?;
    }
    file.finish(walk, is_last, text.lines().count())
}

/// One file's walk so far.
struct FileWalk<'a> {
    segment: &'a SegmentFile,
    /// Records so far.
    in_file: u64,
    last_kind: Option<Kind>,
    /// What the file's flows so far name, for its seal's summary.
    summary: FileSummary,
}

impl FileWalk<'_> {
    fn broken(&self, line: usize, sequence: Option<u64>, why: String) -> Break {
        Break {
            file: self.segment.path.clone(),
            line,
            sequence,
            why,
        }
    }

    /// Checks the file's record at position `number` (its line, or its place in a
    /// compact file), taken apart; `moved` finds where in the file a record of a given
    /// sequence number is, when it can be looked for.
    fn step(
        &mut self,
        walk: &mut Walk,
        first_prev: &mut Option<(u64, String)>,
        number: usize,
        (record, claimed, actual): (Line<'_>, Hash, Hash),
        moved: &dyn Fn(u64) -> Option<usize>,
    ) -> Result<(), Break> {
        let segment = self.segment;
        let in_file = self.in_file;
        let sequence = record.sequence();
        if claimed != actual {
            return Err(self.broken(
                number,
                Some(sequence),
                "the record was altered: its content does not match its hash".to_owned(),
            ));
        }
        if walk.head_sequence == Some(sequence) {
            walk.head_record = Some((segment.number, segment.path.clone(), number, claimed));
        }
        match walk.last {
            None => *first_prev = Some((sequence, record.prev().into_owned())),
            Some((last, hash)) => {
                if sequence <= last {
                    return Err(self.broken(
                        number,
                        Some(sequence),
                        format!(
                            "record {sequence} comes after record {last}: records were inserted or reordered"
                        ),
                    ));
                }
                if sequence > last + 1 {
                    let expected = last + 1;
                    return Err(self.broken(
                        number,
                        Some(sequence),
                        match moved(expected) {
                            Some(at) => format!(
                                "record {sequence} comes where record {expected} belongs, which is at line {at}: records were reordered"
                            ),
                            None => format!(
                                "records {}..={} are missing after record {last}: they were deleted",
                                expected,
                                sequence - 1
                            ),
                        },
                    ));
                }
                if !record.follows(&hash) {
                    return Err(self.broken(
                        number,
                        Some(sequence),
                        format!(
                            "record {sequence} does not follow record {last}: its `prev` is another record's hash (a record was replaced or inserted)"
                        ),
                    ));
                }
            }
        }
        let whole = record.whole();
        if number == 1 {
            let opens_this_file = record.kind() == Kind::Open
                && whole
                    .and_then(|record| record.unmapped.file.as_ref())
                    .is_some_and(|file| file.number == segment.number);
            if !opens_this_file {
                return Err(self.broken(
                    number,
                    Some(sequence),
                    "the file does not start with its own open record".to_owned(),
                ));
            }
        }
        let file_details = whole.and_then(|record| record.unmapped.file.as_ref());
        if record.kind() == Kind::Seal {
            let claimed = file_details.and_then(|file| file.records);
            if claimed != Some(in_file) {
                return Err(self.broken(
                    number,
                    Some(sequence),
                    format!(
                        "the seal counts {} records but the file has {in_file} before it",
                        claimed.unwrap_or(0)
                    ),
                ));
            }
            if let Some(claimed) = file_details.and_then(|file| file.summary.as_ref())
                && *claimed != self.summary
            {
                return Err(self.broken(
                    number,
                    Some(sequence),
                    "the seal's summary of the file's flows (segments, rules, verdicts, protocols) does not match the flows before it".to_owned(),
                ));
            }
        }
        if let Some(epoch) = whole.filter(|record| record.unmapped.kind == Kind::Epoch) {
            match &mut walk.epochs {
                // Checked when the file is linked to the seals before it.
                Some(epochs) => epochs.push((epoch.clone(), walk.last)),
                None => {
                    check_epoch(epoch, walk)
                        .map_err(|why| self.broken(number, Some(sequence), why))?;
                }
            }
        }
        record.add_to(&mut self.summary);
        match (record.kind(), whole) {
            (Kind::Flow, _) => walk.summary.flows += 1,
            (Kind::Gap, Some(record)) => {
                walk.summary.lost += record.unmapped.gap.as_ref().map_or(0, |gap| gap.lost);
            }
            (Kind::Retention, Some(record)) => {
                for removed in record.unmapped.removed.iter().flatten() {
                    walk.removed.insert(
                        removed.number,
                        (removed.last_sequence, removed.seal_hash.clone()),
                    );
                }
            }
            _ => {}
        }
        if self.last_kind == Some(Kind::Seal) {
            return Err(self.broken(
                number,
                Some(sequence),
                "a record follows the file's seal".to_owned(),
            ));
        }
        walk.summary.records += 1;
        walk.summary.last_sequence = sequence;
        walk.last = Some((sequence, claimed));
        self.last_kind = Some(record.kind());
        self.in_file += 1;
        Ok(())
    }

    /// Checks how the file ends, `records` being its last record's position.
    fn finish(&self, walk: &mut Walk, is_last: bool, records: usize) -> Result<(), Break> {
        walk.summary.files += 1;
        let sealed = self.last_kind == Some(Kind::Seal);
        if self.last_kind.is_none() {
            if is_last {
                return Ok(());
            }
            return Err(self.broken(0, None, "the file is empty".to_owned()));
        }
        if !is_last && !sealed {
            return Err(self.broken(
                records,
                walk.last.map(|(sequence, _)| sequence),
                "the file ends without its seal: it was truncated".to_owned(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::audit::{
        record::Gap,
        seal::Sealer,
        store::{Fsync, Store, StoreSettings},
    };

    fn settings(dir: &Path, rotate_bytes: u64) -> StoreSettings {
        StoreSettings {
            dir: dir.to_owned(),
            rotate_bytes,
            rotate_age: Duration::from_secs(3600),
            retain_bytes: u64::MAX,
            retain_age: Duration::from_secs(86_400 * 365),
            fsync: Fsync::Never,
            format: Format::Lines,
        }
    }

    fn gap(n: u64) -> Record {
        gap_at(n, 1_000 + n as i64)
    }

    /// A `ring-full` gap of `n` events at `time`.
    fn gap_at(n: u64, time: i64) -> Record {
        let mut record = Record::new(Kind::Gap, time, "host-a", format!("gap {n}"));
        record.unmapped.gap = Some(Gap {
            lost: n,
            cause: "ring-full".to_owned(),
            error: None,
        });
        record
    }

    /// A store of three files (two sealed) of 30 gap records written in batches of 3.
    fn store(dir: &Path) {
        let mut store = Store::open(settings(dir, 2_000), "host-a", 1_000, None).unwrap();
        for batch in 0..10 {
            let mut records: Vec<Record> = (0..3).map(|i| gap(batch * 3 + i + 1)).collect();
            store.write(&mut records, 2_000).unwrap();
        }
        assert!(files::segments(dir).unwrap().len() >= 3);
    }

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        fs::write(
            path,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
    }

    fn first_break(dir: &Path) -> Break {
        verify(dir, &Proof::default())
            .unwrap()
            .expect_err("the tampering is detected")
    }

    fn second_file(dir: &Path) -> PathBuf {
        files::segments(dir).unwrap()[1].path.clone()
    }

    #[test]
    fn an_untouched_store_verifies_clean_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path());
        let summary = verify(dir.path(), &Proof::default()).unwrap().unwrap();
        assert_eq!(summary.lost, (1..=30).sum::<u64>());
        // A restart seals the newest file and continues the chain in a new one.
        let mut again = Store::open(settings(dir.path(), 2_000), "host-a", 3_000, None).unwrap();
        again.write(&mut [gap(5)], 3_000).unwrap();
        again.close(3_000).unwrap();
        let summary = verify(dir.path(), &Proof::default()).unwrap().unwrap();
        assert_eq!(summary.lost, (1..=30).sum::<u64>() + 5);
        assert_eq!(summary.first_sequence, 1);
        assert_eq!(summary.last_sequence, summary.records);
    }

    #[test]
    fn an_edited_field_is_named() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path());
        let path = second_file(dir.path());
        let mut content = lines(&path);
        content[2] = content[2].replacen("\"lost\":", "\"lost\":1", 1);
        write_lines(&path, &content);
        let broken = first_break(dir.path());
        assert_eq!((broken.file.clone(), broken.line), (path, 3));
        assert!(broken.why.contains("altered"), "{broken}");
    }

    #[test]
    fn a_deleted_record_is_named() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path());
        let path = second_file(dir.path());
        let mut content = lines(&path);
        content.remove(2);
        write_lines(&path, &content);
        let broken = first_break(dir.path());
        assert_eq!(broken.line, 3);
        assert!(broken.why.contains("deleted"), "{broken}");
    }

    #[test]
    fn an_inserted_record_is_named() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path());
        let path = second_file(dir.path());
        let mut content = lines(&path);
        let copy = content[1].clone();
        content.insert(3, copy);
        write_lines(&path, &content);
        let broken = first_break(dir.path());
        assert_eq!(broken.line, 4);
        assert!(broken.why.contains("inserted"), "{broken}");
    }

    #[test]
    fn swapped_records_are_named() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path());
        let path = second_file(dir.path());
        let mut content = lines(&path);
        content.swap(1, 2);
        write_lines(&path, &content);
        let broken = first_break(dir.path());
        assert_eq!(broken.line, 2);
        assert!(broken.why.contains("reordered"), "{broken}");
        assert!(broken.why.contains("at line 3"), "{broken}");
    }

    /// A store of at least five files of flows (each file walked on a core of its own),
    /// every file sealed.
    fn flow_store(dir: &Path) -> Vec<SegmentFile> {
        let mut store = Store::open(settings(dir, 3_000), "host-a", 1_000, None).unwrap();
        for batch in 0..12_u16 {
            let mut records: Vec<Record> = (0..4)
                .map(|i| Record::example_flow("deny", ("tcp", 6), 1_000 + batch * 4 + i))
                .collect();
            store.write(&mut records, 2_000).unwrap();
        }
        store.close(3_000).unwrap();
        let segments = files::segments(dir).unwrap();
        assert!(segments.len() >= 5, "{segments:?}");
        segments
    }

    /// Edits the flow at `line` (from 1) of `path` without fixing its hash.
    fn edit_flow(path: &Path, line: usize) {
        let mut content = lines(path);
        assert!(content[line - 1].contains("\"kind\":\"flow\""));
        content[line - 1] = content[line - 1].replacen("\"deny\"", "\"allow\"", 1);
        write_lines(path, &content);
    }

    #[test]
    fn the_first_broken_flow_in_chain_order_is_named_whichever_file_is_walked_first() {
        let dir = tempfile::tempdir().unwrap();
        let segments = flow_store(dir.path());
        let (earlier, later) = (&segments[1].path, &segments[4].path);
        let original = fs::read(earlier).unwrap();
        edit_flow(later, 3);
        edit_flow(earlier, 4);
        let broken = first_break(dir.path());
        assert_eq!((&broken.file, broken.line), (earlier, 4), "{broken}");
        assert!(broken.why.contains("altered"), "{broken}");
        fs::write(earlier, original).unwrap();
        let broken = first_break(dir.path());
        assert_eq!((&broken.file, broken.line), (later, 3), "{broken}");
    }

    #[test]
    fn a_file_seal_rewritten_with_its_hash_breaks_the_link_to_the_next_file() {
        let dir = tempfile::tempdir().unwrap();
        let segments = flow_store(dir.path());
        let path = &segments[2].path;
        let mut content = lines(path);
        let last = content.len() - 1;
        let prev = claimed(&content[last - 1]);
        let sequence = chain::check(&content[last]).unwrap().record.sequence();
        rewrite(&mut content, last, prev, |seal| seal.message.push('!'));
        write_lines(path, &content);
        // Every file is intact alone: only linking them finds the break.
        let broken = first_break(dir.path());
        assert_eq!(
            (&broken.file, broken.line),
            (&segments[3].path, 1),
            "{broken}"
        );
        assert_eq!(broken.sequence, Some(sequence + 1));
        assert!(
            broken
                .why
                .contains(&format!("does not follow record {sequence}")),
            "{broken}"
        );
    }

    #[test]
    fn a_seal_whose_summary_was_rewritten_with_its_hash_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let segments = flow_store(dir.path());
        let path = &segments[1].path;
        let mut content = lines(path);
        let last = content.len() - 1;
        let prev = claimed(&content[last - 1]);
        // A forger empties the verdict counts, so that queries by verdict skip the file
        // and its denials stay hidden.
        rewrite(&mut content, last, prev, |seal| {
            let summary = seal
                .unmapped
                .file
                .as_mut()
                .unwrap()
                .summary
                .as_mut()
                .unwrap();
            summary.verdicts = crate::audit::record::Counts::default();
        });
        write_lines(path, &content);
        let broken = first_break(dir.path());
        assert_eq!((&broken.file, broken.line), (path, last + 1), "{broken}");
        assert!(broken.why.contains("summary"), "{broken}");
    }

    /// Rewrites line `index` of `content` with `edit` applied to its record, hashed anew
    /// and linked to `prev`, as a forger who can recompute SHA-256 would; returns the new
    /// hash.
    fn rewrite(
        content: &mut [String],
        index: usize,
        prev: Hash,
        edit: impl Fn(&mut Record),
    ) -> Hash {
        let mut record = chain::check(&content[index]).unwrap().record;
        edit(&mut record);
        let mut head = chain::Head {
            sequence: record.sequence() - 1,
            hash: prev,
        };
        let mut out = Vec::new();
        chain::append(&mut record, &mut head, &mut out);
        content[index] = String::from_utf8(out).unwrap().trim_end().to_owned();
        head.hash
    }

    fn claimed(line: &str) -> Hash {
        chain::claimed_hash(line).unwrap()
    }

    fn lost_plus_one(record: &mut Record) {
        record.unmapped.gap.as_mut().unwrap().lost += 1;
    }

    #[test]
    fn an_edited_record_with_a_recomputed_hash_breaks_the_next_link() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path());
        let path = second_file(dir.path());
        let mut content = lines(&path);
        let prev = claimed(&content[1]);
        let sequence = chain::check(&content[2]).unwrap().record.sequence();
        rewrite(&mut content, 2, prev, lost_plus_one);
        write_lines(&path, &content);
        let broken = first_break(dir.path());
        assert_eq!((broken.file.clone(), broken.line), (path, 4));
        assert_eq!(broken.sequence, Some(sequence + 1));
        assert!(
            broken
                .why
                .contains(&format!("does not follow record {sequence}")),
            "{broken}"
        );
    }

    #[test]
    fn a_record_relinked_to_another_record_is_named() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path());
        let path = second_file(dir.path());
        let mut content = lines(&path);
        // Record on line 4 now claims to follow the one on line 2, and its own hash is
        // valid: only its `prev` link gives it away.
        let sequence = chain::check(&content[3]).unwrap().record.sequence();
        let wrong_prev = claimed(&content[1]);
        rewrite(&mut content, 3, wrong_prev, |_| {});
        write_lines(&path, &content);
        let broken = first_break(dir.path());
        assert_eq!((broken.file.clone(), broken.line), (path, 4));
        assert_eq!(broken.sequence, Some(sequence));
        assert!(
            broken.why.contains(&format!(
                "record {sequence} does not follow record {}",
                sequence - 1
            )),
            "{broken}"
        );
    }

    #[test]
    fn a_chain_rewritten_to_its_end_is_caught_by_the_head_hash() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path());
        let newest = files::segments(dir.path()).unwrap().pop().unwrap().path;
        let mut content = lines(&newest);
        // Every record from the second-to-last one on rewritten, every link recomputed:
        // the chain itself holds; only HEAD remembers the last hash.
        let from = content.len() - 2;
        let mut prev = claimed(&content[from - 1]);
        for index in from..content.len() {
            prev = rewrite(&mut content, index, prev, lost_plus_one);
        }
        write_lines(&newest, &content);
        let head = files::read_head(dir.path()).unwrap().unwrap();
        let broken = first_break(dir.path());
        assert_eq!((broken.file.clone(), broken.line), (newest, content.len()));
        assert_eq!(broken.sequence, Some(head.sequence));
        assert!(broken.why.contains("rewritten"), "{broken}");
    }

    #[test]
    fn a_head_naming_another_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path());
        let mut head = files::read_head(dir.path()).unwrap().unwrap();
        head.file -= 1;
        fs::write(
            dir.path().join(files::HEAD_FILE),
            serde_json::to_vec(&head).unwrap(),
        )
        .unwrap();
        let broken = first_break(dir.path());
        assert_eq!(broken.sequence, Some(head.sequence));
        assert!(broken.why.contains("HEAD says record"), "{broken}");
    }

    #[test]
    fn a_truncated_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path());
        // A sealed file cut at a record boundary has lost its seal.
        let path = second_file(dir.path());
        let mut content = lines(&path);
        content.truncate(content.len() - 2);
        write_lines(&path, &content);
        let broken = first_break(dir.path());
        assert_eq!(broken.file, path);
        assert!(broken.why.contains("truncated"), "{broken}");

        // The newest file cut back: HEAD says more was written.
        let dir = tempfile::tempdir().unwrap();
        store(dir.path());
        let newest = files::segments(dir.path()).unwrap().pop().unwrap().path;
        let mut content = lines(&newest);
        content.pop();
        write_lines(&newest, &content);
        let broken = first_break(dir.path());
        assert!(broken.why.contains("cut off"), "{broken}");

        // Cut in the middle of a record.
        let dir = tempfile::tempdir().unwrap();
        store(dir.path());
        let path = second_file(dir.path());
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        assert!(first_break(dir.path()).why.contains("incomplete"));
    }

    #[test]
    fn a_removed_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path());
        let path = second_file(dir.path());
        fs::remove_file(&path).unwrap();
        let broken = first_break(dir.path());
        assert_eq!(broken.file, path);
        assert!(broken.why.contains("missing"), "{broken}");

        // The first file removed by hand, not by retention.
        let dir = tempfile::tempdir().unwrap();
        store(dir.path());
        fs::remove_file(files::segments(dir.path()).unwrap()[0].path.clone()).unwrap();
        assert!(first_break(dir.path()).why.contains("no retention record"));
    }

    #[test]
    fn retention_removes_the_oldest_files_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = settings(dir.path(), 2_000);
        settings.retain_bytes = 6_000;
        let mut store = Store::open(settings, "host-a", 1_000, None).unwrap();
        for batch in 0..40 {
            let mut records: Vec<Record> = (0..3).map(|i| gap(batch * 3 + i + 1)).collect();
            store.write(&mut records, 2_000).unwrap();
        }
        let segments = files::segments(dir.path()).unwrap();
        assert!(segments[0].number > 1, "old files were removed");
        let total: u64 = segments
            .iter()
            .map(|s| fs::metadata(&s.path).unwrap().len())
            .sum();
        // The retained files, and the newest one: up to the rotation size plus the
        // batch that crossed it (and the store's own records leading it).
        let longest = segments
            .iter()
            .flat_map(|s| lines(&s.path))
            .map(|line| line.len() as u64 + 1)
            .max()
            .unwrap();
        assert!(total <= 6_000 + 2_000 + 6 * longest, "total {total}");
        let summary = verify(dir.path(), &Proof::default()).unwrap().unwrap();
        assert_eq!(summary.removed_by_retention, segments[0].number - 1);
    }

    #[test]
    fn a_file_older_than_the_rotation_age_is_sealed_and_the_next_one_started() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = settings(dir.path(), u64::MAX);
        settings.rotate_age = Duration::from_millis(300);
        let mut store = Store::open(settings, "host-a", 1_000, None).unwrap();
        store.write(&mut [gap(1)], 2_000).unwrap();
        // Younger than the age: the same file.
        store.write(&mut [gap(2)], 2_000).unwrap();
        assert_eq!(files::segments(dir.path()).unwrap().len(), 1);
        std::thread::sleep(Duration::from_millis(400));
        store.write(&mut [gap(3)], 2_000).unwrap();
        let segments = files::segments(dir.path()).unwrap();
        assert_eq!(
            segments.len(),
            2,
            "rotated once the file was older than the age"
        );
        let (seal, _) = files::seal_of(&segments[0]).unwrap().expect("sealed");
        assert_eq!(seal.unmapped.file.unwrap().records, Some(3), "open, 2 gaps");
        let opened: Record = serde_json::from_str(&lines(&segments[1].path)[0]).unwrap();
        assert_eq!(
            opened.unmapped.file.unwrap().opened.as_deref(),
            Some("rotate")
        );
        store.close(3_000).unwrap();
        let summary = verify(dir.path(), &Proof::default()).unwrap().unwrap();
        assert_eq!(summary.lost, 1 + 2 + 3);
    }

    #[test]
    fn retention_removes_the_files_older_than_the_retention_age_and_says_so() {
        const HOUR: i64 = 3_600_000;
        let dir = tempfile::tempdir().unwrap();
        let mut settings = settings(dir.path(), 2_000);
        settings.retain_age = Duration::from_secs(24 * 3600);
        let mut store = Store::open(settings, "host-a", 1_000, None).unwrap();
        // Records at `time`, written then, across several files.
        let mut write_at = |first: u64, time: i64| {
            for batch in 0..6 {
                let mut records: Vec<Record> = (0..3)
                    .map(|i| gap_at(first + batch * 3 + i, time))
                    .collect();
                store.write(&mut records, time).unwrap();
            }
        };
        // Files of records 30 hours old and 18 hours old by the time of the last writes.
        write_at(1, 1_000);
        write_at(100, 1_000 + 12 * HOUR);
        let now = 1_000 + 30 * HOUR;
        let last_time = |file: &SegmentFile| {
            files::seal_of(file)
                .unwrap()
                .and_then(|(seal, _)| seal.unmapped.file?.last_time)
        };
        let before = files::segments(dir.path()).unwrap();
        let sealed: Vec<(u64, i64)> = before
            .iter()
            .filter_map(|file| Some((file.number, last_time(file)?)))
            .collect();
        let numbers = |older: bool| -> Vec<u64> {
            sealed
                .iter()
                .filter(|(_, last)| (now - last > 24 * HOUR) == older)
                .map(|(number, _)| *number)
                .collect()
        };
        let (too_old, young) = (numbers(true), numbers(false));
        assert!(too_old.len() >= 2 && young.len() >= 2, "{before:?}");
        write_at(200, now);
        let left: Vec<u64> = files::segments(dir.path())
            .unwrap()
            .iter()
            .map(|file| file.number)
            .collect();
        assert!(
            too_old.iter().all(|number| !left.contains(number))
                && young.iter().all(|number| left.contains(number)),
            "older than a day {too_old:?}, younger {young:?}, left {left:?}"
        );
        let named: Vec<u64> = files::segments(dir.path())
            .unwrap()
            .iter()
            .flat_map(|file| lines(&file.path))
            .filter_map(|line| serde_json::from_str::<Record>(&line).ok())
            .filter_map(|record| record.unmapped.removed)
            .flatten()
            .map(|removed| removed.number)
            .collect();
        assert_eq!(named, too_old, "the retention record names what went");
        let summary = verify(dir.path(), &Proof::default()).unwrap().unwrap();
        assert_eq!(summary.removed_by_retention, too_old.len() as u64);
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_counted_at_restart() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path());
        let newest = files::segments(dir.path()).unwrap().pop().unwrap().path;
        let mut file = fs::OpenOptions::new().append(true).open(&newest).unwrap();
        std::io::Write::write_all(&mut file, b"{\"class_uid\":40").unwrap();
        drop(file);
        assert!(first_break(dir.path()).why.contains("incomplete"));
        let again = Store::open(settings(dir.path(), 2_000), "host-a", 3_000, None).unwrap();
        again.close(3_000).unwrap();
        let summary = verify(dir.path(), &Proof::default()).unwrap().unwrap();
        assert_eq!(summary.lost, (1..=30).sum::<u64>() + 1);
    }

    /// A sealed store: three or more files of 30 gap records in batches of 3, an epoch
    /// seal after every batch (interval zero); returns the verification key and the path
    /// of the host's sealing key.
    fn sealed_store(dir: &Path) -> (VerifyKey, PathBuf) {
        let key_path = dir.with_extension("key");
        let (verify_key, first) = VerifyKey::generate().unwrap();
        crate::audit::seal::write_key(&key_path, &first).unwrap();
        let sealer = Sealer::load(&key_path, Duration::ZERO).unwrap();
        let mut store = Store::open(settings(dir, 2_000), "host-a", 1_000, Some(sealer)).unwrap();
        for batch in 0..10 {
            let mut records: Vec<Record> = (0..3).map(|i| gap(batch * 3 + i + 1)).collect();
            store.write(&mut records, 2_000 + batch as i64).unwrap();
        }
        store.close(3_000).unwrap();
        assert!(files::segments(dir).unwrap().len() >= 3);
        (verify_key, key_path)
    }

    fn proof(verify_key: &VerifyKey, key_path: &Path) -> Proof {
        Proof {
            verify_key: Some(verify_key.clone()),
            host_key: Some(crate::audit::seal::read_key(key_path).unwrap()),
        }
    }

    /// An attacker with root and the host's current sealing key: applies `edit` to every
    /// record (it returns whether the record stays), then writes every file and `HEAD`
    /// again with every hash and link recomputed, and every seal it can make (those of
    /// the current epoch and later) made again; older seals keep their tags.
    fn forge(dir: &Path, key_path: &Path, mut edit: impl FnMut(&mut Record) -> bool) {
        let key = crate::audit::seal::read_key(key_path).unwrap();
        let mut head = chain::Head::GENESIS;
        let mut first = true;
        let mut last_file = 0;
        for segment in files::segments(dir).unwrap() {
            let mut out = Vec::new();
            let mut in_file = 0;
            for line in lines(&segment.path) {
                let mut record = chain::check(&line).unwrap().record;
                if first {
                    // Continue from whatever the first record followed.
                    let mut prev = [0; 32];
                    hex::decode_to_slice(&record.unmapped.prev, &mut prev).unwrap();
                    head = chain::Head {
                        sequence: record.sequence() - 1,
                        hash: prev,
                    };
                    first = false;
                }
                if !edit(&mut record) {
                    continue;
                }
                if record.unmapped.kind == Kind::Seal
                    && let Some(file) = &mut record.unmapped.file
                {
                    file.records = Some(in_file);
                }
                in_file += 1;
                if let Some(epoch) = &mut record.unmapped.epoch
                    && epoch.index >= key.index()
                {
                    let mut at = key.clone();
                    at.advance_to(epoch.index);
                    epoch.tag = hex::encode(at.tag(head.sequence, &head.hash, record.time));
                }
                chain::append(&mut record, &mut head, &mut out);
            }
            fs::write(&segment.path, out).unwrap();
            last_file = segment.number;
        }
        files::write_head(dir, last_file, &head, 0).unwrap();
    }

    #[test]
    fn a_sealed_store_is_proven_epoch_by_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let (verify_key, key_path) = sealed_store(dir.path());
        let summary = verify(dir.path(), &proof(&verify_key, &key_path))
            .unwrap()
            .unwrap();
        let sealing = summary.sealing.unwrap();
        assert!(sealing.proven);
        assert_eq!(sealing.first_epoch, 0);
        assert!(sealing.seals >= 10, "{sealing:?}");
        assert_eq!(sealing.seals, sealing.last_epoch + 1);
        // The file seal written at close is the only record after the last epoch seal.
        assert_eq!(sealing.unsealed_records, 1, "{sealing:?}");
        // Another verification key proves nothing.
        let (other, _) = VerifyKey::generate().unwrap();
        let broken = verify(
            dir.path(),
            &Proof {
                verify_key: Some(other),
                host_key: None,
            },
        )
        .unwrap()
        .unwrap_err();
        assert!(
            broken.why.contains("the seal of epoch 0 does not prove"),
            "{broken}"
        );
    }

    #[test]
    fn a_root_rewrite_with_the_current_key_is_caught_naming_the_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let (verify_key, key_path) = sealed_store(dir.path());
        // The first gap record from record 20 on loses the events it recorded; every
        // hash, link, HEAD and the seals the attacker's key can make are recomputed.
        let mut edited = None;
        forge(dir.path(), &key_path, |record| {
            if record.sequence() >= 20
                && edited.is_none()
                && let Some(gap) = &mut record.unmapped.gap
            {
                gap.lost = 0;
                edited = Some(record.sequence());
            }
            true
        });
        let edited = edited.expect("a gap record was edited");
        // The chain alone cannot tell.
        let unproven = verify(dir.path(), &Proof::default()).unwrap().unwrap();
        assert!(!unproven.sealing.unwrap().proven);
        // The verification key names the first epoch whose seal no longer holds.
        let broken = verify(dir.path(), &proof(&verify_key, &key_path))
            .unwrap()
            .unwrap_err();
        assert!(broken.why.starts_with("the seal of epoch "), "{broken}");
        assert!(
            broken.why.contains("does not prove the chain up to record"),
            "{broken}"
        );
        // The first seal after the edit, and no later than the next one.
        let at = broken.sequence.unwrap();
        assert!(at > edited && at <= edited + 4, "edited {edited}: {broken}");
    }

    #[test]
    fn seals_cut_off_the_end_or_removed_are_caught() {
        // The newest file removed and HEAD rewritten to the new end: the host's key is
        // ahead of the last seal.
        let dir = tempfile::tempdir().unwrap();
        let (verify_key, key_path) = sealed_store(dir.path());
        let segments = files::segments(dir.path()).unwrap();
        let newest = segments.last().unwrap();
        fs::remove_file(&newest.path).unwrap();
        let before = &segments[segments.len() - 2];
        let end = chain::check(lines(&before.path).last().unwrap()).unwrap();
        files::write_head(
            dir.path(),
            before.number,
            &chain::Head {
                sequence: end.record.sequence(),
                hash: end.claimed,
            },
            0,
        )
        .unwrap();
        let broken = verify(dir.path(), &proof(&verify_key, &key_path))
            .unwrap()
            .unwrap_err();
        assert!(
            broken.why.contains("were cut off the store's end"),
            "{broken}"
        );

        // HEAD deleted with the newest file truncated.
        let dir = tempfile::tempdir().unwrap();
        sealed_store(dir.path());
        fs::remove_file(dir.path().join(files::HEAD_FILE)).unwrap();
        let newest = files::segments(dir.path()).unwrap().pop().unwrap().path;
        let mut content = lines(&newest);
        content.truncate(content.len() / 2);
        write_lines(&newest, &content);
        let broken = verify(dir.path(), &Proof::default()).unwrap().unwrap_err();
        assert!(broken.why.starts_with("HEAD is missing"), "{broken}");

        // Every epoch seal stripped, the chain recomputed.
        let dir = tempfile::tempdir().unwrap();
        let (verify_key, key_path) = sealed_store(dir.path());
        forge(dir.path(), &key_path, |record| {
            record.unmapped.kind != Kind::Epoch
        });
        let broken = verify(dir.path(), &proof(&verify_key, &key_path))
            .unwrap()
            .unwrap_err();
        assert!(
            broken.why.contains("the store's last seal is none"),
            "{broken}"
        );

        // One seal in the middle dropped.
        let dir = tempfile::tempdir().unwrap();
        let (verify_key, key_path) = sealed_store(dir.path());
        forge(dir.path(), &key_path, |record| {
            record
                .unmapped
                .epoch
                .as_ref()
                .is_none_or(|epoch| epoch.index != 4)
        });
        let broken = verify(dir.path(), &proof(&verify_key, &key_path))
            .unwrap()
            .unwrap_err();
        assert!(
            broken.why.contains("the seals of epochs 4..=4 are missing"),
            "{broken}"
        );
    }

    #[test]
    fn an_empty_store_is_not_intact() {
        let dir = tempfile::tempdir().unwrap();
        let broken = verify(dir.path(), &Proof::default()).unwrap().unwrap_err();
        assert!(broken.why.starts_with("the store is empty"), "{broken}");
    }

    #[test]
    fn a_legitimate_retention_verifies_and_a_forged_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().with_extension("key");
        let (verify_key, first) = VerifyKey::generate().unwrap();
        crate::audit::seal::write_key(&key_path, &first).unwrap();
        let mut settings = settings(dir.path(), 2_000);
        settings.retain_bytes = 8_000;
        let sealer = Sealer::load(&key_path, Duration::ZERO).unwrap();
        let mut store = Store::open(settings, "host-a", 1_000, Some(sealer)).unwrap();
        for batch in 0..40 {
            let mut records: Vec<Record> = (0..3).map(|i| gap(batch * 3 + i + 1)).collect();
            store.write(&mut records, 2_000).unwrap();
        }
        store.close(3_000).unwrap();
        let summary = verify(dir.path(), &proof(&verify_key, &key_path))
            .unwrap()
            .unwrap();
        assert!(summary.removed_by_retention > 0);
        assert!(summary.sealing.unwrap().first_epoch > 0);

        // The attacker removes the oldest remaining file too, and writes a retention
        // record for it into the chain (just after the first one), recomputing the rest.
        let segments = files::segments(dir.path()).unwrap();
        let oldest = &segments[0];
        let seal = lines(&oldest.path).last().cloned().unwrap();
        let seal = chain::check(&seal).unwrap();
        fs::remove_file(&oldest.path).unwrap();
        let mut forged = false;
        forge(dir.path(), &key_path, |record| {
            if record.unmapped.kind == Kind::Retention
                && !forged
                && let Some(removed) = &mut record.unmapped.removed
            {
                removed.push(crate::audit::record::RemovedFile {
                    number: oldest.number,
                    last_sequence: seal.record.sequence(),
                    seal_hash: hex::encode(seal.claimed),
                });
                forged = true;
            }
            true
        });
        assert!(forged);
        let broken = verify(dir.path(), &proof(&verify_key, &key_path))
            .unwrap()
            .unwrap_err();
        assert!(broken.why.contains("does not prove the chain"), "{broken}");
    }

    /// Flows and gaps written through `store`, `n` of each, from `first`.
    fn flows_and_gaps(store: &mut Store, first: u64, n: u64) {
        for i in first..first + n {
            let mut records = vec![
                Record::example_flow("deny", ("tcp", 6), u16::try_from(i).unwrap()),
                gap(i),
            ];
            store.write(&mut records, 2_000).unwrap();
        }
    }

    #[test]
    fn a_json_lines_store_is_continued_in_the_compact_format_and_verifies_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(settings(dir.path(), 2_000), "host-a", 1_000, None).unwrap();
        flows_and_gaps(&mut store, 1, 10);
        store.close(3_000).unwrap();
        let mut compact = settings(dir.path(), 2_000);
        compact.format = Format::Compact;
        let mut store = Store::open(compact, "host-a", 4_000, None).unwrap();
        flows_and_gaps(&mut store, 11, 40);
        store.close(5_000).unwrap();

        let formats: Vec<Format> = files::segments(dir.path())
            .unwrap()
            .iter()
            .map(|file| file.format)
            .collect();
        assert!(formats.contains(&Format::Lines) && formats.contains(&Format::Compact));
        let summary = verify(dir.path(), &Proof::default()).unwrap().unwrap();
        assert_eq!(summary.flows, 50);
        let flows: Vec<Record> = files::rendered_lines(dir.path())
            .unwrap()
            .iter()
            .map(|line| serde_json::from_str::<Record>(line).unwrap())
            .filter(|record| record.flow().is_some())
            .collect();
        let ports: Vec<u16> = flows
            .iter()
            .map(|flow| flow.dst_endpoint.as_ref().unwrap().port)
            .collect();
        assert_eq!(ports, (1..=50).collect::<Vec<u16>>());
    }

    #[test]
    fn a_changed_byte_in_a_compact_file_is_named_by_file_and_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut compact = settings(dir.path(), 2_000);
        compact.format = Format::Compact;
        let mut store = Store::open(compact, "host-a", 1_000, None).unwrap();
        flows_and_gaps(&mut store, 1, 40);
        store.close(5_000).unwrap();
        assert!(verify(dir.path(), &Proof::default()).unwrap().is_ok());
        let file = &files::segments(dir.path()).unwrap()[1];
        let mut bytes = fs::read(&file.path).unwrap();
        let mut read = Vec::new();
        Decoder::default()
            .read(&bytes, 0, |record| {
                read.push(record.number);
                true
            })
            .unwrap();
        // A byte in the middle of the file, wherever it falls.
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        fs::write(&file.path, &bytes).unwrap();
        let broken = first_break(dir.path());
        assert_eq!(broken.file, file.path);
        assert!(broken.line >= 1 && broken.line <= read.len(), "{broken}");
        assert!(
            broken.sequence.is_some() || broken.why.contains("damaged"),
            "{broken}"
        );
    }

    #[test]
    fn a_store_whose_only_file_is_empty_is_named_not_a_panic() {
        for format in [Format::Lines, Format::Compact] {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join(files::name_in(1, format)), b"").unwrap();
            let broken = first_break(dir.path());
            assert!(broken.why.contains("holds no record"), "{broken}");
        }
    }
}
