//! The real agent run under strace, for tests that must see its system calls (what it
//! sends where, when it forces its files to disk).

use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::agent::{AgentHost, enforcer_bin};

/// How long each step of a traced agent may take (strace slows it down).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// `enforcer run` with `agent`'s config under `strace -f` tracing `calls`; strace and the
/// agent are both killed on drop (a tracer killed alone would leave its tracee running).
pub struct TracedAgent {
    strace: Child,
    log: PathBuf,
    trace: PathBuf,
}

impl TracedAgent {
    /// Starts the agent under strace (`-y`: file descriptors with their paths) and waits
    /// until it enforces.
    pub fn start(agent: &AgentHost, calls: &str) -> Self {
        let dir = agent
            .audit_dir()
            .parent()
            .expect("the agent's directory")
            .to_owned();
        let log = dir.join("traced.log");
        let trace = dir.join("strace.txt");
        let strace = Command::new("strace")
            .args(["-f", "-qq", "-y", "-e", &format!("trace={calls}"), "-o"])
            .arg(&trace)
            .arg("--")
            .arg(enforcer_bin())
            .args(["run", "--config"])
            .arg(agent.config())
            .env("ENFORCER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("the log"))
            .spawn()
            .expect("strace (from Debian's strace package, which ./x setup installs)");
        let traced = Self { strace, log, trace };
        traced.wait_for_log("enforce", |text| {
            text.contains("enforcer::agent: enforcing")
        });
        traced
    }

    /// Waits (bounded) until `done` holds of the agent's log.
    pub fn wait_for_log(&self, what: &str, done: impl Fn(&str) -> bool) {
        let started = Instant::now();
        loop {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            if done(&text) {
                return;
            }
            assert!(
                started.elapsed() < STEP_TIMEOUT,
                "the agent did not {what} within {STEP_TIMEOUT:?}:\n{text}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The agent, the one child strace started, while strace runs.
    fn agent_pid(&self) -> Option<i32> {
        fs::read_to_string(format!(
            "/proc/{pid}/task/{pid}/children",
            pid = self.strace.id()
        ))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
    }

    /// Sends `signal` to the agent.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.agent_pid().expect("strace runs the agent");
        // SAFETY: kill() takes no pointers; the pid is strace's child, which it has not
        // reaped while it still runs.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid})");
    }

    /// Sends `signal` to the agent and waits (bounded) until it and strace are gone;
    /// returns the trace.
    pub fn stop(mut self, signal: libc::c_int) -> String {
        self.signal(signal);
        let started = Instant::now();
        while self.strace.try_wait().expect("wait").is_none() {
            assert!(started.elapsed() < STEP_TIMEOUT, "the agent did not stop");
            thread::sleep(Duration::from_millis(50));
        }
        fs::read_to_string(&self.trace).expect("the trace")
    }
}

impl Drop for TracedAgent {
    fn drop(&mut self) {
        if let Ok(None) = self.strace.try_wait() {
            if let Some(pid) = self.agent_pid() {
                // SAFETY: as in `signal`.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = self.strace.kill();
            let _ = self.strace.wait();
        }
    }
}
