//! `enforcer-bench-socket ROUNDS SECONDS EXCHANGES CONNECTS`: what the cgroup hooks (the
//! per-socket layer among them) cost an established TCP stream, a UDP request/response
//! loop and loopback `connect()`, with and without them, in one run.
//!
//! A veth pair joins this host to a remote namespace. Two identical sets of servers run on
//! this host's end: one in a cgroup the enforcer's cgroup hooks (the per-socket ingress
//! layer, `skb_egress` and the rest) are attached to, as a segment the remote may reach;
//! one in a cgroup without them. The clients run in the remote namespace, in no governed
//! cgroup, so only the servers' side pays for the hooks. Each round measures both sets,
//! one after the other, alternating which goes first:
//! - `tcp`: one connection writes 128 KiB buffers for SECONDS to a `tcp-sink` server, which
//!   reads it to its end and answers with the byte count; Gbit/s of what the server read.
//! - `udp`: EXCHANGES datagrams, each sent from an unconnected socket and its echo awaited
//!   before the next; the round's p50 and p99 round-trip time.
//! - `connect`: CONNECTS loopback connections, one after the other, from a client in the
//!   set's cgroup to a server of the set that accepts and closes (the governed client's
//!   `connect()` is decided by the `connect4` hook); the round's p50 and p99 duration of
//!   `connect()`.
//!
//! Prints one line per figure, `NAME with|without VALUE`: `tcp-gbps` (median over the
//! rounds), `udp-p50-us`, `udp-p99-us`, `connect-p50-us` and `connect-p99-us` (medians
//! over the rounds). Run by `./x bench socket`, which writes the table.

use std::{
    fs::File,
    net::{IpAddr, SocketAddr, UdpSocket},
    process::ExitCode,
    time::{Duration, Instant},
};

use enforcer_tests::{
    cgroup::TestCgroup,
    netns::{Netns, Veth, setns_net},
    policy::{image, loaded_with},
    probe::{Server, Spawn, stream_gbps},
};

/// The TCP port of the stream servers.
const STREAM_PORT: u16 = 18_090;
/// The UDP port of the echo servers (the ungoverned set uses the next port of each).
const ECHO_PORT: u16 = 18_091;
/// The loopback TCP port of the accepting servers (the ungoverned set uses the next).
const CONNECT_PORT: u16 = 18_094;
/// How long a client waits for one answer before the benchmark fails.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [rounds, seconds, exchanges, connects] => rounds
            .parse::<usize>()
            .ok()
            .zip(seconds.parse::<f64>().ok())
            .zip(exchanges.parse::<usize>().ok())
            .zip(connects.parse::<u32>().ok()),
        _ => None,
    };
    let Some((((rounds, seconds), exchanges), connects)) = parsed else {
        eprintln!("usage: enforcer-bench-socket ROUNDS SECONDS EXCHANGES CONNECTS");
        return ExitCode::from(2);
    };
    let load = Load {
        seconds,
        exchanges: exchanges.max(1),
        connects: connects.max(1),
    };
    match bench(rounds.max(1), &load) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("enforcer-bench-socket: {err}");
            ExitCode::FAILURE
        }
    }
}

/// What each round asks of each set.
struct Load {
    /// Seconds of streaming.
    seconds: f64,
    /// UDP request/response exchanges.
    exchanges: usize,
    /// Loopback connections.
    connects: u32,
}

/// One set of servers on this host's end of the pair, and the cgroup its loopback
/// client runs in.
struct Servers<'a> {
    cgroup: &'a TestCgroup,
    stream: Server,
    echo: Server,
    accept: Server,
}

impl<'a> Servers<'a> {
    fn start(host: IpAddr, port_offset: u16, cgroup: &'a TestCgroup) -> Self {
        let loopback = IpAddr::from(std::net::Ipv4Addr::LOCALHOST);
        Self {
            cgroup,
            accept: Spawn::tcp_accept(SocketAddr::new(loopback, CONNECT_PORT + port_offset))
                .cgroup(cgroup)
                .serve(),
            stream: Spawn::tcp_sink(SocketAddr::new(host, STREAM_PORT + 2 * port_offset))
                .cgroup(cgroup)
                .serve(),
            echo: Spawn::udp_server(SocketAddr::new(host, ECHO_PORT + 2 * port_offset))
                .cgroup(cgroup)
                .serve(),
        }
    }
}

/// Figures of one round for one set of servers.
struct Round {
    gbps: f64,
    p50_us: f64,
    p99_us: f64,
    connect_p50_us: f64,
    connect_p99_us: f64,
}

