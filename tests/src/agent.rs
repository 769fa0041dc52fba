//! The real agent binary (`enforcer run`) under test: a config, policy directory, state
//! directory and pin directory of its own, all removed on drop (the pins through
//! `enforcer uninstall`, the way an operator removes them).

use std::{
    ffi::{CString, OsStr},
    fs,
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use serde::de::DeserializeOwned;

use crate::{
    cgroup::TestCgroup,
    netns::{Netns, Veth, setns_net},
    policy::api_to_peer,
    probe::{Server, Spawn},
    profile_dir, require_root, unique_name,
};

/// How long the agent may take to enforce after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// What the agent logs once it enforces (its `enforcing` line; other lines, a refusal
/// among them, may say "enforcing" too).
const ENFORCING: &str = "enforcer::agent: enforcing";

/// Names another `enforcer` binary for the agent tests and the demo, such as the one a
/// package installed (`/usr/bin/enforcer`).
pub const ENFORCER_BIN: &str = "ENFORCER_BIN";

/// The `enforcer` binary the tests, benchmarks and demo run: `$ENFORCER_BIN` when set,
/// otherwise the one of the running test's or benchmark's profile (`target/<profile>/`;
/// tests themselves run from `target/<profile>/deps`).
pub fn enforcer_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os(ENFORCER_BIN) {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "{ENFORCER_BIN}={} is not a file",
            bin.display()
        );
        return bin;
    }
    let bin = profile_dir().join("enforcer");
    assert!(
        bin.exists(),
        "{} is missing; build it with `cargo build -p enforcer --bin enforcer` (./x test does)",
        bin.display()
    );
    bin
}

/// An agent's files and, while [`AgentHost::start`]ed, its process.
#[derive(Debug)]
pub struct AgentHost {
    dir: PathBuf,
    pin_dir: PathBuf,
    policy: PathBuf,
    netns: Option<PathBuf>,
    binds: Vec<(CString, CString)>,
    process: Option<Child>,
    starts: u32,
}

/// The first line of a config that lists no interface.
const NO_INTERFACES: &str = "interfaces = []\n";

impl AgentHost {
    /// Writes a config for an agent attached to `cgroup`, with the policy `policy` (one
    /// file, `policy/policy.toml`) and metrics on `metrics` (a loopback address);
    /// `extra` is appended to the config (for `[[interfaces]]`).
    pub fn new(cgroup: &TestCgroup, policy: &str, metrics: &str, extra: &str) -> Self {
        let name = unique_name();
        let dir = std::env::temp_dir().join(&name);
        fs::create_dir_all(dir.join("policy")).expect("create the agent's directory");
        let host = Self::configured(&name, cgroup, &dir.join("policy"), metrics, extra);
        host.write_policy(policy);
        host
    }

    /// Writes a config for an agent named `name` (its directory under the temporary
    /// directory and its pin directory are called so) attached to `cgroup`, enforcing the
    /// policy at `policy` (a file or directory, used in place); `metrics` and `extra` as
    /// for [`AgentHost::new`].
    pub fn configured(
        name: &str,
        cgroup: &TestCgroup,
        policy: &Path,
        metrics: &str,
        extra: &str,
    ) -> Self {
        require_root();
        let dir = std::env::temp_dir().join(name);
        let pin_dir = Path::new(enforcer::host::DEFAULT_BPFFS).join(name);
        fs::create_dir_all(&dir).expect("create the agent's directory");
        let host = Self {
            dir,
            pin_dir,
            policy: policy.to_owned(),
            netns: None,
            binds: Vec::new(),
            process: None,
            starts: 0,
        };
        // Without a list, no interface gets XDP: the agent's default, every interface,
        // would reach this machine's own when the agent runs in its namespace.
        let interfaces = if extra.contains("[[interfaces]]") {
            ""
        } else {
            NO_INTERFACES
        };
        let config = format!(
            r#"{interfaces}cgroup = "{cgroup}"
pin_dir = "{pins}"
state_dir = "{state}"
data_dir = "{data}"

[policy]
path = "{policy}"

[audit]
dir = "{audit}"

[metrics]
listen = "{metrics}"
{extra}"#,
            cgroup = cgroup.relative_path(),
            pins = host.pin_dir.display(),
            state = host.dir.join("state").display(),
            data = host.dir.join("lib").display(),
            policy = policy.display(),
            audit = host.dir.join("audit").display(),
        );
        fs::write(host.config(), config).expect("write the config");
        host
    }

