//! The store's files: segment files numbered from 1, and `HEAD`, the chain's end as the
//! writer last left it (so a truncated newest file is detected). The writer starts each
//! segment file in the compact format (`audit-<number>.bin`, see [`compact`]); stores
//! written before it hold JSON Lines files (`audit-<number>.jsonl`), which stay readable,
//! verifiable and part of the chain. [`Records`] reads either.

use std::{
    fs::{self, File},
    io::{self, Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    chain::{self, Hash, Head},
    compact::{self, Decoder, FormatError},
    record::{Kind, Record},
};
use crate::durable;

/// The name of the file holding the chain's end.
pub const HEAD_FILE: &str = "HEAD";

/// How a segment file holds its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON record per line, each ending with its hash (stores written before the
    /// compact format).
    Lines,
    /// The compact binary format the writer uses.
    Compact,
}

impl Format {
    /// The file name extension.
    fn extension(self) -> &'static str {
        match self {
            Self::Lines => "jsonl",
            Self::Compact => "bin",
        }
    }
}

/// One segment file of a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    /// Its number.
    pub number: u64,
    /// Its path.
    pub path: PathBuf,
    /// How it holds its records.
    pub format: Format,
}

/// Segment file `number`'s name without its extension (`audit-<number>`), for messages
/// about a file whatever its format.
pub fn segment_name(number: u64) -> String {
    format!("audit-{number:08}")
}

/// The name of segment file `number` in `format`.
pub fn name_in(number: u64, format: Format) -> String {
    format!("audit-{number:08}.{}", format.extension())
}

/// The segment number and format a file name stands for, if it is a segment file.
fn segment_number(name: &str) -> Option<(u64, Format)> {
    let rest = name.strip_prefix("audit-")?;
    let (digits, format) = [Format::Compact, Format::Lines]
        .into_iter()
        .find_map(|format| {
            Some((
                rest.strip_suffix(format.extension())?.strip_suffix('.')?,
                format,
            ))
        })?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, format))
}

/// The store's segment files, in number order.
pub fn segments(dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some((number, format)) = entry.file_name().to_str().and_then(segment_number) {
            found.push(SegmentFile {
                number,
                path: entry.path(),
                format,
            });
        }
    }
    found.sort_by_key(|file| file.number);
    Ok(found)
}

/// The chain's end as recorded in `HEAD`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadRecord {
    /// The segment file the last record is in.
    pub file: u64,
    /// The last record's sequence number.
    pub sequence: u64,
    /// The last record's hash.
    pub hash: String,
    /// The kernel's count of events lost to a full ring that gap records in the store
    /// account for (a restarted agent continues from it while the kernel's counter runs
    /// on).
    #[serde(default)]
    pub ring_lost_accounted: u64,
}

/// Replaces `HEAD` atomically.
pub fn write_head(dir: &Path, file: u64, head: &Head, ring_lost_accounted: u64) -> io::Result<()> {
    let record = HeadRecord {
        file,
        sequence: head.sequence,
        hash: hex::encode(head.hash),
        ring_lost_accounted,
    };
    durable::replace_file(
        &dir.join(HEAD_FILE),
        &serde_json::to_vec(&record).expect("a head serialises"),
    )
}

/// `HEAD`, or `None` when there is none.
pub fn read_head(dir: &Path) -> io::Result<Option<HeadRecord>> {
    match fs::read(dir.join(HEAD_FILE)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, format!("HEAD: {err}"))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// The last complete line of a file (at most `limit` bytes from its end), if any.
pub fn last_line(path: &Path, limit: u64) -> io::Result<Option<String>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(limit);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let Some(end) = tail.iter().rposition(|&b| b == b'\n') else {
        return Ok(None);
    };
    let line_start = tail[..end]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |at| at + 1);
    if line_start == 0 && start != 0 {
        // The line is longer than the window: not one of ours.
        return Ok(None);
    }
    Ok(Some(
        String::from_utf8_lossy(&tail[line_start..end]).into_owned(),
    ))
}

