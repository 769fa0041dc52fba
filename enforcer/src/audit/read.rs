//! Reading a store for people: every record in chain order, filtered, the files read on
//! every core. Files whose seal shows they cannot hold a match are skipped unread: by
//! their time range, and by their summary of the segments, rules and verdicts their flows
//! name (see [`FileSummary`]). A line that is not a record is an error naming its file
//! and line (`enforcer audit verify` says more).

use std::{
    collections::BTreeSet,
    fs::File,
    io::{self, Read as _},
    net::IpAddr,
    path::{Path, PathBuf},
};

use memchr::memmem::Finder;

use super::{
    compact::{Decoder, Entry, FlowView, FormatError},
    files::{self, Format, SegmentFile},
    ordered,
    record::{Counts, FileDetails, Kind, Record},
};

/// Bytes read from a file at a time.
const CHUNK_BYTES: usize = 4 << 20;

/// A record's time alone (the other fields are skipped unparsed).
#[derive(serde::Deserialize)]
struct TimeOnly {
    time: i64,
}

/// Why a store could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A file or the directory could not be read.
    #[error("{}: {source}", .path.display())]
    Io {
        /// What.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A compact file's bytes are not records.
    #[error("{}: {source}; run `enforcer audit verify` on the store", .path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        source: files::Damage,
    },
    /// A line is not a record.
    #[error("{}:{line}: not an audit record ({source}); run `enforcer audit verify` on the store", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// Why.
        source: serde_json::Error,
    },
}

/// Which records a query wants. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Records at or after this time (ms since the epoch).
    pub since: Option<i64>,
    /// Records before this time (ms since the epoch).
    pub until: Option<i64>,
    /// Flows from or to this segment.
    pub segment: Option<String>,
    /// Flows decided by this rule (or reason, e.g. `default-deny`).
    pub rule: Option<String>,
    /// Flows with this verdict.
    pub verdict: Option<String>,
    /// Flows from or to this address.
    pub addr: Option<IpAddr>,
    /// Flows to (or from) this port.
    pub port: Option<u16>,
    /// Also the store's own records (gaps, file open/seal, retention, the agent's and the
    /// policies' history).
    pub store_records: bool,
    /// Only records of this kind.
    pub kind: Option<Kind>,
}

impl Filter {
    /// Whether only the time range matters.
    fn flow_filters(&self) -> bool {
        self.segment.is_some()
            || self.rule.is_some()
            || self.verdict.is_some()
            || self.addr.is_some()
            || self.port.is_some()
    }

    /// Whether a time range is set.
    fn timed(&self) -> bool {
        self.since.is_some() || self.until.is_some()
    }

