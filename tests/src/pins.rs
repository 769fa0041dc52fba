//! bpffs pin directories for tests that pin programs, links and maps.

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::{require_root, unique_name};

/// A uniquely named directory on bpffs (mounted first if absent), removed with
/// everything pinned in it on drop.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// Mounts bpffs at the default place when absent and creates a directory on it.
    pub fn new() -> Self {
        require_root();
        let bpffs = Path::new(enforcer::host::DEFAULT_BPFFS);
        enforcer::host::ensure_bpffs(bpffs)
            .unwrap_or_else(|err| panic!("the privileged tests need bpffs: {err}"));
        let path = bpffs.join(unique_name());
        fs::create_dir(&path)
            .unwrap_or_else(|err| panic!("cannot create pin directory {}: {err}", path.display()));
        Self { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.path)
            && !std::thread::panicking()
        {
            panic!("cannot remove pin directory {}: {err}", self.path.display());
        }
    }
}
