//! Reading a store for people: every record in chain order, filtered. Files whose seal
//! shows they end before `since` or start after `until` are skipped unread. A line that
//! is not a record is an error naming its file and line (`enforcer audit verify` says
//! more).

use std::{
    fs::File,
    io::{self, BufRead as _, BufReader},
    net::IpAddr,
    path::{Path, PathBuf},
};

use super::{
    files::{self, SegmentFile},
    record::{Kind, Record},
};

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

    /// A cheap test on the raw line: `false` means the record cannot match.
    fn may_match(&self, line: &str) -> bool {
        let quoted = |value: &str| line.contains(&format!("\"{value}\""));
        self.segment.as_deref().is_none_or(quoted)
            && self.rule.as_deref().is_none_or(quoted)
            && self.verdict.as_deref().is_none_or(quoted)
            && self.addr.is_none_or(|addr| quoted(&addr.to_string()))
    }

    /// Whether `time` is in the range.
    fn in_time(&self, time: i64) -> bool {
        self.since.is_none_or(|since| time >= since) && self.until.is_none_or(|until| time < until)
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

    /// Whether a sealed file's time range can hold a match.
    fn may_hold(&self, first_time: i64, last_time: i64) -> bool {
        self.since.is_none_or(|since| last_time >= since)
            && self.until.is_none_or(|until| first_time < until)
    }
}

/// The store's files, oldest first.
pub fn segments(dir: &Path) -> Result<Vec<SegmentFile>, ReadError> {
    files::segments(dir).map_err(|source| ReadError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// Calls `found` with every record of `dir` that `filter` matches, in chain order; stops
/// early when `found` returns `false`. `progress` hears each file's size once it is done.
pub fn scan(
    dir: &Path,
    filter: &Filter,
    mut progress: impl FnMut(u64),
    mut found: impl FnMut(Record) -> bool,
) -> Result<(), ReadError> {
    for segment in segments(dir)? {
        let size = std::fs::metadata(&segment.path).map_or(0, |m| m.len());
        if (filter.since.is_some() || filter.until.is_some())
            && let Ok(Some((seal, _))) = files::seal_of(&segment.path)
            && let Some(file) = &seal.unmapped.file
            && !filter.may_hold(
                file.first_time.unwrap_or(i64::MIN),
                file.last_time.unwrap_or(i64::MAX),
            )
        {
            progress(size);
            continue;
        }
        if !scan_file(&segment.path, filter, &mut found)? {
            return Ok(());
        }
        progress(size);
    }
    Ok(())
}

/// Scans one file's complete lines; `false` when `found` asked to stop.
fn scan_file(
    path: &Path,
    filter: &Filter,
    found: &mut impl FnMut(Record) -> bool,
) -> Result<bool, ReadError> {
    let io_error = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path).map_err(io_error)?);
    let prefilter = filter.flow_filters();
    let timed = filter.since.is_some() || filter.until.is_some();
    let mut bytes = Vec::new();
    for index in 0.. {
        bytes.clear();
        reader.read_until(b'\n', &mut bytes).map_err(io_error)?;
        // The end of the file, or a record the agent is writing right now.
        if bytes.pop() != Some(b'\n') {
            break;
        }
        let line = String::from_utf8_lossy(&bytes);
        if prefilter && !filter.may_match(&line) {
            continue;
        }
        // A time range is checked on the time alone before the whole record is parsed.
        if timed
            && let Ok(TimeOnly { time }) = serde_json::from_str::<TimeOnly>(&line)
            && !filter.in_time(time)
        {
            continue;
        }
        let record: Record = serde_json::from_str(&line).map_err(|source| ReadError::Corrupt {
            path: path.to_owned(),
            line: index + 1,
            source,
        })?;
        if filter.matches(&record) && !found(record) {
            return Ok(false);
        }
    }
    Ok(true)
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
