//! Nothing reaches out (README, docs/operations.md): the agent's only network peers are
//! the clients of its metrics listener and the configured syslog collector. strace follows
//! every thread of the real `enforcer run` through a start (XDP attach included), a denied
//! flow and its record, a metrics scrape, a reload and a stop; every `connect`, `sendto`,
//! `sendmsg` and `sendmmsg` it made with an IPv4 or IPv6 address must name the collector.

use std::{
    fs,
    io::Read as _,
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{
    agent::{PeerSite, enforcer_bin},
    policy::{ALLOWED_PORT, DENIED_PORT},
    probe::Spawn,
};

/// The metrics listener of the traced agent.
const METRICS: &str = "127.0.0.1:19681";
/// How long each step of the traced agent may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// The system calls that send to an address of the caller's choosing.
const SENDING_CALLS: &str = "connect,sendto,sendmsg,sendmmsg";

/// strace running the agent; both are killed on drop (a failing test leaves neither: a
/// tracer killed alone would leave its tracee running).
struct Traced {
    strace: Child,
}

impl Traced {
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

    fn signal_agent(&self, signal: libc::c_int) {
        let pid = self.agent_pid().expect("strace runs the agent");
        // SAFETY: kill() takes no pointers; the pid is strace's child, which it has not
        // reaped while it still runs.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid})");
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Ok(None) = self.strace.try_wait() {
            if let Some(pid) = self.agent_pid() {
                // SAFETY: as in signal_agent.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = self.strace.kill();
            let _ = self.strace.wait();
        }
    }
}

/// Waits (bounded) until `done` holds of the agent's log.
fn wait_for_log(log: &std::path::Path, what: &str, done: impl Fn(&str) -> bool) {
    let started = Instant::now();
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
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

/// What the agent forwards over its first connection to `collector`, until it
/// disconnects (the agent stops); empty if it never connects within the time bound.
fn collect(collector: &TcpListener) -> Vec<u8> {
    collector.set_nonblocking(true).expect("nonblocking");
    let started = Instant::now();
    let mut stream = loop {
        match collector.accept() {
            Ok((stream, _)) => break stream,
            Err(_) if started.elapsed() < 3 * STEP_TIMEOUT => {
                thread::sleep(Duration::from_millis(50));
            }
            Err(_) => return Vec::new(),
        }
    };
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(3 * STEP_TIMEOUT))
        .expect("read timeout");
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    bytes
}

/// The lines of an strace log whose call names an IPv4 or IPv6 socket address (a
/// `sockaddr`'s `sa_family`; netlink requests about AF_INET routes or sockets carry the
/// family in other fields).
fn inet_lines(trace: &str) -> Vec<&str> {
    trace
        .lines()
        .filter(|line| line.contains("sa_family=AF_INET"))
        .collect()
}

#[test]
fn the_agent_sends_to_no_address_but_the_collector() {
    let site = PeerSite::new(&[ALLOWED_PORT, DENIED_PORT]);
    let collector = TcpListener::bind("127.0.0.1:0").expect("the collector listens");
    let collector_port = collector.local_addr().expect("its address").port();
    let received = thread::spawn(move || collect(&collector));
    let agent = site.agent(
        METRICS,
        &format!(
            "\n[audit.forward]\naddress = \"127.0.0.1:{collector_port}\"\n\n[[interfaces]]\nname = \"{}\"\nxdp_mode = \"skb\"\n",
            site.veth.host_if()
        ),
    );
    let dir = agent
        .audit_dir()
        .parent()
        .expect("the agent's directory")
        .to_owned();
    let log = dir.join("traced.log");
    let trace = dir.join("strace.txt");
    let traced = Traced {
        strace: Command::new("strace")
            .args(["-f", "-qq", "-e", &format!("trace={SENDING_CALLS}"), "-o"])
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
            .expect("strace (from Debian's strace package, which ./x setup installs)"),
    };
    wait_for_log(&log, "enforce", |text| text.contains("enforcing"));

    let denied = Spawn::tcp_client(site.veth.peer_addr(DENIED_PORT))
        .cgroup(&site.api)
        .run();
    assert!(denied.is_eperm(), "the denied flow: {denied:?}");
    let mut scrape = String::new();
    TcpStream::connect(METRICS)
        .and_then(|mut stream| {
            std::io::Write::write_all(
                &mut stream,
                b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n",
            )?;
            stream.read_to_string(&mut scrape)
        })
        .expect("scrape the metrics");
    assert!(scrape.contains("enforcer_build_info"), "{scrape}");

    traced.signal_agent(libc::SIGHUP);
    wait_for_log(&log, "reload", |text| text.contains("trigger=\"sighup\""));
    traced.signal_agent(libc::SIGTERM);
    let mut traced = traced;
    let started = Instant::now();
    while traced.strace.try_wait().expect("wait").is_none() {
        assert!(started.elapsed() < STEP_TIMEOUT, "the agent did not stop");
        thread::sleep(Duration::from_millis(50));
    }
    let forwarded = received.join().expect("the collector");
    assert!(
        String::from_utf8_lossy(&forwarded).contains("\"verdict\":\"deny\""),
        "the denied flow's record was not forwarded: {}",
        String::from_utf8_lossy(&forwarded)
    );

    let trace = fs::read_to_string(&trace).expect("the trace");
    // The trace sees the agent's sends: the XDP attach goes through netlink, and the
    // collector's connection is an IPv4 connect. Without both, strace saw nothing.
    assert!(
        trace.contains("AF_NETLINK"),
        "no netlink send traced:\n{trace}"
    );
    let to_collector = format!("sin_port=htons({collector_port})");
    let (collector_lines, elsewhere): (Vec<&str>, Vec<&str>) =
        inet_lines(&trace).into_iter().partition(|line| {
            line.contains(&to_collector) && line.contains("inet_addr(\"127.0.0.1\")")
        });
    assert!(
        collector_lines.iter().any(|line| line.contains("connect(")),
        "no connect to the collector traced:\n{trace}"
    );
    assert!(
        elsewhere.is_empty(),
        "the agent sent to addresses other than the collector:\n{}",
        elsewhere.join("\n")
    );
}
