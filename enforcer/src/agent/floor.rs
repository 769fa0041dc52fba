//! The anti-rollback floor: the highest signed-bundle version this host has accepted,
//! kept in the data directory (`/var/lib/enforcer`), which survives a reboot, unlike the
//! runtime state in `/run`. A bundle older than the floor is refused. The floor is raised,
//! durably, before a newer bundle is applied, so no bundle is ever in force above it.

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::durable;

/// The floor's file in the data directory.
const FILE: &str = "bundle-floor.json";

/// The file's content.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    /// The highest bundle version accepted.
    version: u64,
}

/// Why the floor cannot be read or raised; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    /// The file cannot be read or written.
    #[error("anti-rollback floor {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not what the agent writes.
    #[error(
        "anti-rollback floor {path} is corrupt ({why}); restore it, or remove it only if no bundle older than the newest one deployed can reach this host"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The floor in a data directory.
#[derive(Debug, Clone)]
pub struct Floor {
    path: PathBuf,
}

impl Floor {
    /// The floor kept in `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(FILE),
        }
    }

    /// The highest version accepted so far; 0 when no bundle ever was.
    pub fn read(&self) -> Result<u64, FloorError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(source) => {
                return Err(FloorError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        serde_json::from_str::<Stored>(&text)
            .map(|stored| stored.version)
            .map_err(|err| FloorError::Corrupt {
                path: self.path.clone(),
                why: err.to_string(),
            })
    }

    /// Records `version` as the floor, durably (creating the directory if needed).
    pub fn raise(&self, version: u64) -> Result<(), FloorError> {
        let io_error = |source| FloorError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io_error)?;
        }
        let bytes = serde_json::to_vec(&Stored { version }).map_err(io::Error::other);
        durable::replace_file(&self.path, &bytes.map_err(io_error)?).map_err(io_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_is_no_floor_and_a_raised_floor_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let floor = Floor::new(&dir.path().join("lib"));
        assert_eq!(floor.read().unwrap(), 0);
        floor.raise(7).unwrap();
        assert_eq!(Floor::new(&dir.path().join("lib")).read().unwrap(), 7);
    }

    #[test]
    fn a_corrupt_floor_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "seven").unwrap();
        let err = Floor::new(dir.path()).read().unwrap_err().to_string();
        assert!(
            err.contains("bundle-floor.json") && err.contains("corrupt"),
            "{err}"
        );
    }
}
