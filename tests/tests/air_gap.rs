//! Nothing reaches out (README, docs/operations.md): the agent's only network peers are
//! the clients of its metrics listener and the configured syslog collector. strace follows
//! every thread of the real `enforcer run` through a start (XDP attach included), a denied
//! flow and its record, a metrics scrape, a reload and a stop; every `connect`, `sendto`,
//! `sendmsg` and `sendmmsg` it made with an IPv4 or IPv6 address must name the collector.

use std::{
    io::Read as _,
    net::{TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{
    agent::PeerSite,
    policy::{ALLOWED_PORT, DENIED_PORT},
    probe::Spawn,
    trace::{STEP_TIMEOUT, TracedAgent},
};

/// The metrics listener of the traced agent.
const METRICS: &str = "127.0.0.1:19681";
/// The system calls that send to an address of the caller's choosing.
const SENDING_CALLS: &str = "connect,sendto,sendmsg,sendmmsg";

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
    let traced = TracedAgent::start(&agent, SENDING_CALLS);

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

    traced.signal(libc::SIGHUP);
    traced.wait_for_log("reload", |text| text.contains("trigger=\"sighup\""));
    let trace = traced.stop(libc::SIGTERM);
    let forwarded = received.join().expect("the collector");
    assert!(
        String::from_utf8_lossy(&forwarded).contains("\"verdict\":\"deny\""),
        "the denied flow's record was not forwarded: {}",
        String::from_utf8_lossy(&forwarded)
    );

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
