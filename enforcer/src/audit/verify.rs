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
    files::{self, SegmentFile},
    record::{Kind, Record},
};

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
}

/// The outcome of a verification.
pub type Outcome = Result<Summary, Break>;

/// Where the walk stands.
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
}

/// Verifies the store in `dir`.
pub fn verify(dir: &Path) -> Result<Outcome, std::io::Error> {
    let segments = files::segments(dir)?;
    let head = files::read_head(dir)?;
    let mut walk = Walk {
        summary: Summary::default(),
        last: None,
        removed: BTreeMap::new(),
        head_sequence: head.as_ref().map(|head| head.sequence),
        head_record: None,
    };
    let Some(first) = segments.first() else {
        return Ok(match head {
            Some(head) => Err(Break {
                file: dir.join(files::HEAD_FILE),
                line: 0,
                sequence: Some(head.sequence),
                why: format!(
                    "HEAD names record {} in {} but the store has no files: they were removed",
                    head.sequence,
                    files::segment_name(head.file)
                ),
            }),
            None => Ok(Summary::default()),
        });
    };
    let mut first_prev = None;
    for (expected_number, (index, segment)) in (first.number..).zip(segments.iter().enumerate()) {
        if segment.number != expected_number {
            return Ok(Err(Break {
                file: dir.join(files::segment_name(expected_number)),
                line: 0,
                sequence: None,
                why: format!(
                    "the file is missing: {} follows {}",
                    files::segment_name(segment.number),
                    files::segment_name(expected_number - 1)
                ),
            }));
        }
        let is_last = index + 1 == segments.len();
        if let Err(broken) = walk_file(segment, is_last, &mut walk, &mut first_prev) {
            return Ok(Err(broken));
        }
    }

    // The first file either starts the chain or follows a file retention removed.
    let (first_sequence, prev) = first_prev.expect("a walked file has a first record");
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
    }
    Ok(Ok(walk.summary))
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
    walk.summary.files += 1;
    let mut last_record: Option<Record> = None;
    for (in_file, (index, line)) in (0_u64..).zip(text.lines().enumerate()) {
        let number = index + 1;
        let checked = chain::check(line).map_err(|err| broken(number, None, format!("{err}")))?;
        let record = checked.record;
        let sequence = record.sequence();
        if checked.claimed != checked.actual {
            return Err(broken(
                number,
                Some(sequence),
                "the record was altered: its content does not match its hash".to_owned(),
            ));
        }
        if walk.head_sequence == Some(sequence) {
            walk.head_record = Some((
                segment.number,
                segment.path.clone(),
                number,
                checked.claimed,
            ));
        }
        match walk.last {
            None => *first_prev = Some((sequence, record.unmapped.prev.clone())),
            Some((last, hash)) => {
                if sequence <= last {
                    return Err(broken(
                        number,
                        Some(sequence),
                        format!(
                            "record {sequence} comes after record {last}: records were inserted or reordered"
                        ),
                    ));
                }
                if sequence > last + 1 {
                    return Err(broken(
                        number,
                        Some(sequence),
                        format!(
                            "records {}..={} are missing after record {last}: they were deleted",
                            last + 1,
                            sequence - 1
                        ),
                    ));
                }
                if record.unmapped.prev != hex::encode(hash) {
                    return Err(broken(
                        number,
                        Some(sequence),
                        format!(
                            "record {sequence} does not follow record {last}: its `prev` is another record's hash (a record was replaced or inserted)"
                        ),
                    ));
                }
            }
        }
        if number == 1 {
            let opens_this_file = record.unmapped.kind == Kind::Open
                && record
                    .unmapped
                    .file
                    .as_ref()
                    .is_some_and(|file| file.number == segment.number);
            if !opens_this_file {
                return Err(broken(
                    number,
                    Some(sequence),
                    "the file does not start with its own open record".to_owned(),
                ));
            }
        }
        if record.unmapped.kind == Kind::Seal {
            let claimed = record.unmapped.file.as_ref().and_then(|file| file.records);
            if claimed != Some(in_file) {
                return Err(broken(
                    number,
                    Some(sequence),
                    format!(
                        "the seal counts {} records but the file has {in_file} before it",
                        claimed.unwrap_or(0)
                    ),
                ));
            }
        }
        match record.unmapped.kind {
            Kind::Flow => walk.summary.flows += 1,
            Kind::Gap => {
                walk.summary.lost += record.unmapped.gap.as_ref().map_or(0, |gap| gap.lost);
            }
            Kind::Retention => {
                for removed in record.unmapped.removed.iter().flatten() {
                    walk.removed.insert(
                        removed.number,
                        (removed.last_sequence, removed.seal_hash.clone()),
                    );
                }
            }
            Kind::Open | Kind::Seal => {}
        }
        if last_record
            .as_ref()
            .is_some_and(|last| last.unmapped.kind == Kind::Seal)
        {
            return Err(broken(
                number,
                Some(sequence),
                "a record follows the file's seal".to_owned(),
            ));
        }
        walk.summary.records += 1;
        walk.summary.last_sequence = sequence;
        walk.last = Some((sequence, checked.claimed));
        last_record = Some(record);
    }
    let sealed = last_record
        .as_ref()
        .is_some_and(|record| record.unmapped.kind == Kind::Seal);
    if last_record.is_none() {
        if is_last {
            return Ok(());
        }
        return Err(broken(0, None, "the file is empty".to_owned()));
    }
    if !is_last && !sealed {
        return Err(broken(
            text.lines().count(),
            walk.last.map(|(sequence, _)| sequence),
            "the file ends without its seal: it was truncated".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::audit::{
        record::Gap,
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
        }
    }

    fn gap(n: u64) -> Record {
        let mut record = Record::new(Kind::Gap, 1_000 + n as i64, "host-a", format!("gap {n}"));
        record.unmapped.gap = Some(Gap {
            lost: n,
            cause: "ring-full".to_owned(),
            error: None,
        });
        record
    }

    /// A store of three files (two sealed) of 30 gap records written in batches of 3.
    fn store(dir: &Path) {
        let mut store = Store::open(settings(dir, 2_000), "host-a", 1_000).unwrap();
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
        verify(dir).unwrap().expect_err("the tampering is detected")
    }

    fn second_file(dir: &Path) -> PathBuf {
        files::segments(dir).unwrap()[1].path.clone()
    }

    #[test]
    fn an_untouched_store_verifies_clean_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path());
        let summary = verify(dir.path()).unwrap().unwrap();
        assert_eq!(summary.lost, (1..=30).sum::<u64>());
        // A restart seals the newest file and continues the chain in a new one.
        let mut again = Store::open(settings(dir.path(), 2_000), "host-a", 3_000).unwrap();
        again.write(&mut [gap(5)], 3_000).unwrap();
        again.close(3_000).unwrap();
        let summary = verify(dir.path()).unwrap().unwrap();
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
        assert!(
            broken.why.contains("deleted") || broken.why.contains("reordered"),
            "{broken}"
        );
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
        let mut store = Store::open(settings, "host-a", 1_000).unwrap();
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
        assert!(total <= 6_000 + 2_500, "total {total}");
        let summary = verify(dir.path()).unwrap().unwrap();
        assert_eq!(summary.removed_by_retention, segments[0].number - 1);
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
        let again = Store::open(settings(dir.path(), 2_000), "host-a", 3_000).unwrap();
        again.close(3_000).unwrap();
        let summary = verify(dir.path()).unwrap().unwrap();
        assert_eq!(summary.lost, (1..=30).sum::<u64>() + 1);
    }
}
