//! bpffs pin directories for tests that pin programs, links and maps, and a loader whose
//! maps are pinned in one.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use enforcer::{
    loader::{Loader, PinLayout, PinnedMaps},
    policy::image::MapImage,
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

/// A loader whose maps are pinned, and the switch the agent throws on them.
pub struct PinnedHost {
    /// The loader, `image` applied as generation 1.
    pub loader: Loader,
    /// Where its maps are pinned.
    pub layout: PinLayout,
    _pins: PinDir,
}

impl PinnedHost {
    /// Loads the kernel object pinned in a fresh directory and applies `image`, with
    /// de-duplication off (every attempt is a record).
    pub fn new(image: &MapImage) -> Self {
        let pins = PinDir::new();
        let layout = PinLayout::new(pins.path());
        let mut loader = Loader::load_pinned(&layout).expect("load the pinned object");
        let root = enforcer::host::cgroup2_mount().expect("cgroup2 mount");
        loader.apply(image, &root).expect("apply");
        loader
            .set_dedup_window(Duration::ZERO)
            .expect("de-duplication off");
        Self {
            loader,
            layout,
            _pins: pins,
        }
    }

    /// Sets or clears fail-closed the way the agent's audit consumer does.
    pub fn fail_closed(&self, on: bool) {
        PinnedMaps::open(&self.layout.maps_dir())
            .expect("open the pinned maps")
            .set_fail_closed(on)
            .expect("set fail-closed");
    }

    /// The XDP program's action on `frame`.
    pub fn xdp(&self, frame: &[u8]) -> u32 {
        self.loader.test_run_xdp(frame, 1).expect("test run").0
    }
}