fn bench(rounds: usize, load: &Load) -> Result<(), String> {
    let remote = Netns::new();
    let veth = Veth::new(&remote);
    let parent = TestCgroup::new();
    let governed = parent.child("bench.service");
    let ungoverned = TestCgroup::new();
    let policy = image(&format!(
        r#"
[segments.bench]
cgroups = ["{}"]
ports = ["{STREAM_PORT}/tcp", "{ECHO_PORT}/udp", "{CONNECT_PORT}/tcp"]

[segments.clients]
cidrs = ["{}/32"]

[[allow]]
id = "clients-to-bench"
from = ["clients"]
to = ["bench"]
ports = ["{STREAM_PORT}/tcp", "{ECHO_PORT}/udp"]

[[allow]]
id = "bench-to-itself"
from = ["bench"]
to = ["bench"]
ports = ["{CONNECT_PORT}/tcp"]
"#,
        governed.relative_path(),
        veth.peer_v4
    ));
    let mut loader = loaded_with(&policy);
    loader
        .attach_cgroup(parent.path())
        .map_err(|e| e.to_string())?;
    let host = IpAddr::from(veth.host_v4);
    let with = Servers::start(host, 0, &governed);
    let without = Servers::start(host, 1, &ungoverned);
    let netns = remote.open();

    let mut figures: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for set in order {
            let servers = if set == 0 { &with } else { &without };
            let round_figures = measure(servers, &netns, load)?;
            // Each round's figures, for a reader of the raw output; the table uses the
            // medians below.
            println!(
                "round {round} {}: {:.3} Gbit/s, udp {:.2}/{:.2} us, connect {:.2}/{:.2} us",
                if set == 0 { "with" } else { "without" },
                round_figures.gbps,
                round_figures.p50_us,
                round_figures.p99_us,
                round_figures.connect_p50_us,
                round_figures.connect_p99_us,
            );
            figures[set].push(round_figures);
        }
    }
    // The governed set went through the hooks: the stream's SYN, the first datagram and
    // the connections were decided (the connections' records folded by de-duplication).
    let counters = loader.counters().map_err(|e| e.to_string())?;
    let decided: u64 = counters.by_reason.iter().map(|c| c.count).sum();
    if decided < 2 {
        return Err(format!(
            "the hooks decided {decided} flows; expected the stream and the echo"
        ));
    }
    for (label, set) in [("with", &figures[0]), ("without", &figures[1])] {
        println!("tcp-gbps {label} {:.3}", median(set.iter().map(|r| r.gbps)));
        println!(
            "udp-p50-us {label} {:.2}",
            median(set.iter().map(|r| r.p50_us))
        );
        println!(
            "udp-p99-us {label} {:.2}",
            median(set.iter().map(|r| r.p99_us))
        );
        println!(
            "connect-p50-us {label} {:.2}",
            median(set.iter().map(|r| r.connect_p50_us))
        );
        println!(
            "connect-p99-us {label} {:.2}",
            median(set.iter().map(|r| r.connect_p99_us))
        );
    }
    Ok(())
}

/// One round against one set of servers: the stream and the exchanges from the remote
/// namespace (`netns`), the connections over loopback from the set's cgroup.
fn measure(servers: &Servers, netns: &File, load: &Load) -> Result<Round, String> {
    let (stream, echo) = (servers.stream.addr, servers.echo.addr);
    let netns = netns.try_clone().map_err(|e| e.to_string())?;
    let (seconds, exchanges) = (load.seconds, load.exchanges);
    // A thread of its own joins the remote namespace; the rest of the process stays.
    let remote = std::thread::spawn(move || -> Result<(f64, (f64, f64)), String> {
        setns_net(&netns).map_err(|e| format!("setns: {e}"))?;
        let gbps = stream_gbps(stream, seconds).map_err(|e| format!("stream to {stream}: {e}"))?;
        let latency =
            echo_latency(echo, exchanges).map_err(|e| format!("echo with {echo}: {e}"))?;
        Ok((gbps, latency))
    })
    .join()
    .map_err(|_| "the client thread panicked".to_owned())??;
    let (gbps, (p50_us, p99_us)) = remote;
    let (outcome, answer) = Spawn::tcp_connect_timed(servers.accept.addr, load.connects)
        .cgroup(servers.cgroup)
        .run_in_background()
        .outcome_and_answer();
    if outcome != enforcer_tests::probe::Outcome::Ok {
        return Err(format!("connects to {}: {outcome:?}", servers.accept.addr));
    }
    let times: Vec<f64> = answer
        .split_whitespace()
        .filter_map(|ns| ns.parse::<f64>().ok())
        .collect();
    let [connect_p50, connect_p99] = times[..] else {
        return Err(format!("the connect client answered {answer:?}"));
    };
    Ok(Round {
        gbps,
        p50_us,
        p99_us,
        connect_p50_us: connect_p50 / 1e3,
        connect_p99_us: connect_p99 / 1e3,
    })
}

/// `exchanges` request/response round trips with the echo server at `addr`; p50 and p99
/// in microseconds.
fn echo_latency(addr: SocketAddr, exchanges: usize) -> std::io::Result<(f64, f64)> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let mut answer = [0u8; 64];
    let mut times = Vec::with_capacity(exchanges);
    for _ in 0..exchanges {
        let started = Instant::now();
        socket.send_to(b"ping\n", addr)?;
        let (len, _) = socket.recv_from(&mut answer)?;
        times.push(started.elapsed().as_secs_f64() * 1e6);
        if &answer[..len] != b"ping\n" {
            return Err(std::io::Error::other("a wrong echo"));
        }
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok((at(0.5), at(0.99)))
}

/// The median of `values`.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