    /// Replaces the config's `interfaces = []` (written when `extra` lists none) with
    /// `settings` (top-level lines such as `interfaces = "all"`); for an agent that runs
    /// in its own namespace.
    pub fn set_interfaces(&self, settings: &str) {
        let config = fs::read_to_string(self.config()).expect("read the config");
        assert!(
            config.starts_with(NO_INTERFACES),
            "the config lists interfaces"
        );
        let config = config.replacen(NO_INTERFACES, &format!("{settings}\n"), 1);
        fs::write(self.config(), config).expect("write the config");
    }

    /// Runs the agent inside `netns` (its interfaces are the ones XDP attaches to, its
    /// metrics listen there); cgroup hooks are not tied to a namespace.
    pub fn in_netns(mut self, netns: &Netns) -> Self {
        self.netns = Some(netns.path());
        self
    }

    /// The agent's runtime state directory (`/run/enforcer` on a host).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Runs the agent in a mount namespace of its own in which each `(file, over)` has
    /// `file` bind-mounted over `over` (`/etc/hosts`): the agent sees the test's file, the
    /// host and every other process keep theirs, and nothing is left behind (the
    /// namespace ends with the agent). A change to `file` shows through at once.
    pub fn with_files_over(mut self, binds: &[(&Path, &Path)]) -> Self {
        let c_path = |path: &Path| {
            CString::new(path.as_os_str().as_bytes()).expect("a path without NUL bytes")
        };
        self.binds = binds
            .iter()
            .map(|(file, over)| (c_path(file), c_path(over)))
            .collect();
        self
    }

    /// The config file.
    pub fn config(&self) -> PathBuf {
        self.dir.join("enforcer.toml")
    }

    /// The policy file the agent watches (for an agent made by [`AgentHost::new`]).
    pub fn policy_file(&self) -> PathBuf {
        self.policy.join("policy.toml")
    }

    /// The audit store directory.
    pub fn audit_dir(&self) -> PathBuf {
        self.dir.join("audit")
    }

