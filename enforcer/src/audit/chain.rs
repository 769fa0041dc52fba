//! The hash chain that makes the store tamper-evident. Each line is a record serialised
//! with `unmapped.prev` (the previous record's hash) and without `unmapped.hash`; its
//! SHA-256 is then written as the line's final key, `,"hash":"<64 hex>"}}`. Editing any
//! byte of a record changes its hash; removing, inserting or reordering records breaks
//! the `prev` links and the sequence numbers.

use crate::digest::{finish, hasher, sha256};

use super::record::Record;

/// The `prev` of the very first record of a store.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A SHA-256 digest.
pub type Hash = crate::digest::Sha256;

/// The chain's end: the last record's sequence number and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The last sequence number written (0 before the first record).
    pub sequence: u64,
    /// The last record's hash ([`GENESIS`] bytes before the first record).
    pub hash: Hash,
}

impl Head {
    /// The head of an empty store.
    pub const GENESIS: Self = Self {
        sequence: 0,
        hash: [0; 32],
    };
}

/// What a line ends with: `,"hash":"` + 64 hex digits + `"}}`.
const HASH_KEY: &str = ",\"hash\":\"";
/// The length of that end of a line.
pub const SUFFIX_LEN: usize = HASH_KEY.len() + 64 + 3;

/// Appends `record` to `out` as one chained line (newline included), as the record after
/// `head`, and advances `head`. The record's sequence number and `prev` are set here.
pub fn append(record: &mut Record, head: &mut Head, out: &mut Vec<u8>) {
    record.metadata.sequence = head.sequence + 1;
    record.caption();
    record.unmapped.prev = hex::encode(head.hash);
    record.unmapped.hash = None;
    let start = out.len();
    serde_json::to_writer(&mut *out, record).expect("a record always serialises");
    // `unmapped` is the last key and ends the object, so the body ends with `}}`.
    debug_assert!(out.ends_with(b"}}"));
    let hash = sha256(&out[start..]);
    out.truncate(out.len() - 2);
    out.extend_from_slice(HASH_KEY.as_bytes());
    let mut digits = [0u8; 64];
    hex::encode_to_slice(hash, &mut digits).expect("64 digits hold 32 bytes");
    out.extend_from_slice(&digits);
    out.extend_from_slice(b"\"}}\n");
    head.sequence += 1;
    head.hash = hash;
}

/// Why a line is not a chained record.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The line does not end with the hash key.
    #[error("the line does not end with its hash")]
    NoHash,
    /// The line is not a record.
    #[error("not an audit record: {0}")]
    Json(#[from] serde_json::Error),
}

/// A line taken apart: the record, the hash it claims and the hash its content has.
#[derive(Debug)]
pub struct CheckedLine {
    /// The record.
    pub record: Record,
    /// The hash written in the line.
    pub claimed: Hash,
    /// The hash of the line's content.
    pub actual: Hash,
}

/// Takes one line (without its newline) apart and hashes its content.
pub fn check(line: &str) -> Result<CheckedLine, LineError> {
    let claimed = claimed_hash(line).ok_or(LineError::NoHash)?;
    let body_end = line.len() - SUFFIX_LEN;
    let mut hasher = hasher();
    hasher.update(&line.as_bytes()[..body_end]);
    hasher.update(b"}}");
    let record: Record = serde_json::from_str(line)?;
    Ok(CheckedLine {
        record,
        claimed,
        actual: finish(hasher),
    })
}

/// The hash a line claims, without parsing the rest.
pub fn claimed_hash(line: &str) -> Option<Hash> {
    let bytes = line.as_bytes();
    if bytes.len() < SUFFIX_LEN || !line.ends_with("\"}}") {
        return None;
    }
    let key_at = bytes.len() - SUFFIX_LEN;
    if &bytes[key_at..key_at + HASH_KEY.len()] != HASH_KEY.as_bytes() {
        return None;
    }
    let mut hash = [0u8; 32];
    hex::decode_to_slice(&bytes[key_at + HASH_KEY.len()..bytes.len() - 3], &mut hash).ok()?;
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::Kind;

    fn record(message: &str) -> Record {
        Record::new(Kind::Gap, 1_700_000_000_000, "host-a", message.to_owned())
    }

    #[test]
    fn a_chained_line_checks_and_links_to_the_previous() {
        let mut head = Head::GENESIS;
        let mut out = Vec::new();
        append(&mut record("one"), &mut head, &mut out);
        let first_hash = head.hash;
        append(&mut record("two"), &mut head, &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let one = check(lines[0]).unwrap();
        assert_eq!(one.claimed, one.actual);
        assert_eq!(one.actual, first_hash);
        assert_eq!(one.record.unmapped.prev, GENESIS);
        assert_eq!(one.record.sequence(), 1);
        let two = check(lines[1]).unwrap();
        assert_eq!(two.claimed, two.actual);
        assert_eq!(two.record.unmapped.prev, hex::encode(first_hash));
        assert_eq!(two.record.sequence(), 2);
        assert_eq!(head.sequence, 2);
    }

    #[test]
    fn an_edited_line_no_longer_matches_its_hash() {
        let mut out = Vec::new();
        append(
            &mut record("original"),
            &mut Head::GENESIS.clone(),
            &mut out,
        );
        let edited = String::from_utf8(out)
            .unwrap()
            .replace("original", "0riginal");
        let checked = check(edited.trim_end()).unwrap();
        assert_ne!(checked.claimed, checked.actual);
        assert!(matches!(check("{}"), Err(LineError::NoHash)));
    }
}