    /// What a matching record's line must contain, each value quoted as JSON writes it
    /// (the rarest first): a line without one of them cannot match.
    fn needles(&self) -> Vec<Finder<'static>> {
        let addr = self.addr.map(|addr| addr.to_string());
        [
            self.rule.as_deref(),
            addr.as_deref(),
            self.segment.as_deref(),
            self.verdict.as_deref(),
        ]
        .into_iter()
        .flatten()
        .map(|value| Finder::new(format!("\"{value}\"").as_bytes()).into_owned())
        .collect()
    }

    /// Whether `time` is in the range.
    fn in_time(&self, time: i64) -> bool {
        self.since.is_none_or(|since| time >= since) && self.until.is_none_or(|until| time < until)
    }

    /// Whether a compact file's flow, read in place, matches: as [`Filter::matches`]
    /// decides on the whole record.
    fn matches_flow(&self, flow: &FlowView<'_>) -> bool {
        if !self.in_time(flow.time()) || self.kind.is_some_and(|kind| kind != Kind::Flow) {
            return false;
        }
        let (Some(verdict), Some(reason), Some((src, dst))) =
            (flow.verdict(), flow.reason(), flow.segments())
        else {
            return self.store_records && !self.flow_filters();
        };
        let ends = [flow.source(), flow.destination()];
        self.segment
            .as_deref()
            .is_none_or(|segment| src == segment || dst == segment)
            && self
                .rule
                .as_deref()
                .is_none_or(|rule| flow.rule().map_or(reason == rule, |by| by == rule))
            && self
                .verdict
                .as_deref()
                .is_none_or(|wanted| verdict == wanted)
            && self
                .addr
                .is_none_or(|addr| ends.iter().flatten().any(|(ip, _)| *ip == Some(addr)))
            && self
                .port
                .is_none_or(|port| ends.iter().flatten().any(|(_, at)| *at == port))
    }

    /// Whether `record` matches.
    pub fn matches(&self, record: &Record) -> bool {
        if !self.in_time(record.time) || self.kind.is_some_and(|kind| record.unmapped.kind != kind)
        {
            return false;
        }
        let Some(flow) = record.flow() else {
            return self.store_records && !self.flow_filters();
        };
        let ends = [&record.src_endpoint, &record.dst_endpoint];
        self.segment
            .as_deref()
            .is_none_or(|segment| flow.src_segment == segment || flow.dst_segment == segment)
            && self.rule.as_deref().is_none_or(|rule| {
                flow.rule.as_deref() == Some(rule) || (flow.rule.is_none() && flow.reason == rule)
            })
            && self
                .verdict
                .as_deref()
                .is_none_or(|verdict| flow.verdict == verdict)
            && self.addr.is_none_or(|addr| {
                let addr = addr.to_string();
                ends.iter()
                    .flat_map(|end| end.as_ref())
                    .any(|end| end.ip == addr)
            })
            && self.port.is_none_or(|port| {
                record
                    .dst_endpoint
                    .as_ref()
                    .is_some_and(|end| end.port == port)
                    || record
                        .src_endpoint
                        .as_ref()
                        .is_some_and(|end| end.port == port)
            })
    }

    /// Whether a sealed file, as its seal describes it, can hold a match: its time range
    /// and, when the filter wants flows by segment, rule or verdict, its summary (a seal
    /// without one, or a set too large to list, rules nothing out).
    fn may_hold(&self, file: &FileDetails) -> bool {
        let (first_time, last_time) = (
            file.first_time.unwrap_or(i64::MIN),
            file.last_time.unwrap_or(i64::MAX),
        );
        if !(self.since.is_none_or(|since| last_time >= since)
            && self.until.is_none_or(|until| first_time < until))
        {
            return false;
        }
        let Some(summary) = &file.summary else {
            return true;
        };
        // With a flow filter only flows match, and the summary names every flow's.
        self.segment
            .as_deref()
            .is_none_or(|segment| summary.segments.may_hold(segment))
            && self
                .rule
                .as_deref()
                .is_none_or(|rule| summary.rules.may_hold(rule))
            && self
                .verdict
                .as_deref()
                .is_none_or(|verdict| summary.verdicts.may_hold(verdict))
    }

    /// Whether `segment` may hold a match: `false` only when its seal shows it cannot
    /// (the seal is read only when the filter could rule a file out).
    fn may_hold_file(&self, segment: &SegmentFile) -> bool {
        if !self.timed() && self.segment.is_none() && self.rule.is_none() && self.verdict.is_none()
        {
            return true;
        }
        match files::seal_of(segment) {
            Ok(Some((seal, _))) => seal
                .unmapped
                .file
                .as_ref()
                .is_none_or(|file| self.may_hold(file)),
            _ => true,
        }
    }
}