    /// Adds `lines` (`key = value` lines) to the config's `[audit]` table.
    pub fn audit_options(&self, lines: &str) {
        let config = fs::read_to_string(self.config()).expect("read the config");
        let anchor = format!("[audit]\ndir = \"{}\"\n", self.audit_dir().display());
        assert!(config.contains(&anchor), "the config has its [audit] table");
        fs::write(
            self.config(),
            config.replace(&anchor, &format!("{anchor}{lines}\n")),
        )
        .expect("write the config");
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Replaces the policy file's content in place (as an editor saving it would).
    pub fn write_policy(&self, text: &str) {
        fs::write(self.policy_file(), text).expect("write the policy");
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.join(format!("agent-{start}.log"))
    }

    /// Everything the agent's `start`th run logged (1 is the first).
    pub fn log(&self, start: u32) -> String {
        fs::read_to_string(self.log_path(start)).unwrap_or_default()
    }

    /// Starts `enforcer run` and waits until it enforces (its log says so); returns the
    /// start's number, for [`AgentHost::log`].
    pub fn start(&mut self) -> u32 {
        self.start_with(&[])
    }

    /// As [`AgentHost::start`], with `env` added to the agent's environment (for example
    /// `NOTIFY_SOCKET`, as systemd sets it).
    pub fn start_with(&mut self, env: &[(&str, &OsStr)]) -> u32 {
        assert!(self.process.is_none(), "the agent is already running");
        self.starts += 1;
        let log = fs::File::create(self.log_path(self.starts)).expect("create the log");
        let mut command = Command::new(enforcer_bin());
        command
            .args(["run", "--config"])
            .arg(self.config())
            .env("ENFORCER_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(netns) = &self.netns {
            let netns = fs::File::open(netns)
                .unwrap_or_else(|err| panic!("cannot open {}: {err}", netns.display()));
            // SAFETY: the closure only calls setns, which is async-signal-safe, on a
            // descriptor opened before the fork.
            unsafe { command.pre_exec(move || setns_net(&netns)) };
        }
        if !self.binds.is_empty() {
            let binds = self.binds.clone();
            // SAFETY: the closure only makes system calls (unshare, mount), which are
            // async-signal-safe, with strings allocated before the fork.
            unsafe { command.pre_exec(move || bind_files(&binds)) };
        }
        let child = command.spawn().expect("spawn enforcer run");
        self.process = Some(child);
        let started = Instant::now();
        loop {
            if self.log(self.starts).contains(ENFORCING) {
                return self.starts;
            }
            if let Some(status) = self
                .process
                .as_mut()
                .and_then(|child| child.try_wait().expect("wait"))
            {
                panic!(
                    "the agent exited ({status}) before enforcing:\n{}",
                    self.log(self.starts)
                );
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "the agent did not enforce within {START_TIMEOUT:?}:\n{}",
                self.log(self.starts)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `enforcer run --config CONFIG` (ours, or another sharing our directories)
    /// where it must refuse to start: waits, bounded, for it to exit and returns its exit
    /// status and everything it logged. Panics if it enforces or is still running after
    /// the start timeout.
    pub fn refused_start(&self, config: &Path) -> (ExitStatus, String) {
        let log_path = self
            .dir
            .join(format!("refused-{}.log", crate::next_serial()));
        let log = fs::File::create(&log_path).expect("create the log");
        let mut child = Command::new(enforcer_bin())
            .args(["run", "--config"])
            .arg(config)
            .env("ENFORCER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn enforcer run");
        let logged = || fs::read_to_string(&log_path).unwrap_or_default();
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (status, logged());
            }
            if logged().contains(ENFORCING) || started.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the agent started instead of refusing:\n{}", logged());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The running agent's process id.
    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("the agent runs").id()
    }

    fn signal(&mut self, signal: libc::c_int) {
        let pid = i32::try_from(self.pid()).expect("pid fits");
        // SAFETY: kill() takes no pointers; `pid` is our own child, not yet reaped.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// Sends SIGHUP (reload).
    pub fn hangup(&mut self) {
        self.signal(libc::SIGHUP);
    }

    /// Stops the agent with SIGSTOP: the kernel keeps enforcing, nothing drains the ring.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused agent go on (SIGCONT).
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
    }

    /// Whether the agent process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|child| child.try_wait().expect("wait").is_none())
    }

    /// SIGKILLs the agent and reaps it.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        self.process
            .take()
            .expect("running")
            .wait()
            .expect("reap the agent");
    }

    /// SIGTERMs the agent and waits for it to exit; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        self.signal(libc::SIGTERM);
        self.process
            .take()
            .expect("running")
            .wait()
            .expect("reap the agent")
            .success()
    }

    /// Runs `enforcer ARGS --config <ours>`, in the agent's namespace when it has one
    /// (so `status` lists that host's interfaces). Before an `audit` command reads the
    /// store, every record in it is validated against the OCSF schema.
    pub fn command(&self, args: &[&str]) -> Output {
        if args.first() == Some(&"audit") {
            crate::ocsf::assert_store_is_ocsf(&self.audit_dir());
        }
        let mut command = Command::new(enforcer_bin());
        command.args(args).arg("--config").arg(self.config());
        if let Some(netns) = &self.netns {
            let netns = fs::File::open(netns)
                .unwrap_or_else(|err| panic!("cannot open {}: {err}", netns.display()));
            // SAFETY: the closure only calls setns, which is async-signal-safe, on a
            // descriptor opened before the fork.
            unsafe { command.pre_exec(move || setns_net(&netns)) };
        }
        command.output().expect("run enforcer")
    }

