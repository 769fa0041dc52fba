//! Forward-secure sealing of the audit chain, after systemd-journald's Forward Secure
//! Sealing: the agent holds a sealing key that only moves forward; every interval it
//! writes an epoch seal into the chain, a record carrying an HMAC under the current key
//! of the chain's end, then replaces the key by its one-way successor and erases the old
//! one. An attacker who takes the host at time T gets the current key only: it cannot
//! compute an earlier one, so it cannot rewrite, reorder or drop anything an earlier seal
//! covers without a seal failing. The verification key, the first key, is shown once at
//! `enforcer audit setup-keys` and kept offline; from it `audit verify --verify-key`
//! derives the key of every epoch.
//!
//! Keys: `K(0)` is 32 random bytes; `K(i+1) = HMAC-SHA256(K(i), EVOLVE)`. The seal of
//! epoch `i` over the chain's end (sequence `s`, hash `h`) written at time `t` (ms) is
//! `HMAC-SHA256(K(i), TAG || i || s || h || t)`, integers as 8 big-endian bytes; the seal
//! record is itself the record after `s`, so the chain covers the seal too.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use atomic_write_file::AtomicWriteFile;
use ring::hmac;
use serde::{Deserialize, Serialize};

use super::{
    chain::{Hash, Head},
    record::{EpochSeal, Kind, Record},
};

/// The context string of key evolution.
const EVOLVE: &[u8] = b"enforcer audit sealing key: next epoch";
/// The context string of a seal.
const TAG: &[u8] = b"enforcer audit seal";
/// How a verification key starts when written out.
const VERIFY_KEY_PREFIX: &str = "enforcer-verify-1:";
/// The version of the key file's format.
const KEY_FILE_VERSION: u32 = 1;

/// The key of one epoch: its index and 32 secret bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SealingKey {
    index: u64,
    key: [u8; 32],
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealingKey {{ index: {}, key: <secret> }}", self.index)
    }
}

impl SealingKey {
    /// The epoch this key seals.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Replaces the key by the next epoch's; the old bytes are overwritten in place.
    pub fn evolve(&mut self) {
        let next = hmac_sha256(&self.key, &[EVOLVE]);
        self.key = next;
        self.index += 1;
    }

    /// Evolves the key up to epoch `index` (nothing when it is there or past it).
    pub fn advance_to(&mut self, index: u64) {
        while self.index < index {
            self.evolve();
        }
    }

    /// The seal of this epoch over the chain's end `(sequence, hash)` at `time_ms`.
    pub fn tag(&self, sequence: u64, hash: &Hash, time_ms: i64) -> [u8; 32] {
        hmac_sha256(
            &self.key,
            &[
                TAG,
                &self.index.to_be_bytes(),
                &sequence.to_be_bytes(),
                hash,
                &time_ms.to_be_bytes(),
            ],
        )
    }
}

fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut context = hmac::Context::with_key(&key);
    for part in parts {
        context.update(part);
    }
    context
        .sign()
        .as_ref()
        .try_into()
        .expect("HMAC-SHA256 is 32 bytes")
}

/// The verification key: the first sealing key, from which every later one follows.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyKey([u8; 32]);

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerifyKey(<secret>)")
    }
}

impl std::fmt::Display for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{VERIFY_KEY_PREFIX}{}", hex::encode(self.0))
    }
}

impl std::str::FromStr for VerifyKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let digits = text
            .trim()
            .strip_prefix(VERIFY_KEY_PREFIX)
            .ok_or_else(|| format!("a verification key starts with `{VERIFY_KEY_PREFIX}`"))?;
        let mut key = [0; 32];
        hex::decode_to_slice(digits, &mut key)
            .map_err(|_| "a verification key ends with 64 hex digits".to_owned())?;
        Ok(Self(key))
    }
}

impl VerifyKey {
    /// A new random key pair: the verification key and epoch 0's sealing key.
    pub fn generate() -> io::Result<(Self, SealingKey)> {
        let mut key = [0; 32];
        getrandom::fill(&mut key).map_err(io::Error::other)?;
        Ok((Self(key), SealingKey { index: 0, key }))
    }

    /// The sealing key of epoch 0.
    pub fn first(&self) -> SealingKey {
        SealingKey {
            index: 0,
            key: self.0,
        }
    }
}

/// The sealing key file as stored.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    index: u64,
    key: String,
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// It cannot be read or written.
    #[error("sealing key {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// It is not a key file.
    #[error("sealing key {}: {why}", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// Reads the sealing key at `path`.
pub fn read_key(path: &Path) -> Result<SealingKey, KeyFileError> {
    let invalid = |why: String| KeyFileError::Invalid {
        path: path.to_owned(),
        why,
    };
    let bytes = fs::read(path).map_err(|source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    let file: KeyFile =
        serde_json::from_slice(&bytes).map_err(|err| invalid(format!("not a key file: {err}")))?;
    if file.version != KEY_FILE_VERSION {
        return Err(invalid(format!(
            "version {} (this build reads {KEY_FILE_VERSION})",
            file.version
        )));
    }
    let mut key = [0; 32];
    hex::decode_to_slice(&file.key, &mut key)
        .map_err(|_| invalid("`key` is not 64 hex digits".to_owned()))?;
    Ok(SealingKey {
        index: file.index,
        key,
    })
}

/// Replaces the sealing key at `path` by `key`, durably and atomically, readable by its
/// owner only. The previous key is gone from the file system's view once this returns.
pub fn write_key(path: &Path, key: &SealingKey) -> Result<(), KeyFileError> {
    let io_error = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let text = serde_json::to_vec(&KeyFile {
        version: KEY_FILE_VERSION,
        index: key.index,
        key: hex::encode(key.key),
    })
    .expect("a key file serialises");
    let mut file = AtomicWriteFile::open(path).map_err(io_error)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_error)?;
    file.write_all(&text).map_err(io_error)?;
    file.commit().map_err(io_error)
}