/// The seal of a sealed segment file: its last record, when that is a seal record, with
/// its hash.
pub fn seal_of(file: &SegmentFile) -> io::Result<Option<(Record, Hash)>> {
    if file.format == Format::Compact {
        let bytes = last_batch_bytes(&file.path)?;
        return Ok(compact::last_batch(&bytes)
            .and_then(|(_, batch)| compact::last_json_record(batch))
            .filter(|(record, _)| record.unmapped.kind == Kind::Seal));
    }
    let Some(line) = last_line(&file.path, 64 * 1024)? else {
        return Ok(None);
    };
    let Ok(checked) = chain::check(&line) else {
        return Ok(None);
    };
    Ok((checked.record.unmapped.kind == Kind::Seal).then_some((checked.record, checked.claimed)))
}

/// The bytes of a compact file's last batch, as far as its length fields say (read
/// from the file's end, with the file's first bytes in front so that
/// [`compact::last_batch`] takes them as a whole file).
fn last_batch_bytes(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let magic = compact::FILE_MAGIC.len() as u64;
    if len < magic + 4 {
        return Ok(Vec::new());
    }
    file.seek(SeekFrom::Start(len - 4))?;
    let mut body = [0; 4];
    file.read_exact(&mut body)?;
    let start = len
        .saturating_sub(u64::from(u32::from_le_bytes(body)) + 8)
        .max(magic);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = compact::FILE_MAGIC.to_vec();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// One record read from a segment file.
#[derive(Debug)]
pub struct Stored<'a> {
    /// Its position in the file, from 1 (its line, in a JSON Lines file).
    pub number: usize,
    /// The record, `prev` and `hash` included.
    pub record: Record,
    /// The hash the file claims for it.
    pub claimed: Hash,
    /// The hash its bytes have.
    pub actual: Hash,
    /// Its line, in a JSON Lines file.
    pub line: Option<&'a str>,
    /// The file offset a reader that has it (and every record before it) goes on from.
    pub resume_at: u64,
}

impl Stored<'_> {
    /// The record as one line of OCSF JSON: its stored line, or the compact record
    /// rendered.
    pub fn json(&self) -> std::borrow::Cow<'_, str> {
        match self.line {
            Some(line) => line.into(),
            None => serde_json::to_string(&self.record)
                .expect("a record always serialises")
                .into(),
        }
    }
}

/// What is wrong where a record should be.
#[derive(Debug, thiserror::Error)]
pub enum Damage {
    /// A line of a JSON Lines file is not a chained record.
    #[error("line {number}: {error}")]
    Line {
        /// The line, from 1.
        number: usize,
        /// Why.
        error: chain::LineError,
    },
    /// A compact file's bytes are not records from here on.
    #[error(transparent)]
    Compact(#[from] FormatError),
}

/// Reads a segment file's records in order, from its start or from a position an earlier
/// read gave, in whichever format the file has.
#[derive(Debug)]
pub struct Records {
    format: Format,
    decoder: Decoder,
    /// Lines before the next one (JSON Lines).
    lines: usize,
}

impl Records {
    /// A reader of a file in `format`, at its start.
    pub fn new(format: Format) -> Self {
        Self {
            format,
            decoder: Decoder::default(),
            lines: 0,
        }
    }

    /// A reader of `file` at `offset` (0, or a `resume_at` an earlier read gave): a
    /// compact file's records before it are read for the names they define.
    pub fn at(file: &SegmentFile, offset: u64) -> io::Result<Self> {
        let mut records = Self::new(file.format);
        if offset > 0 {
            let mut before = Vec::new();
            File::open(&file.path)?
                .take(offset)
                .read_to_end(&mut before)?;
            match file.format {
                Format::Lines => records.lines = memchr::memchr_iter(b'\n', &before).count(),
                Format::Compact => {
                    records
                        .decoder
                        .read(&before, 0, |_| true)
                        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
                }
            }
        }
        Ok(records)
    }

