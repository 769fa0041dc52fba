//! cgroup v2 directories standing for the local API services of a segment.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, Weak},
    time::{Duration, Instant},
};

use crate::{require_root, unique_name};

/// The cgroup of the processes this test process starts without a cgroup of their own
/// (servers and clients in the host's or a test namespace), so that a killed run's
/// processes are found by name (`<PREFIX><pid>-<serial>-procs`) and ended by the sweep.
/// Every holder keeps it; it is removed when the last one drops, and the next call makes
/// a new one.
pub fn run_cgroup() -> Arc<TestCgroup> {
    static RUN: Mutex<Weak<TestCgroup>> = Mutex::new(Weak::new());
    let mut run = RUN.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(cgroup) = run.upgrade() {
        return cgroup;
    }
    let cgroup = Arc::new(TestCgroup::named(&format!("{}-procs", unique_name())));
    *run = Arc::downgrade(&cgroup);
    cgroup
}

/// A cgroup v2 directory under the discovered cgroup2 mount, removed (with every process
/// still in it killed) on drop.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// Creates a uniquely named cgroup directly under the cgroup2 mount.
    pub fn new() -> Self {
        Self::named(&unique_name())
    }

    /// Creates the cgroup `name` directly under the cgroup2 mount.
    pub fn named(name: &str) -> Self {
        require_root();
        let root = enforcer::host::cgroup2_mount()
            .unwrap_or_else(|err| panic!("the privileged tests need cgroup v2: {err}"));
        Self::create(root.join(name))
    }

    /// Creates a child cgroup `name` of this one.
    pub fn child(&self, name: &str) -> Self {
        Self::create(self.path.join(name))
    }

    fn create(path: PathBuf) -> Self {
        fs::create_dir(&path)
            .unwrap_or_else(|err| panic!("cannot create cgroup {}: {err}", path.display()));
        Self { path }
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path relative to the cgroup2 mount, as policy files name cgroups.
    pub fn relative_path(&self) -> String {
        let root = enforcer::host::cgroup2_mount().expect("cgroup2 mount");
        self.path
            .strip_prefix(&root)
            .expect("test cgroups live under the cgroup2 mount")
            .to_string_lossy()
            .into_owned()
    }

    /// The `cgroup.procs` file; writing a pid (or "0" for oneself) moves a process in.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// The pids currently in this cgroup (not its children).
    pub fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.procs_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }

    /// The cgroup id the kernel reports for it (the directory's inode number).
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        fs::metadata(&self.path).expect("stat cgroup").ino()
    }
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(err) = remove_tree(&self.path)
            && !std::thread::panicking()
        {
            panic!("cannot remove cgroup {}: {err}", self.path.display());
        }
    }
}

/// Kills every process in the cgroup `dir` and below and removes it, children first.
///
/// cgroup.kill (5.14+) ends every process in the subtree; rmdir succeeds once the kernel
/// has reaped them, which takes a moment, so each directory gets up to 5 s.
pub(crate) fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    let children = match fs::read_dir(dir) {
        Ok(children) => children,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    for entry in children.flatten() {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(err) => return Err(err),
        }
    }
}
