//! Real client and server processes, started inside a [`Netns`] and/or a [`TestCgroup`].

use std::{
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, Shutdown, SocketAddr, TcpStream},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{cgroup::TestCgroup, netns::Netns};

/// How long a client waits for a connection or an echo before it reports `timeout`.
pub const CLIENT_TIMEOUT_MS: u64 = 2000;

/// The `enforcer-probe` binary of the running test's or benchmark's profile.
pub fn probe_bin() -> PathBuf {
    let bin = crate::profile_dir().join("enforcer-probe");
    assert!(
        bin.exists(),
        "{} is missing; build the enforcer-tests package",
        bin.display()
    );
    bin
}

/// What a client observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Connected (or sent) and got the echo back.
    Ok,
    /// No answer within the timeout (a dropped SYN or datagram).
    Timeout,
    /// The call failed with this errno (EPERM from a cgroup hook, ECONNREFUSED, ...).
    Error {
        /// The OS error number.
        errno: i32,
        /// The OS error text.
        message: String,
    },
}

impl Outcome {
    /// Whether the call was refused with EPERM (a cgroup hook's denial).
    pub fn is_eperm(&self) -> bool {
        matches!(self, Self::Error { errno, .. } if *errno == libc::EPERM)
    }
}

/// How a source-routed client hands its route to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteBy {
    /// `setsockopt` (`IPV6_RTHDR`, `IP_OPTIONS`), then a plain `sendto`.
    SocketOption,
    /// Ancillary data of `sendmsg` (`IPV6_RTHDR`, `IP_RETOPTS`).
    AncillaryData,
    /// No route: the socket option is cleared (set empty), then a plain `sendto`.
    Cleared,
}

impl RouteBy {
    fn argument(self) -> &'static str {
        match self {
            Self::SocketOption => "sockopt",
            Self::AncillaryData => "cmsg",
            Self::Cleared => "none",
        }
    }
}

/// A directory through which a test holds a gated client between two steps (see
/// [`Spawn::udp_source_routed_gated`]); removed on drop.
#[derive(Debug)]
pub struct Gate {
    dir: PathBuf,
}