/// The agent's side: the current key, where it lives and when the next seal is due.
#[derive(Debug)]
pub struct Sealer {
    path: PathBuf,
    key: SealingKey,
    interval: Duration,
    due: Instant,
}

impl Sealer {
    /// Loads the key at `path`; the first seal is due after `interval`.
    pub fn load(path: &Path, interval: Duration) -> Result<Self, KeyFileError> {
        Ok(Self {
            path: path.to_owned(),
            key: read_key(path)?,
            interval,
            due: Instant::now() + interval,
        })
    }

    /// Moves the key past `last_sealed`, the last epoch the store holds a seal of (a
    /// crash between writing a seal and storing the next key leaves the file one
    /// behind), storing it when it moved.
    pub fn resume_after(&mut self, last_sealed: Option<u64>) -> Result<(), KeyFileError> {
        if let Some(last) = last_sealed
            && self.key.index <= last
        {
            self.key.advance_to(last + 1);
            write_key(&self.path, &self.key)?;
        }
        Ok(())
    }

    /// The epoch the next seal is of.
    pub fn index(&self) -> u64 {
        self.key.index
    }

    /// How long until the next seal is due (zero when it is).
    pub fn due_in(&self) -> Duration {
        self.due.saturating_duration_since(Instant::now())
    }

    /// The seal record of the current epoch over `head`, the chain's end, at `now_ms`.
    pub fn seal(&self, head: &Head, now_ms: i64, hostname: &str) -> Record {
        let mut record = Record::new(
            Kind::Epoch,
            now_ms,
            hostname,
            format!(
                "audit sealed up to record {} (epoch {})",
                head.sequence, self.key.index
            ),
        );
        record.unmapped.epoch = Some(EpochSeal {
            index: self.key.index,
            tag: hex::encode(self.key.tag(head.sequence, &head.hash, now_ms)),
        });
        record
    }

    /// After a seal is on disk: moves to the next epoch's key and stores it over the old
    /// one. A failure to store is logged; the old key is gone from memory either way, and
    /// the next seal stores it again.
    pub fn sealed(&mut self) {
        self.key.evolve();
        self.due = Instant::now() + self.interval;
        if let Err(err) = write_key(&self.path, &self.key) {
            tracing::error!(error = %err, "cannot store the next sealing key; the old one stays on disk until the next seal");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_evolve_one_way_and_the_verification_key_derives_every_epoch() {
        let (verify, mut sealing) = VerifyKey::generate().unwrap();
        let tag0 = sealing.tag(5, &[7; 32], 1_000);
        sealing.evolve();
        sealing.evolve();
        let mut derived = verify.first();
        assert_eq!(derived.tag(5, &[7; 32], 1_000), tag0);
        derived.advance_to(2);
        assert_eq!(derived, sealing);
        // A tag binds the epoch, the sequence, the hash and the time.
        let tag2 = sealing.tag(5, &[7; 32], 1_000);
        assert_ne!(tag2, tag0);
        assert_ne!(sealing.tag(6, &[7; 32], 1_000), tag2);
        assert_ne!(sealing.tag(5, &[8; 32], 1_000), tag2);
        assert_ne!(sealing.tag(5, &[7; 32], 1_001), tag2);
    }

    #[test]
    fn the_verification_key_round_trips_and_bad_text_is_named() {
        let (verify, _) = VerifyKey::generate().unwrap();
        let text = verify.to_string();
        assert!(text.starts_with("enforcer-verify-1:"));
        assert!(text.parse::<VerifyKey>().unwrap() == verify);
        assert!(
            "abc"
                .parse::<VerifyKey>()
                .unwrap_err()
                .contains("starts with")
        );
        assert!(
            "enforcer-verify-1:zz"
                .parse::<VerifyKey>()
                .unwrap_err()
                .contains("64 hex digits")
        );
    }

    #[test]
    fn the_key_file_is_private_and_resuming_moves_past_the_last_seal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seal.key");
        let (_, sealing) = VerifyKey::generate().unwrap();
        write_key(&path, &sealing).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mut sealer = Sealer::load(&path, Duration::from_secs(60)).unwrap();
        sealer.resume_after(Some(3)).unwrap();
        assert_eq!(sealer.index(), 4);
        assert_eq!(read_key(&path).unwrap().index(), 4);
        sealer.sealed();
        assert_eq!(read_key(&path).unwrap().index(), 5);
        fs::write(&path, b"{}").unwrap();
        assert!(matches!(read_key(&path), Err(KeyFileError::Invalid { .. })));
    }
}
