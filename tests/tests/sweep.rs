//! What a killed run leaves is found and removed: a process a test started without a
//! cgroup of its own is in the run's cgroup (so the sweep finds it by name), and the sweep
//! ends the processes in a leftover cgroup and unmounts a tmpfs a killed audit test left
//! on its files instead of failing on them. The objects a killed run would leave are made
//! here under this test's own prefix (`hd-sweep-<pid>-`), so the sweep it runs touches
//! nothing else on the host.

use std::{
    fs,
    net::SocketAddr,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command},
};

use enforcer_tests::{
    PREFIX,
    cgroup::TestCgroup,
    leftovers::{Leftover, Names, find, mounts_below, sweep},
    probe::Spawn,
    require_root,
};

/// Names made only by this test process.
fn names(prefix: String) -> Names {
    Names {
        objects: prefix.leak(),
        links: None,
    }
}

/// The cgroup of process `pid`, relative to the cgroup2 root.
fn cgroup_of(pid: u32) -> String {
    let line = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/pid/cgroup");
    line.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .expect("a cgroup v2 line")
        .to_owned()
}

#[test]
fn a_process_started_without_a_cgroup_is_in_the_runs_cgroup_and_found() {
    require_root();
    let server = Spawn::tcp_server(SocketAddr::from(([127, 0, 0, 1], 0))).serve();
    let ours = format!("{PREFIX}{}-", std::process::id());
    let cgroup = cgroup_of(server.pid());
    assert!(
        cgroup.starts_with(&format!("/{ours}")) && cgroup.ends_with("-procs"),
        "the server runs in {cgroup}, not in this run's cgroup"
    );
    let root = enforcer::host::cgroup2_mount().expect("cgroup2 mount");
    let dir = root.join(cgroup.trim_start_matches('/'));
    let found = find(names(ours));
    let pid = i32::try_from(server.pid()).expect("pid fits");
    assert!(
        found
            .iter()
            .any(|left| matches!(left, Leftover::Process { pid: p, .. } if *p == pid)),
        "a killed run's server would not be found: {found:#?}"
    );
    assert!(found.contains(&Leftover::Cgroup(dir.clone())), "{found:#?}");
    drop(server);
    assert!(
        !dir.exists(),
        "the run's cgroup {} outlives its last process",
        dir.display()
    );
}

/// Mounts a tmpfs on `dir`.
fn mount_tmpfs(dir: &Path) {
    fs::create_dir_all(dir).expect("create the mount point");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(dir)
        .status()
        .expect("run mount");
    assert!(status.success(), "mount a tmpfs on {}", dir.display());
}

/// `sleep` started in `cgroup` (a process a killed run would leave there).
fn sleeper_in(cgroup: &Path) -> Child {
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .expect("open cgroup.procs");
    let mut command = Command::new("sleep");
    command.arg("600");
    // SAFETY: the closure only calls write, which is async-signal-safe, on a descriptor
    // opened before the fork.
    unsafe {
        command.pre_exec(move || {
            let rc = libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1);
            if rc == 1 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    command.spawn().expect("start sleep")
}

/// Sweeps this test's objects again if it fails half-way.
struct SweepOnDrop(Names);

impl Drop for SweepOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::panic::catch_unwind(|| sweep(self.0));
        }
    }
}

#[test]
fn the_sweep_ends_a_killed_runs_processes_and_unmounts_what_it_left_mounted() {
    require_root();
    let prefix = format!("hd-sweep-{}-", std::process::id());
    let names = names(prefix.clone());
    let _guard = SweepOnDrop(names);
    assert!(find(names).is_empty(), "an earlier run left {prefix}*");

    // What a killed audit test leaves: a process in its cgroup, and its files with a
    // tmpfs (two, stacked) on its audit directory and one on a path with a space.
    let cgroup = TestCgroup::named(&format!("{prefix}0-procs"));
    let cgroup_dir = cgroup.path().to_owned();
    std::mem::forget(cgroup);
    let mut sleeper = sleeper_in(&cgroup_dir);
    let files = std::env::temp_dir().join(format!("{prefix}0"));
    let audit = files.join("audit");
    mount_tmpfs(&audit);
    mount_tmpfs(&audit);
    fs::write(audit.join("audit-00000001.jsonl"), "{}\n").expect("write on the tmpfs");
    let spaced = files.join("with space");
    mount_tmpfs(&spaced);

    let pid = i32::try_from(sleeper.id()).expect("pid fits");
    let found = find(names);
    let position = |wanted: &dyn Fn(&Leftover) -> bool| {
        found
            .iter()
            .position(wanted)
            .unwrap_or_else(|| panic!("not found: {found:#?}"))
    };
    let process = position(&|left| matches!(left, Leftover::Process { pid: p, .. } if *p == pid));
    let in_cgroup = position(&|left| *left == Leftover::Cgroup(cgroup_dir.clone()));
    let mounted = position(&|left| *left == Leftover::Mount(audit.clone()));
    let spaced_mount = position(&|left| *left == Leftover::Mount(spaced.clone()));
    let file_tree = position(&|left| *left == Leftover::Files(files.clone()));
    assert!(
        process < in_cgroup && mounted < file_tree && spaced_mount < file_tree,
        "removed in an order that cannot work: {found:#?}"
    );

    let swept = sweep(names);
    assert_eq!(swept, found);
    sleeper.wait().expect("reap sleep");
    assert!(find(names).is_empty(), "{:#?}", find(names));
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let left: Vec<PathBuf> = mounts_below(&mounts, &files).collect();
    assert!(left.is_empty(), "still mounted: {left:?}");
    assert!(!cgroup_dir.exists() && !files.exists());
}
