//! What an interrupted test run or demo left on this host, found by name and removed.
//!
//! A test process or demo that is killed outright runs none of its guards' drops: its
//! namespaces, veth pairs, cgroups, pin directories, files and mounts (a tmpfs on an audit
//! directory) stay, and so do the processes it started. Every such object carries a known
//! prefix: processes run in a named cgroup (a test's, or the run's own, see
//! [`crate::cgroup::run_cgroup`]), in a named namespace, or name the run's files on their
//! command line (agents, rsyslogd). So [`find`] lists them and [`sweep`] removes them;
//! `./x test` sweeps before it starts and the demo before each run, and the `leftovers`
//! test asserts that a run left nothing.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{DEMO_PREFIX, LINK_PREFIX, PREFIX, cgroup, cmd::run_quietly};

/// Where this process's mounts are listed.
const MOUNTINFO: &str = "/proc/self/mountinfo";

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
    /// A process in one of the cgroups, or whose command line names one of the temporary
    /// files (an agent).
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
    /// A file system mounted on or below one of the temporary files.
    Mount(PathBuf),
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
            Self::Mount(path) => write!(f, "mount {}", path.display()),
            Self::Files(path) => write!(f, "files {}", path.display()),
        }
    }
}

/// Every object named like `names` on this host now, processes first, in the order
/// [`sweep`] removes them.
pub fn find(names: Names) -> Vec<Leftover> {
    let ours = |name: &str| name.starts_with(names.objects);
    let temp = std::env::temp_dir();
    let cgroups: Vec<PathBuf> = enforcer::host::cgroup2_mount()
        .map(|root| entries(&root, ours).collect())
        .unwrap_or_default();
    let mut found = processes_in(&cgroups);
    for process in processes_naming(&temp.join(names.objects)) {
        if !found.contains(&process) {
            found.push(process);
        }
    }
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
    found.extend(cgroups.into_iter().map(Leftover::Cgroup));
    found.extend(entries(Path::new(enforcer::host::DEFAULT_BPFFS), ours).map(Leftover::Pins));
    let files: Vec<PathBuf> = entries(&temp, ours).collect();
    let mounts = fs::read_to_string(MOUNTINFO).unwrap_or_default();
    for path in &files {
        found.extend(mounts_below(&mounts, path).map(Leftover::Mount));
    }
    found.extend(files.into_iter().map(Leftover::Files));
    found
}

/// The mount points in `mountinfo` (the text of a `/proc/<pid>/mountinfo`) that are `path`
/// or below it, deepest first, so each can be unmounted in turn.
pub fn mounts_below(mountinfo: &str, path: &Path) -> impl Iterator<Item = PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(unescape_mount_point(point)))
        .filter(|point| point.starts_with(path))
        .collect();
    found.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    found.dedup();
    found.into_iter()
}

/// A mount point as the kernel writes it in mountinfo: space, tab, newline and backslash
/// as a backslash and three octal digits (`\040`).
fn unescape_mount_point(escaped: &str) -> String {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let octal = bytes
            .get(at + 1..at + 4)
            .filter(|digits| bytes[at] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                at += 4;
            }
            None => {
                out.push(bytes[at]);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The live processes in the cgroups `dirs` and below them.
fn processes_in(dirs: &[PathBuf]) -> Vec<Leftover> {
    let mut found = Vec::new();
    let mut pending = dirs.to_vec();
    while let Some(dir) = pending.pop() {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|line| line.trim().parse().ok()) {
            if alive(pid) {
                found.push(Leftover::Process {
                    pid,
                    command: command_line(pid).join(" "),
                });
            }
        }
        pending.extend(entries(&dir, |_| true).filter(|path| path.is_dir()));
    }
    found
}

/// The arguments of process `pid` (empty once it has gone).
fn command_line(pid: libc::pid_t) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|byte| *byte == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
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
        Leftover::Mount(path) => {
            let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
                .unwrap_or_else(|err| panic!("cannot unmount {leftover}: {err}"));
            // Mounts stacked on one point come off one at a time.
            while fs::read_to_string(MOUNTINFO)
                .is_ok_and(|mounts| mounts_below(&mounts, path).any(|point| point == *path))
            {
                // SAFETY: umount2 reads the NUL-terminated path, which outlives the call.
                let rc = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
                assert_eq!(
                    rc,
                    0,
                    "cannot unmount {leftover}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
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
        let pid = name_of(dir).parse().ok()?;
        let args = command_line(pid);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_below_a_path_are_listed_deepest_first_and_unescaped() {
        let mountinfo = "\
22 1 0:21 / /tmp rw,relatime shared:2 - tmpfs tmpfs rw
40 22 0:40 / /tmp/enforcer-test-1-0/audit rw - tmpfs tmpfs rw,size=1024k
41 40 0:41 / /tmp/enforcer-test-1-0/audit rw - tmpfs tmpfs rw,size=1024k
42 22 0:42 / /tmp/enforcer-test-1-0/a\\040b/c rw - tmpfs tmpfs rw
43 22 0:43 / /tmp/enforcer-test-1-01 rw - tmpfs tmpfs rw
";
        let found: Vec<PathBuf> =
            mounts_below(mountinfo, Path::new("/tmp/enforcer-test-1-0")).collect();
        assert_eq!(
            found,
            [
                PathBuf::from("/tmp/enforcer-test-1-0/a b/c"),
                PathBuf::from("/tmp/enforcer-test-1-0/audit"),
            ]
        );
        assert_eq!(unescape_mount_point("a\\134b\\011c\\0"), "a\\b\tc\\0");
    }
}