    /// Reads the complete records of `bytes`, which start at file offset `base` (where
    /// the previous read ended). `each` gets every record, or what is wrong in its
    /// place, and may stop the reading by returning `false`. Returns the offset reading
    /// ended at: past the last complete record read (one being written is left for
    /// later). A compact file's damage ends the reading.
    pub fn read(
        &mut self,
        bytes: &[u8],
        base: u64,
        mut each: impl FnMut(Result<Stored<'_>, Damage>) -> bool,
    ) -> u64 {
        match self.format {
            Format::Lines => {
                let complete = memchr::memrchr(b'\n', bytes).map_or(0, |at| at + 1);
                let mut start = 0;
                for end in memchr::memchr_iter(b'\n', &bytes[..complete]) {
                    self.lines += 1;
                    let text = String::from_utf8_lossy(&bytes[start..end]);
                    start = end + 1;
                    let item = match chain::check(&text) {
                        Ok(checked) => Ok(Stored {
                            number: self.lines,
                            record: checked.record,
                            claimed: checked.claimed,
                            actual: checked.actual,
                            line: Some(&text),
                            resume_at: base + start as u64,
                        }),
                        Err(error) => Err(Damage::Line {
                            number: self.lines,
                            error,
                        }),
                    };
                    if !each(item) {
                        return base + start as u64;
                    }
                }
                base + complete as u64
            }
            Format::Compact => {
                let mut stopped = false;
                let read = self.decoder.read(bytes, base, |entry| {
                    stopped = !each(match entry.record() {
                        Ok(record) => Ok(Stored {
                            number: entry.number,
                            record,
                            claimed: entry.claimed,
                            actual: entry.actual,
                            line: None,
                            resume_at: entry.resume_at,
                        }),
                        Err(why) => Err(Damage::Compact(FormatError::Entry {
                            number: entry.number,
                            why,
                        })),
                    });
                    !stopped
                });
                match read {
                    Ok(end) => end,
                    Err(err) => {
                        if !stopped {
                            each(Err(err.into()));
                        }
                        base
                    }
                }
            }
        }
    }
}

/// Every record of `file` (read whole), as [`Records::read`] gives them; returns the
/// offset past its last complete record.
pub fn read_records(
    file: &SegmentFile,
    each: impl FnMut(Result<Stored<'_>, Damage>) -> bool,
) -> io::Result<u64> {
    let bytes = fs::read(&file.path)?;
    Ok(Records::new(file.format).read(&bytes, 0, each))
}

/// Every record of the store in `dir` as a line of OCSF JSON, file after file (the
/// stored line, or the compact record rendered): what `audit query --json` and the
/// forwarder give.
pub fn rendered_lines(dir: &Path) -> io::Result<Vec<String>> {
    let mut lines = Vec::new();
    for file in segments(dir)? {
        read_records(&file, |stored| {
            if let Ok(stored) = stored {
                lines.push(stored.json().into_owned());
            }
            true
        })?;
    }
    Ok(lines)
}

/// For tests: every record of the store in `dir` as a line of JSON, file after file.
#[cfg(test)]
pub(crate) fn stored_lines(dir: &Path) -> Vec<String> {
    rendered_lines(dir).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_segment_names_are_segments() {
        assert_eq!(
            segment_number(&name_in(42, Format::Compact)),
            Some((42, Format::Compact))
        );
        assert_eq!(segment_number(&segment_name(42)), None);
        assert_eq!(
            segment_number("audit-00000007.jsonl"),
            Some((7, Format::Lines))
        );
        assert_eq!(segment_number("audit-.jsonl"), None);
        assert_eq!(segment_number("audit-12bin"), None);
        assert_eq!(segment_number("audit-12.jsonl.bak"), None);
        assert_eq!(segment_number("HEAD"), None);
    }
}
