//! What an interrupted test run or demo left on this host, found by name and removed.
//!
//! A test process or demo that is killed outright runs none of its guards' drops: its
//! namespaces, veth pairs, cgroups, pin directories and files stay, and so do the agents
//! it started (they are not in its cgroups). Every such object carries a known prefix, so
//! [`find`] lists them and [`sweep`] removes them; `./x test` sweeps before it starts and
//! the demo before each run, and the `leftovers` test asserts that a run left nothing.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{DEMO_PREFIX, LINK_PREFIX, PREFIX, cgroup, cmd::run_quietly};

/// The names one family of objects carries.
#[derive(Clone, Copy, Debug)]
pub struct Names {
    /// Prefix of its namespaces, top-level cgroups, pin directories and temporary files.
    pub objects: &'static str,
    /// Prefix of its interfaces in the host's own namespace, if it makes any there.
    pub links: Option<&'static str>,
}

/// What the privileged tests make.
pub const TESTS: Names = Names {
    objects: PREFIX,
    links: Some(LINK_PREFIX),
};

/// What the demo enclave makes (its veths live inside its own namespaces).
pub const DEMO: Names = Names {
    objects: DEMO_PREFIX,
    links: None,
};

/// One object left on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leftover {
    /// A process whose command line names one of the temporary files (an agent).
    Process {
        /// Its pid.
        pid: libc::pid_t,
        /// Its command line, arguments joined by spaces.
        command: String,
    },
    /// A network namespace, by name.
    Netns(String),
    /// An interface in the host's own namespace, by name.
    Link(String),
    /// A cgroup directory (with whatever is below it).
    Cgroup(PathBuf),
    /// A directory on bpffs (with whatever is pinned in it).
    Pins(PathBuf),
    /// A temporary file or directory.
    Files(PathBuf),
}

impl fmt::Display for Leftover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Process { pid, command } => write!(f, "process {pid} ({command})"),
            Self::Netns(name) => write!(f, "network namespace {name}"),
            Self::Link(name) => write!(f, "interface {name}"),
            Self::Cgroup(path) => write!(f, "cgroup {}", path.display()),
            Self::Pins(path) => write!(f, "pin directory {}", path.display()),
            Self::Files(path) => write!(f, "files {}", path.display()),
        }
    }
}

/// Every object named like `names` on this host now, processes first, in the order
/// [`sweep`] removes them.
pub fn find(names: Names) -> Vec<Leftover> {
    let ours = |name: &str| name.starts_with(names.objects);
    let temp = std::env::temp_dir();
    let mut found = processes_naming(&temp.join(names.objects));
    found.extend(
        entries(Path::new("/run/netns"), ours)
            .map(name_of)
            .map(Leftover::Netns),
    );
    if let Some(links) = names.links {
        found.extend(
            entries(Path::new("/sys/class/net"), |name| name.starts_with(links))
                .map(name_of)
                .map(Leftover::Link),
        );
    }
    if let Ok(root) = enforcer::host::cgroup2_mount() {
        found.extend(entries(&root, ours).map(Leftover::Cgroup));
    }
    found.extend(entries(Path::new(enforcer::host::DEFAULT_BPFFS), ours).map(Leftover::Pins));
    found.extend(entries(&temp, ours).map(Leftover::Files));
    found
}

/// Removes every object named like `names`: kills the processes (also those inside its
/// namespaces and cgroups), deletes the namespaces, interfaces and cgroups, and removes
/// the pins (which detaches their programs) and files. Returns what it removed; panics
/// naming the object it could not remove.
pub fn sweep(names: Names) -> Vec<Leftover> {
    let found = find(names);
    for leftover in &found {
        remove(leftover);
    }
    found
}

fn remove(leftover: &Leftover) {
    match leftover {
        Leftover::Process { pid, .. } => kill_and_wait(*pid),
        Leftover::Netns(name) => {
            for pid in pids_in_netns(name) {
                kill_and_wait(pid);
            }
            assert!(
                run_quietly("ip", &["netns", "del", name]),
                "cannot delete {leftover}"
            );
        }
        // Deleting a namespace deletes the veth pairs into it, host ends included, but the
        // kernel does that in the background: a failed delete may only have lost the race.
        Leftover::Link(name) => {
            let link = Path::new("/sys/class/net").join(name);
            if link.exists() && !run_quietly("ip", &["link", "del", name]) {
                wait_until(|| !link.exists(), &format!("cannot delete {leftover}"));
            }
        }
        Leftover::Cgroup(path) => cgroup::remove_tree(path)
            .unwrap_or_else(|err| panic!("cannot remove {leftover}: {err}")),
        Leftover::Pins(path) | Leftover::Files(path) => {
            let removed = if path.is_dir() {
                fs::remove_dir_all(path)
            } else {
                fs::remove_file(path)
            };
            removed.unwrap_or_else(|err| panic!("cannot remove {leftover}: {err}"));
        }
    }
}

/// The entries of `dir` whose file names `keep` accepts, as full paths.
fn entries(dir: &Path, keep: impl Fn(&str) -> bool) -> impl Iterator<Item = PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| keep(&entry.file_name().to_string_lossy()))
        .map(|entry| entry.path())
        .collect();
    paths.sort();
    paths.into_iter()
}

fn name_of(path: PathBuf) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Live processes (not this one) with an argument under a path starting with `prefix`.
fn processes_naming(prefix: &Path) -> Vec<Leftover> {
    let prefix = prefix.to_string_lossy().into_owned();
    let own = std::process::id();
    entries(Path::new("/proc"), |name| {
        name.parse::<u32>().is_ok_and(|pid| pid != own)
    })
    .filter_map(|dir| {
        let pid = name_of(dir.clone()).parse().ok()?;
        let cmdline = fs::read(dir.join("cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|byte| *byte == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        (alive(pid) && args.iter().any(|arg| arg.contains(&prefix))).then(|| Leftover::Process {
            pid,
            command: args.join(" "),
        })
    })
    .collect()
}

fn pids_in_netns(name: &str) -> Vec<libc::pid_t> {
    std::process::Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` is a process that has not exited (a zombie has, and holds nothing).
fn alive(pid: libc::pid_t) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the parenthesised command name, which may hold spaces.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// SIGKILLs `pid` and waits (up to 5 s) until it has exited.
fn kill_and_wait(pid: libc::pid_t) {
    // SAFETY: kill() takes no pointers; a pid that has gone meanwhile only yields ESRCH.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until(|| !alive(pid), &format!("process {pid} outlived SIGKILL"));
}

/// Polls `done` every 10 ms for up to 5 s; panics with `failure` if it never holds.
fn wait_until(done: impl Fn() -> bool, failure: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "{failure} (waited 5 s)");
        std::thread::sleep(Duration::from_millis(10));
    }
}
