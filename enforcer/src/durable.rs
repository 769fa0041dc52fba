//! Replacing a small file so that a crash or power loss leaves either its old content or
//! its new content, never a torn or empty one: the new bytes go to a temporary file in the
//! same directory, which is synced, renamed over the old file, and the directory synced
//! so the rename itself is on disk (`atomic-write-file` does each step).

use std::{
    io::{self, Write as _},
    path::Path,
};

use atomic_write_file::AtomicWriteFile;

/// Replaces the file at `path` with `bytes`, durably and atomically.
pub fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = AtomicWriteFile::open(path)?;
    file.write_all(bytes)?;
    file.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("HEAD");
        replace_file(&path, b"first").unwrap();
        replace_file(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["HEAD"]);
    }

    #[test]
    fn a_missing_directory_is_an_error_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/HEAD");
        assert!(replace_file(&path, b"x").is_err());
        assert!(!dir.path().join("missing").exists());
    }
}