    /// Every flow and gap record in the store, through `enforcer audit query --json`
    /// (after validating every record against the OCSF schema).
    pub fn audit_records<T: DeserializeOwned>(&self) -> Vec<T> {
        let output = self.command(&["audit", "query", "--json"]);
        assert!(
            output.status.success(),
            "audit query failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).expect("audit query prints JSON lines"))
            .collect()
    }

    /// `enforcer status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        self.status_with_exit_code().1
    }

    /// `enforcer status --json`: its exit code (0 while a policy is enforced, 3 when
    /// none is) and the status, which must parse either way.
    pub fn status_with_exit_code(&self) -> (Option<i32>, serde_json::Value) {
        let output = self.command(&["status", "--json"]);
        let status = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
            panic!(
                "status --json printed no JSON ({err}): {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (output.status.code(), status)
    }

    /// Waits (bounded) until `check` holds for the status; returns the last status.
    pub fn wait_for_status(
        &self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let status = self.status();
            if check(&status) {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "status never showed {what}: {status:#}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// In the calling (forked, not yet exec'd) process: a private mount namespace with each
/// `(file, over)` bind-mounted.
fn bind_files(binds: &[(CString, CString)]) -> std::io::Result<()> {
    // SAFETY: unshare takes no pointers.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Nothing mounted here propagates back to the host's namespace.
    // SAFETY: NUL-terminated literal strings; null data and file system type are allowed
    // for a propagation change.
    let rc = unsafe {
        libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    for (file, over) in binds {
        // SAFETY: both strings are NUL-terminated and live across the call; a bind mount
        // takes no file system type or data.
        let rc = unsafe {
            libc::mount(
                file.as_ptr(),
                over.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Drop for AgentHost {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.pin_dir.exists() {
            let _ = self.command(&["uninstall"]);
            let _ = fs::remove_dir_all(&self.pin_dir);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A peer host (a network namespace behind a veth pair) with TCP echo servers on some
/// ports, and an `api.service` cgroup under a parent cgroup for an agent to attach to.
/// Everything goes on drop, the servers first.
#[derive(Debug)]
pub struct PeerSite {
    _servers: Vec<Server>,
    /// The segment's cgroup, a child of [`PeerSite::parent`].
    pub api: TestCgroup,
    /// The cgroup the agent attaches to.
    pub parent: TestCgroup,
    /// The veth pair to the peer.
    pub veth: Veth,
    /// The peer's namespace.
    pub netns: Netns,
}

impl PeerSite {
    /// A site whose peer serves TCP on `ports`.
    pub fn new(ports: &[u16]) -> Self {
        let netns = Netns::new();
        let veth = Veth::new(&netns);
        let parent = TestCgroup::new();
        let api = parent.child("api.service");
        let servers = ports
            .iter()
            .map(|port| {
                Spawn::tcp_server(veth.peer_addr(*port))
                    .netns(&netns)
                    .serve()
            })
            .collect();
        Self {
            _servers: servers,
            api,
            parent,
            veth,
            netns,
        }
    }

    /// An agent attached to the parent cgroup with the api-to-peer policy
    /// ([`api_to_peer`], second port closed), metrics on `metrics`, `extra` appended to
    /// its config.
    pub fn agent(&self, metrics: &str, extra: &str) -> AgentHost {
        AgentHost::new(
            &self.parent,
            &api_to_peer(&self.api, &self.veth, false),
            metrics,
            extra,
        )
    }
}