impl Gate {
    /// Creates an empty gate directory with a unique name.
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(crate::unique_name());
        std::fs::create_dir(&dir)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", dir.display()));
        Self { dir }
    }

    /// Waits (at most [`CLIENT_TIMEOUT_MS`], in 10 ms steps) until the client reached the
    /// gate; panics if it does not.
    pub fn wait_until_reached(&self) {
        let ready = self.dir.join("ready");
        for _ in 0..CLIENT_TIMEOUT_MS / 10 {
            if ready.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the client did not reach the gate {}", self.dir.display());
    }

    /// The gate's directory, for a client that is not the probe (a script).
    pub fn path(&self) -> &std::path::Path {
        &self.dir
    }

    /// Lets the client go on.
    pub fn open(&self) {
        let go = self.dir.join("go");
        File::create(&go).unwrap_or_else(|err| panic!("cannot create {}: {err}", go.display()));
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A probe process about to start, with the namespace and cgroup it will run in. A
/// process given no cgroup runs in this test process's [`run_cgroup`], so that it is
/// found and ended if the run is killed.
///
/// [`run_cgroup`]: crate::cgroup::run_cgroup
#[derive(Debug)]
pub struct Spawn {
    command: Command,
    netns: Option<File>,
    cgroup_procs: Option<File>,
}

impl Spawn {
    fn probe(args: &[String]) -> Self {
        let mut command = Command::new(probe_bin());
        command.args(args);
        Self {
            command,
            netns: None,
            cgroup_procs: None,
        }
    }

    /// A TCP echo server on `addr` (port 0 picks one).
    pub fn tcp_server(addr: SocketAddr) -> Self {
        Self::probe(&["tcp-serve".into(), addr.to_string()])
    }

    /// A TCP server on `addr` that reads each connection to its end and answers with the
    /// number of bytes read (port 0 picks one).
    pub fn tcp_sink(addr: SocketAddr) -> Self {
        Self::probe(&["tcp-sink".into(), addr.to_string()])
    }

    /// A TCP server on `addr` that accepts connections and closes them at once.
    pub fn tcp_accept(addr: SocketAddr) -> Self {
        Self::probe(&["tcp-accept".into(), addr.to_string()])
    }

    /// A client that makes `count` connections to `addr` one after the other; its
    /// answer is the p50 and p99 duration of `connect()` in ns.
    pub fn tcp_connect_timed(addr: SocketAddr, count: u32) -> Self {
        Self::probe(&[
            "tcp-connect-timed".into(),
            addr.to_string(),
            CLIENT_TIMEOUT_MS.to_string(),
            count.to_string(),
        ])
    }

    /// A UDP echo server on `addr` (port 0 picks one).
    pub fn udp_server(addr: SocketAddr) -> Self {
        Self::probe(&["udp-serve".into(), addr.to_string()])
    }

    /// A TCP client that connects to `addr` and expects its echo.
    pub fn tcp_client(addr: SocketAddr) -> Self {
        Self::probe(&[
            "tcp-connect".into(),
            addr.to_string(),
            CLIENT_TIMEOUT_MS.to_string(),
        ])
    }

    /// A TCP client like [`Spawn::tcp_client`] that waits `timeout_ms` for the connection
    /// and the echo (a refused `connect()`, EPERM, returns at once whatever the wait).
    pub fn tcp_client_within(addr: SocketAddr, timeout_ms: u64) -> Self {
        Self::probe(&[
            "tcp-connect".into(),
            addr.to_string(),
            timeout_ms.to_string(),
        ])
    }

    /// An HTTP/1.1 server on `addr` that answers every request with its cgroup.
    pub fn http_server(addr: SocketAddr) -> Self {
        Self::probe(&["http-serve".into(), addr.to_string()])
    }

    /// An HTTP client that sends `GET /` to `addr` and expects `200 OK`.
    pub fn http_client(addr: SocketAddr) -> Self {
        Self::probe(&[
            "http-get".into(),
            addr.to_string(),
            CLIENT_TIMEOUT_MS.to_string(),
        ])
    }

    /// A UDP client that `sendto`s `addr` from an unconnected socket and expects the echo.
    pub fn udp_client(addr: SocketAddr) -> Self {
        Self::probe(&[
            "udp-send".into(),
            addr.to_string(),
            CLIENT_TIMEOUT_MS.to_string(),
        ])
    }

    /// A UDP client like [`Spawn::udp_client`] sending from local port `port`.
    pub fn udp_client_from(addr: SocketAddr, port: u16) -> Self {
        Self::probe(&[
            "udp-send-from".into(),
            addr.to_string(),
            CLIENT_TIMEOUT_MS.to_string(),
            port.to_string(),
        ])
    }

    /// A UDP client like [`Spawn::udp_client`] whose socket may send to a broadcast
    /// address (`SO_BROADCAST`).
    pub fn udp_broadcast_client(addr: SocketAddr) -> Self {
        Self::probe(&[
            "udp-broadcast".into(),
            addr.to_string(),
            CLIENT_TIMEOUT_MS.to_string(),
        ])
    }

    /// A TCP client that makes `count` connections to `addr` one after the other, each
    /// expecting its echo, and reports the first failure.
    pub fn tcp_client_repeated(addr: SocketAddr, count: u32) -> Self {
        Self::probe(&[
            "tcp-connect-repeat".into(),
            addr.to_string(),
            CLIENT_TIMEOUT_MS.to_string(),
            count.to_string(),
        ])
    }

    /// Like [`Spawn::tcp_client_repeated`], pausing a few milliseconds between attempts.
    pub fn tcp_client_paced(addr: SocketAddr, count: u32) -> Self {
        Self::probe(&[
            "tcp-connect-paced".into(),
            addr.to_string(),
            CLIENT_TIMEOUT_MS.to_string(),
            count.to_string(),
        ])
    }

    /// A TCP client that makes `count` paced attempts to `addr`, each of which must fail
    /// with EPERM; it reports the first that does not.
    pub fn tcp_denied_paced(addr: SocketAddr, count: u32) -> Self {
        Self::probe(&[
            "tcp-denied-paced".into(),
            addr.to_string(),
            CLIENT_TIMEOUT_MS.to_string(),
            count.to_string(),
        ])
    }

    /// Like [`Spawn::tcp_denied_paced`] without pauses: `count` denied attempts as fast
    /// as the process can make them.
    pub fn tcp_denied_burst(addr: SocketAddr, count: u32) -> Self {
        Self::probe(&[
            "tcp-denied-burst".into(),
            addr.to_string(),
            CLIENT_TIMEOUT_MS.to_string(),
            count.to_string(),
        ])
    }

    /// A process that sends one ICMP echo request to `addr`'s address from a ping
    /// socket (`sendto`, never `connect`) and waits up to a second for the reply.
    pub fn ping(addr: SocketAddr) -> Self {
        Self::probe(&["ping".into(), addr.to_string(), "1000".into()])
    }

    /// A process that opens a raw ICMP socket of `addr`'s family and reports whether
    /// `socket()` succeeded.
    pub fn raw_socket(addr: SocketAddr) -> Self {
        Self::probe(&["raw-socket".into(), addr.to_string()])
    }

    /// A UDP client like [`Spawn::udp_client`] whose datagram carries a source route
    /// through `via` (an IPv6 segment routing header, or an IPv4 loose source route),
    /// handed to the kernel as `by` says.
    pub fn udp_source_routed(addr: SocketAddr, via: IpAddr, by: RouteBy) -> Self {
        Self::probe(&[
            "udp-send-route".into(),
            addr.to_string(),
            via.to_string(),
            CLIENT_TIMEOUT_MS.to_string(),
            by.argument().into(),
        ])
    }

    /// Like [`Spawn::udp_source_routed`] with the route set as a socket option, and a
    /// pause between setting it and sending: the client creates `gate/ready` once the
    /// option is set, then waits for `gate/go` (see [`Gate`]).
    pub fn udp_source_routed_gated(addr: SocketAddr, via: IpAddr, gate: &Gate) -> Self {
        Self::probe(&[
            "udp-send-route".into(),
            addr.to_string(),
            via.to_string(),
            CLIENT_TIMEOUT_MS.to_string(),
            RouteBy::SocketOption.argument().into(),
            gate.dir.display().to_string(),
        ])
    }

    /// `tests/scripts/attack.py` (Python, stdlib only) with `args`: attack helpers that
    /// need no compiled probe mode (`attacks.rs`, `listeners.rs`, `source_routes.rs`). Its
    /// clients print the same one-line outcome as the probe,
    /// its servers the same `listening <addr>` banner.
    pub fn attack_script(args: &[&str]) -> Self {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/attack.py");
        let mut command = Command::new("python3");
        command.arg(script).args(args);
        Self {
            command,
            netns: None,
            cgroup_procs: None,
        }
    }

    /// Runs the process inside `netns`.
    pub fn netns(mut self, netns: &Netns) -> Self {
        self.netns = Some(netns.open());
        self
    }

    /// Runs the process inside `cgroup` from its first instruction.
    pub fn cgroup(mut self, cgroup: &TestCgroup) -> Self {
        self.cgroup_procs = Some(open_procs(cgroup));
        self
    }

    /// Starts the process; returns it with the run cgroup it was put in, if it was given
    /// no cgroup, which its guard holds while it runs.
    fn start(mut self, stdout: Stdio) -> (Child, Option<Arc<TestCgroup>>) {
        let netns = self.netns.take();
        let (procs, run_cgroup) = match self.cgroup_procs.take() {
            Some(procs) => (procs, None),
            None => {
                let run = crate::cgroup::run_cgroup();
                (open_procs(&run), Some(run))
            }
        };
        // SAFETY: the closure only makes async-signal-safe system calls (write, setns) on
        // file descriptors opened before the fork.
        unsafe {
            self.command.pre_exec(move || {
                // "0" moves the writing process: the child, before it execs.
                let rc = libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1);
                if rc != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(netns) = &netns {
                    crate::netns::setns_net(netns)?;
                }
                Ok(())
            });
        }
        let child = self
            .command
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {:?}: {err}", self.command));
        (child, run_cgroup)
    }

    /// Starts a server and waits until it is bound.
    pub fn serve(self) -> Server {
        let (mut child, run_cgroup) = self.start(Stdio::piped());
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read server banner");
        // Owned by the guard first, so a server that fails to start is still reaped.
        let mut server = Server {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            child,
            _run_cgroup: run_cgroup,
        };
        server.addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("server did not start: {line:?}"));
        server
    }

    /// Runs a client to completion and returns what it observed.
    pub fn run(self) -> Outcome {
        self.run_in_background().outcome()
    }

    /// Starts a client; [`Client::outcome`] waits for what it observed.
    pub fn run_in_background(self) -> Client {
        let (child, run_cgroup) = self.start(Stdio::piped());
        Client {
            child: Some(child),
            _run_cgroup: run_cgroup,
        }
    }
}