/// The store's files, oldest first.
pub fn segments(dir: &Path) -> Result<Vec<SegmentFile>, ReadError> {
    files::segments(dir).map_err(|source| ReadError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// What a file's worker hands to the reader of the chain.
enum Found<T> {
    /// A matching record (or a value made from one).
    Record(T),
    /// The file is done; its size.
    Done(u64),
    /// The file could not be read.
    Error(ReadError),
}

/// Calls `found` with every record of `dir` that `filter` matches, in chain order; stops
/// early when `found` returns `false`. `progress` hears each file's size once it is done.
/// The files are read and parsed on every core; `found` runs on the caller's thread.
pub fn scan(
    dir: &Path,
    filter: &Filter,
    mut progress: impl FnMut(u64),
    mut found: impl FnMut(Record) -> bool,
) -> Result<(), ReadError> {
    let segments = segments(dir)?;
    let mut outcome = Ok(());
    ordered::for_each_in_order(
        &segments,
        |segment, emit| {
            let size = std::fs::metadata(&segment.path).map_or(0, |m| m.len());
            if !filter.may_hold_file(segment) {
                emit(Found::Done(size));
                return;
            }
            match scan_file(segment, filter, &mut |record| emit(Found::Record(record))) {
                Ok(true) => {
                    emit(Found::Done(size));
                }
                Ok(false) => {}
                Err(err) => {
                    emit(Found::Error(err));
                }
            }
        },
        |item| match item {
            Found::Record(record) => found(record),
            Found::Done(size) => {
                progress(size);
                true
            }
            Found::Error(err) => {
                outcome = Err(err);
                false
            }
        },
    );
    outcome
}

/// One record as [`fold`] hands it over: the line of a JSON Lines file (for the folder to
/// parse as far as it needs), or a compact file's flow (read in place) or other record.
#[derive(Debug, Clone, Copy)]
pub enum Item<'a> {
    /// A line.
    Line(&'a str),
    /// A flow.
    Flow(FlowView<'a>),
    /// A record.
    Record(&'a Record),
}

/// Folds the records of `dir` in the time range `since..until` file by file, on every
/// core: each file's records go to `add` with an `A` of the file's own (made by `new`),
/// and the files' `A`s go to `merge` in chain order. A line `add` cannot parse is an
/// error naming it, as for [`scan`].
pub fn fold<A: Send>(
    dir: &Path,
    since: Option<i64>,
    until: Option<i64>,
    new: impl Fn() -> A + Sync,
    add: impl Fn(&mut A, Item<'_>) -> Result<(), serde_json::Error> + Sync,
    mut merge: impl FnMut(A),
) -> Result<(), ReadError> {
    let filter = Filter {
        since,
        until,
        ..Filter::default()
    };
    let segments = segments(dir)?;
    let mut outcome = Ok(());
    ordered::for_each_in_order(
        &segments,
        |segment, emit| {
            if !filter.may_hold_file(segment) {
                return;
            }
            let mut folded = new();
            if segment.format == Format::Compact {
                let read = compact_entries(segment, &mut |entry| {
                    let added = match entry.flow() {
                        Some(flow) if filter.in_time(flow.time()) => {
                            add(&mut folded, Item::Flow(flow))
                        }
                        Some(_) => Ok(()),
                        None => match entry.record() {
                            Ok(record) if filter.in_time(record.time) => {
                                add(&mut folded, Item::Record(&record))
                            }
                            _ => Ok(()),
                        },
                    };
                    added.expect("a record in memory is always whole");
                    true
                });
                emit(match read {
                    Ok(_) => Found::Record(folded),
                    Err(err) => Found::Error(err),
                });
                return;
            }
            let mut corrupt = None;
            let read = each_line(&segment.path, None, |line, offset| {
                let line = text_of(line);
                if filter.timed()
                    && let Ok(TimeOnly { time }) = serde_json::from_str::<TimeOnly>(&line)
                    && !filter.in_time(time)
                {
                    return true;
                }
                add(&mut folded, Item::Line(&line))
                    .map_err(|source| corrupt = Some((offset, source)))
                    .is_ok()
            });
            emit(match finish(&segment.path, read, corrupt) {
                Ok(_) => Found::Record(folded),
                Err(err) => Found::Error(err),
            });
        },
        |item| match item {
            Found::Record(folded) => {
                merge(folded);
                true
            }
            Found::Done(_) => true,
            Found::Error(err) => {
                outcome = Err(err);
                false
            }
        },
    );
    outcome
}

/// The segments and the rules (or reasons, where no rule decided) that the flows of `dir`
/// in the time range `since..until` name. A sealed file that lies wholly in the range
/// answers from its seal's summary when that lists both; any other file is read.
pub fn flow_names(
    dir: &Path,
    since: Option<i64>,
    until: Option<i64>,
) -> Result<(BTreeSet<String>, BTreeSet<String>), ReadError> {
    let filter = Filter {
        since,
        until,
        ..Filter::default()
    };
    let (mut segments, mut rules) = (BTreeSet::new(), BTreeSet::new());
    let mut outcome = Ok(());
    ordered::for_each_in_order(
        &self::segments(dir)?,
        |segment, emit| {
            emit(names_in(segment, &filter));
        },
        |names| match names {
            Ok((more_segments, more_rules)) => {
                segments.extend(more_segments);
                rules.extend(more_rules);
                true
            }
            Err(err) => {
                outcome = Err(err);
                false
            }
        },
    );
    outcome.map(|()| (segments, rules))
}

/// [`flow_names`] of one file.
fn names_in(
    segment: &SegmentFile,
    filter: &Filter,
) -> Result<(BTreeSet<String>, BTreeSet<String>), ReadError> {
    let seal = files::seal_of(segment).ok().flatten();
    let file = seal
        .as_ref()
        .and_then(|(seal, _)| seal.unmapped.file.as_ref());
    if let Some(file) = file {
        let (first, last) = (
            file.first_time.unwrap_or(i64::MIN),
            file.last_time.unwrap_or(i64::MAX),
        );
        if !filter.may_hold(file) {
            return Ok(Default::default());
        }
        if filter.in_time(first)
            && filter.in_time(last)
            && let Some(summary) = &file.summary
            && let (Counts::Listed(segments), Counts::Listed(rules)) =
                (&summary.segments, &summary.rules)
        {
            return Ok((
                segments.keys().cloned().collect(),
                rules.keys().cloned().collect(),
            ));
        }
    }
    let (mut segments, mut rules) = (BTreeSet::new(), BTreeSet::new());
    scan_file(segment, filter, &mut |record| {
        if let Some(flow) = &record.unmapped.flow {
            segments.insert(flow.src_segment.clone());
            segments.insert(flow.dst_segment.clone());
            rules.insert(flow.rule.clone().unwrap_or_else(|| flow.reason.clone()));
        }
        true
    })?;
    Ok((segments, rules))
}

/// Every record of a compact file, in order, to `each` (which may stop the reading by
/// returning `false`); `false` when it did.
fn compact_entries(
    segment: &SegmentFile,
    each: &mut dyn FnMut(&Entry<'_>) -> bool,
) -> Result<bool, ReadError> {
    let bytes = std::fs::read(&segment.path).map_err(|source| ReadError::Io {
        path: segment.path.clone(),
        source,
    })?;
    let mut went_on = true;
    let damaged = |source: FormatError| ReadError::Damaged {
        path: segment.path.clone(),
        source: source.into(),
    };
    Decoder::default()
        .read(&bytes, 0, |entry| {
            went_on = each(&entry);
            went_on
        })
        .map_err(damaged)?;
    Ok(went_on)
}

/// Scans one file's complete records; `false` when `found` asked to stop.
fn scan_file(
    segment: &SegmentFile,
    filter: &Filter,
    found: &mut dyn FnMut(Record) -> bool,
) -> Result<bool, ReadError> {
    if segment.format == Format::Compact {
        let mut damage = None;
        let went_on = compact_entries(segment, &mut |entry| {
            if let Some(flow) = entry.flow()
                && !filter.matches_flow(&flow)
            {
                return true;
            }
            match entry.record() {
                Ok(record) => !filter.matches(&record) || found(record),
                Err(why) => {
                    damage = Some(FormatError::Entry {
                        number: entry.number,
                        why,
                    });
                    false
                }
            }
        })?;
        return match damage {
            Some(source) => Err(ReadError::Damaged {
                path: segment.path.clone(),
                source: source.into(),
            }),
            None => Ok(went_on),
        };
    }
    let path = &segment.path;
    let needles = filter.needles();
    let timed = filter.timed();
    let mut corrupt = None;
    let read = each_line(path, needles.first(), |bytes, offset| {
        if needles
            .iter()
            .skip(1)
            .any(|needle| needle.find(bytes).is_none())
        {
            return true;
        }
        let line = text_of(bytes);
        // A time range is checked on the time alone before the whole record is parsed.
        if timed
            && let Ok(TimeOnly { time }) = serde_json::from_str::<TimeOnly>(&line)
            && !filter.in_time(time)
        {
            return true;
        }
        match serde_json::from_str::<Record>(&line) {
            Ok(record) => !filter.matches(&record) || found(record),
            Err(source) => {
                corrupt = Some((offset, source));
                false
            }
        }
    });
    finish(path, read, corrupt)
}

/// The outcome of reading the file at `path` with [`each_line`]: its error, or the line
/// that was not a record (at byte `offset`), named by its number.
fn finish(
    path: &Path,
    read: io::Result<bool>,
    corrupt: Option<(u64, serde_json::Error)>,
) -> Result<bool, ReadError> {
    let io_error = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    let went_on = read.map_err(io_error)?;
    match corrupt {
        Some((offset, source)) => Err(ReadError::Corrupt {
            path: path.to_owned(),
            line: line_at(path, offset).map_err(io_error)?,
            source,
        }),
        None => Ok(went_on),
    }
}

/// A line's text: itself when it is UTF-8 (as every record is), else with the invalid
/// bytes replaced.
fn text_of(line: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(line) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(line),
    }
}

/// The number (from 1) of the line starting at byte `offset` of the file at `path`.
fn line_at(path: &Path, offset: u64) -> io::Result<usize> {
    let mut before = Vec::new();
    File::open(path)?.take(offset).read_to_end(&mut before)?;
    Ok(memchr::memchr_iter(b'\n', &before).count() + 1)
}

/// Calls `each` with every complete line of the file at `path` (without its newline)
/// that contains `needle` (every line without one), and the line's offset in the file;
/// stops when `each` returns `false` (and then returns `false`). An incomplete last line
/// (a record the agent is writing right now) is left out.
fn each_line(
    path: &Path,
    needle: Option<&Finder<'_>>,
    mut each: impl FnMut(&[u8], u64) -> bool,
) -> io::Result<bool> {
    let mut file = File::open(path)?;
    let mut buf = vec![0; CHUNK_BYTES];
    let (mut filled, mut base) = (0, 0_u64);
    loop {
        if filled == buf.len() {
            // One line longer than the buffer.
            buf.resize(buf.len() * 2, 0);
        }
        let read = match file.read(&mut buf[filled..]) {
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        filled += read;
        let complete = memchr::memrchr(b'\n', &buf[..filled]).map_or(0, |at| at + 1);
        if !lines_in(&buf[..complete], needle, base, &mut each) {
            return Ok(false);
        }
        if read == 0 {
            return Ok(true);
        }
        buf.copy_within(complete..filled, 0);
        filled -= complete;
        base += complete as u64;
    }
}

/// [`each_line`] over `region`, whole lines at file offset `base`.
fn lines_in(
    region: &[u8],
    needle: Option<&Finder<'_>>,
    base: u64,
    each: &mut impl FnMut(&[u8], u64) -> bool,
) -> bool {
    let mut start = 0;
    let Some(needle) = needle else {
        for end in memchr::memchr_iter(b'\n', region) {
            if !each(&region[start..end], base + start as u64) {
                return false;
            }
            start = end + 1;
        }
        return true;
    };
    while let Some(found) = needle.find(&region[start..]) {
        let at = start + found;
        let line_start =
            memchr::memrchr(b'\n', &region[start..at]).map_or(start, |nl| start + nl + 1);
        let line_end =
            at + memchr::memchr(b'\n', &region[at..]).expect("a region ends with a newline");
        if !each(&region[line_start..line_end], base + line_start as u64) {
            return false;
        }
        start = line_end + 1;
    }
    true
}

/// Whether a record is one a person reading flows wants to see by default: flows and
/// gaps (loss is never hidden).
pub fn is_reportable(record: &Record) -> bool {
    matches!(
        record.unmapped.kind,
        Kind::Flow | Kind::Gap | Kind::Agent | Kind::Policy
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::audit::store::{Fsync, Store, StoreSettings};

    /// Settings that start a new file at every batch.
    fn file_per_batch(dir: &Path) -> StoreSettings {
        StoreSettings {
            dir: dir.to_owned(),
            rotate_bytes: 1,
            rotate_age: Duration::from_secs(3600),
            retain_bytes: u64::MAX,
            retain_age: Duration::from_secs(86_400 * 365),
            fsync: Fsync::Never,
            format: Format::Lines,
        }
    }

    /// Denied flows, one decided by each of `rules`.
    fn flows_by(rules: &[String]) -> Vec<Record> {
        rules
            .iter()
            .map(|rule| {
                let mut record = Record::example_flow("deny", ("tcp", 6), 443);
                record.unmapped.flow.as_mut().unwrap().rule = Some(rule.clone());
                record
            })
            .collect()
    }

    /// Replaces line 2 of `path` (a flow) with something that is not a record but names
    /// `rule` (so no cheap test on the line passes it over).
    fn damage(path: &Path, rule: &str) {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        let damaged = format!("not a record \"{rule}\"");
        lines[1] = &damaged;
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    /// The rules of the flows a query for `rule` finds, or its error.
    fn query_rule(dir: &Path, rule: &str) -> Result<Vec<String>, ReadError> {
        let filter = Filter {
            rule: Some(rule.to_owned()),
            ..Filter::default()
        };
        let mut found = Vec::new();
        scan(
            dir,
            &filter,
            |_| {},
            |record| {
                found.push(record.flow().unwrap().rule.clone().unwrap());
                true
            },
        )?;
        Ok(found)
    }

    #[test]
    fn a_sealed_file_whose_summary_rules_out_the_filter_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(file_per_batch(dir.path()), "host-a", 0, None).unwrap();
        let names = |prefix: &str, count: usize| -> Vec<String> {
            (0..count).map(|i| format!("{prefix}{i}")).collect()
        };
        // File 2: rules a0, a1; file 3: b0; file 4: more rules than a summary lists.
        store.write(&mut flows_by(&names("a", 2)), 0).unwrap();
        store.write(&mut flows_by(&names("b", 1)), 0).unwrap();
        let many = names("m", crate::audit::record::SUMMARY_LIMIT + 1);
        store.write(&mut flows_by(&many), 0).unwrap();
        store.close(0).unwrap();
        let files = segments(dir.path()).unwrap();
        assert_eq!(files.len(), 4);
        let summary = |index: usize| {
            files::seal_of(&files[index])
                .unwrap()
                .unwrap()
                .0
                .unmapped
                .file
                .unwrap()
                .summary
                .unwrap()
        };
        assert!(summary(1).rules.may_hold("a1") && !summary(1).rules.may_hold("b0"));
        assert!(matches!(
            summary(3).rules,
            crate::audit::record::Bounded::Many(_)
        ));

        // File 2 is damaged: a query its summary rules out never reads it...
        damage(&files[1].path, "b0");
        assert_eq!(query_rule(dir.path(), "b0").unwrap(), ["b0"]);
        // ...one it may match reads it and finds the damage.
        damage(&files[1].path, "a0");
        assert!(matches!(
            query_rule(dir.path(), "a0"),
            Err(ReadError::Corrupt { ref path, line: 2, .. }) if *path == files[1].path
        ));
        // A summary of "many" rules rules nothing out: that file is read.
        damage(&files[3].path, "b0");
        assert!(matches!(
            query_rule(dir.path(), "b0"),
            Err(ReadError::Corrupt { ref path, line: 2, .. }) if *path == files[3].path
        ));
    }

    #[test]
    fn the_names_flows_use_come_from_summaries_that_list_them_for_files_wholly_in_range() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(file_per_batch(dir.path()), "host-a", 0, None).unwrap();
        // File 2: rules a0 at 10 ms and a1 at 20 ms; file 3: more rules than a summary
        // lists, at 30 ms.
        let mut early = flows_by(&["a0".to_owned(), "a1".to_owned()]);
        (early[0].time, early[1].time) = (10, 20);
        store.write(&mut early, 10).unwrap();
        let many: Vec<String> = (0..=crate::audit::record::SUMMARY_LIMIT)
            .map(|i| format!("m{i}"))
            .collect();
        let mut late = flows_by(&many);
        late.iter_mut().for_each(|record| record.time = 30);
        store.write(&mut late, 30).unwrap();
        store.close(40).unwrap();
        let files = segments(dir.path()).unwrap();
        // File 2 is damaged where only reading it would find out.
        damage(&files[1].path, "a0");
        let (segment_names, rule_names) = flow_names(dir.path(), None, None).unwrap();
        assert_eq!(
            segment_names,
            BTreeSet::from(["api".to_owned(), "db".to_owned()])
        );
        let expected: BTreeSet<String> = ["a0", "a1"]
            .into_iter()
            .map(str::to_owned)
            .chain(many.iter().cloned())
            .collect();
        assert_eq!(rule_names, expected);
        // A range that cuts file 2 needs its records, not its summary: it is read.
        assert!(matches!(
            flow_names(dir.path(), Some(15), None),
            Err(ReadError::Corrupt { ref path, line: 2, .. }) if *path == files[1].path
        ));
        // The file with "many" rules is read for them: damaged, it says so.
        damage(&files[2].path, "m0");
        assert!(matches!(
            flow_names(dir.path(), None, None),
            Err(ReadError::Corrupt { ref path, line: 2, .. }) if *path == files[2].path
        ));
    }

    #[test]
    fn an_unsealed_file_is_read_whatever_the_filter() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(file_per_batch(dir.path()), "host-a", 0, None).unwrap();
        store.write(&mut flows_by(&["a".to_owned()]), 0).unwrap();
        // The writer is killed: its file has no seal, hence no summary.
        drop(store);
        let files = segments(dir.path()).unwrap();
        damage(&files[1].path, "b");
        assert!(matches!(
            query_rule(dir.path(), "b"),
            Err(ReadError::Corrupt { line: 2, .. })
        ));
    }

    #[test]
    fn a_time_range_reads_only_the_files_and_records_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(
            StoreSettings {
                dir: dir.path().to_owned(),
                rotate_bytes: 4_000,
                rotate_age: Duration::from_secs(3600),
                retain_bytes: u64::MAX,
                retain_age: Duration::from_secs(86_400 * 365),
                fsync: Fsync::Never,
                format: Format::Lines,
            },
            "host-a",
            0,
            None,
        )
        .unwrap();
        // Gap records at times 0, 1000, ..., 99_000 ms, across many files.
        for t in 0..100 {
            let mut record = Record::new(Kind::Gap, t * 1000, "host-a", format!("gap {t}"));
            record.unmapped.gap = Some(crate::audit::record::Gap {
                lost: 1,
                cause: "ring-full".into(),
                error: None,
            });
            store.write(&mut [record], t * 1000).unwrap();
        }
        store.close(100_000).unwrap();
        assert!(segments(dir.path()).unwrap().len() > 5);
        let filter = Filter {
            since: Some(40_000),
            until: Some(50_000),
            store_records: true,
            ..Filter::default()
        };
        // The oldest file is damaged: a range past it never reads it.
        let oldest = &segments(dir.path()).unwrap()[0].path;
        let text = std::fs::read_to_string(oldest).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines[1] = "not a record";
        std::fs::write(oldest, lines.join("\n") + "\n").unwrap();
        assert!(matches!(
            scan(dir.path(), &Filter::default(), |_| {}, |_| true),
            Err(ReadError::Corrupt { line: 2, .. })
        ));
        let mut times = Vec::new();
        scan(
            dir.path(),
            &filter,
            |_| {},
            |record| {
                if record.unmapped.kind == Kind::Gap {
                    times.push(record.time);
                }
                true
            },
        )
        .unwrap();
        assert_eq!(times, (40..50).map(|t| t * 1000).collect::<Vec<_>>());
    }
}
