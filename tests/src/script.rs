//! The red-team tests' Python helpers (`tests/scripts/*.py`, standard library only) run as
//! a test's processes: in a network namespace and/or a cgroup, as servers that announce
//! `listening ...`, as clients whose output is read whole or line by line; and the files
//! those helpers append to or wait for.

use std::{
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Lines},
    net::SocketAddr,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{PREFIX, cgroup::TestCgroup, netns::Netns, netns::setns_net};

/// A helper about to run.
pub struct Script {
    command: Command,
    netns: Option<File>,
    procs: Option<File>,
}

/// The path of helper `file` in `tests/scripts`.
fn helper(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(file)
}

impl Script {
    /// `python3 tests/scripts/FILE ARGS`.
    pub fn new(file: &str, args: &[&str]) -> Self {
        let mut command = Command::new("python3");
        command.arg(helper(file)).args(args);
        Self {
            command,
            netns: None,
            procs: None,
        }
    }

    /// The same run by `unshare -U -r -n`: in a fresh user and network namespace, which
    /// any process may create where unprivileged user namespaces are enabled (the default
    /// of most distributions), or with `CAP_SYS_ADMIN`.
    pub fn in_new_netns(file: &str, args: &[&str]) -> Self {
        let mut command = Command::new("unshare");
        command
            .args(["-U", "-r", "-n", "python3"])
            .arg(helper(file))
            .args(args);
        Self {
            command,
            netns: None,
            procs: None,
        }
    }

    /// Runs it in `netns`.
    pub fn netns(mut self, netns: &Netns) -> Self {
        self.netns = Some(netns.open());
        self
    }

    /// Runs it in `cgroup`.
    pub fn cgroup(mut self, cgroup: &TestCgroup) -> Self {
        self.procs = Some(
            OpenOptions::new()
                .write(true)
                .open(cgroup.procs_file())
                .expect("open cgroup.procs"),
        );
        self
    }

    fn spawn(mut self) -> Child {
        let netns = self.netns.take();
        let procs = self.procs.take();
        // SAFETY: write and setns on descriptors opened before the fork.
        unsafe {
            self.command.pre_exec(move || {
                if let Some(procs) = &procs {
                    let rc = libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1);
                    if rc != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(netns) = &netns {
                    setns_net(netns)?;
                }
                Ok(())
            });
        }
        self.command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3")
    }

    /// Starts a server; returns it once it printed its `listening` banner.
    pub fn serve(self) -> Guard {
        self.serve_banner().0
    }

    /// Starts a server that announces `listening ADDRESS:PORT`; returns it and the address.
    pub fn serve_at(self) -> (Guard, SocketAddr) {
        let (guard, banner) = self.serve_banner();
        let at = banner
            .parse()
            .unwrap_or_else(|_| panic!("the server's banner names no address: {banner:?}"));
        (guard, at)
    }

    /// Starts a server; returns it and what its `listening` banner says after the word.
    fn serve_banner(self) -> (Guard, String) {
        let (guard, mut lines) = self.start();
        let line = lines.next().and_then(Result::ok).unwrap_or_default();
        let banner = line
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("server did not start: {line:?}"))
            .trim()
            .to_owned();
        (guard, banner)
    }

    /// Starts a process whose output is read line by line.
    pub fn start(self) -> (Guard, Lines<BufReader<ChildStdout>>) {
        let mut child = self.spawn();
        let stdout = child.stdout.take().expect("stdout");
        (Guard(child), BufReader::new(stdout).lines())
    }

    /// Runs a client to its end; returns everything it printed.
    pub fn run(self) -> String {
        let child = self.spawn();
        let output = child.wait_with_output().expect("wait");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// A running helper, killed and reaped when dropped.
pub struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A file a helper appends to (or a gate it waits for), unique to this test process;
/// removed on drop.
pub struct Log(PathBuf);

impl Log {
    /// The file for `tag`, empty.
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{PREFIX}log-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }

    /// Its path, for a helper's arguments.
    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8")
    }

    /// What it holds (nothing yet: empty).
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap_or_default()
    }

    /// Waits up to `wait` for `needle`; returns the text either way.
    pub fn wait_for(&self, needle: &str, wait: Duration) -> String {
        let since = Instant::now();
        loop {
            let text = self.text();
            if text.contains(needle) || since.elapsed() > wait {
                return text;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Opens the gate a helper waits for (writes the file).
    pub fn open_gate(&self) {
        std::fs::write(&self.0, b"go").expect("open the gate");
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