/// Opens `cgroup`'s `cgroup.procs` for writing.
fn open_procs(cgroup: &TestCgroup) -> File {
    OpenOptions::new()
        .write(true)
        .open(cgroup.procs_file())
        .unwrap_or_else(|err| panic!("cannot open {}: {err}", cgroup.procs_file().display()))
}

/// A client process running in the background, killed on drop unless waited for.
#[derive(Debug)]
pub struct Client {
    child: Option<Child>,
    /// Dropped after the process is ended.
    _run_cgroup: Option<Arc<TestCgroup>>,
}

impl Client {
    /// Whether the client has finished.
    pub fn finished(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|child| matches!(child.try_wait(), Ok(Some(_))))
    }

    /// Waits for the client and returns what it observed.
    pub fn outcome(self) -> Outcome {
        self.outcome_and_answer().0
    }

    /// Waits for the client and returns what it observed and what it was answered (the
    /// body of an HTTP answer; empty for the other clients).
    pub fn outcome_and_answer(mut self) -> (Outcome, String) {
        let output = self
            .child
            .take()
            .expect("a client is waited for once")
            .wait_with_output()
            .expect("wait for probe");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let (line, answer) = stdout.split_once('\n').unwrap_or((&stdout, ""));
        let line = line.trim();
        let outcome = match line.split_once(' ') {
            None if line == "ok" => Outcome::Ok,
            None if line == "timeout" => Outcome::Timeout,
            Some(("error", rest)) => {
                let (errno, message) = rest.split_once(' ').unwrap_or((rest, ""));
                Outcome::Error {
                    errno: errno.parse().unwrap_or(0),
                    message: message.to_owned(),
                }
            }
            _ => panic!("probe printed {line:?} ({})", output.status),
        };
        (outcome, answer.to_owned())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running server process, killed on drop.
#[derive(Debug)]
pub struct Server {
    /// The address it is bound to.
    pub addr: SocketAddr,
    child: Child,
    /// Dropped after the process is ended.
    _run_cgroup: Option<Arc<TestCgroup>>,
}

impl Server {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file a `udp-sink` server ([`Spawn::attack_script`]) appends each datagram's source
/// to; removed on drop.
#[derive(Debug)]
pub struct SinkLog(PathBuf);

impl SinkLog {
    /// A log path with a unique name; the file appears with the first datagram.
    pub fn new() -> Self {
        Self(std::env::temp_dir().join(format!("{}-sink", crate::unique_name())))
    }

    /// The path, for the server's command line.
    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }

    /// The sources recorded so far (`<address> <port>`), after waiting up to `wait` for
    /// at least one.
    pub fn sources(&self, wait: Duration) -> Vec<String> {
        let since = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.0).unwrap_or_default();
            if !text.is_empty() || since.elapsed() > wait {
                return text.lines().map(str::to_owned).collect();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Default for SinkLog {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SinkLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How long a stream client waits to connect and for the sink's byte count.
const STREAM_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes to `addr` (a [`Spawn::tcp_sink`] or a server speaking its protocol) for
/// `seconds` and returns the Gbit/s the server read.
pub fn stream_gbps(addr: SocketAddr, seconds: f64) -> std::io::Result<f64> {
    let mut stream = TcpStream::connect_timeout(&addr, STREAM_ANSWER_TIMEOUT)?;
    stream.set_read_timeout(Some(STREAM_ANSWER_TIMEOUT))?;
    let buffer = vec![0x5a_u8; 128 * 1024];
    let started = Instant::now();
    let deadline = Duration::from_secs_f64(seconds);
    while started.elapsed() < deadline {
        stream.write_all(&buffer)?;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let elapsed = started.elapsed().as_secs_f64();
    let read: f64 = line
        .trim()
        .parse()
        .map_err(|_| std::io::Error::other(format!("the sink answered {line:?}")))?;
    Ok(read * 8.0 / elapsed / 1e9)
}
