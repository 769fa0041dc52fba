//! The store's files: `audit-<number>.jsonl` segment files numbered from 1, and `HEAD`,
//! the chain's end as the writer last left it (so a truncated newest file is detected).

use std::{
    fs::{self, File},
    io::{self, Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    chain::{self, Head},
    record::{Kind, Record},
};
use crate::durable;

/// The name of the file holding the chain's end.
pub const HEAD_FILE: &str = "HEAD";

/// One segment file of a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    /// Its number.
    pub number: u64,
    /// Its path.
    pub path: PathBuf,
}

/// The name of segment file `number`.
pub fn segment_name(number: u64) -> String {
    format!("audit-{number:08}.jsonl")
}

/// The segment number a file name stands for, if it is one.
fn segment_number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The store's segment files, in number order.
pub fn segments(dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(number) = entry.file_name().to_str().and_then(segment_number) {
            found.push(SegmentFile {
                number,
                path: entry.path(),
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

/// The seal of a sealed segment file: its last line, when that is a seal record.
pub fn seal_of(path: &Path) -> io::Result<Option<(Record, chain::Hash)>> {
    let Some(line) = last_line(path, 64 * 1024)? else {
        return Ok(None);
    };
    let Ok(checked) = chain::check(&line) else {
        return Ok(None);
    };
    Ok((checked.record.unmapped.kind == Kind::Seal).then_some((checked.record, checked.claimed)))
}

/// For tests: every line of the store in `dir`, file after file.
#[cfg(test)]
pub(crate) fn stored_lines(dir: &Path) -> Vec<String> {
    segments(dir)
        .unwrap()
        .iter()
        .flat_map(|segment| {
            fs::read_to_string(&segment.path)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_segment_names_are_segments() {
        assert_eq!(segment_number(&segment_name(42)), Some(42));
        assert_eq!(segment_number("audit-.jsonl"), None);
        assert_eq!(segment_number("audit-12.jsonl.bak"), None);
        assert_eq!(segment_number("HEAD"), None);
    }
}
