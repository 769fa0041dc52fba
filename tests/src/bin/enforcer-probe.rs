//! `enforcer-probe`: the TCP/UDP servers and clients the privileged tests run inside
//! network namespaces and cgroups.
//!
//! Servers print `listening <addr>` once bound and echo what they receive until killed.
//! Clients send `ping`, wait for the echo and print exactly one line: `ok`,
//! `timeout`, or `error <errno> <message>`; they exit 0 after `ok` and 1 otherwise.
//! `tcp-connect-repeat` makes COUNT connections one after the other and reports the first
//! failure (its attempt number on stderr), else `ok`; `tcp-connect-paced` does the same
//! with a pause of [`PACE`] between attempts, and `tcp-denied-paced` expects every attempt
//! to fail with EPERM (a success or another error is its failure); `tcp-denied-burst` is
//! the same without pauses. `raw-socket` opens a raw ICMP socket of
//! ADDR's family (nothing is sent) and reports whether `socket()` succeeded. `ping`
//! sends one ICMP echo request to ADDR's address from an unprivileged ping socket
//! (`SOCK_DGRAM`, never connected: `sendto` only) and waits for the reply.
//!
//! `udp-send-from` is `udp-send` from a socket bound to the given local port.
//! `udp-broadcast` is `udp-send` from a socket with `SO_BROADCAST` set.
//! `udp-send-route ADDR VIA TIMEOUT_MS sockopt|cmsg|none [GATE_DIR]` is `udp-send` with a
//! source route through VIA: an IPv6 segment routing header (type 4) listing VIA for an
//! IPv6 ADDR, an IPv4 loose source route option (LSRR) through VIA for an IPv4 one. With
//! `sockopt` the route is set on the socket (`IPV6_RTHDR`, `IP_OPTIONS`), with `cmsg` it
//! is passed as ancillary data to `sendmsg` (`IPV6_RTHDR`, `IP_RETOPTS`), and `none`
//! clears the socket's route (an empty option) and sends plainly. With GATE_DIR the probe
//! creates `GATE_DIR/ready` once the socket option is set and waits up to TIMEOUT_MS for
//! `GATE_DIR/go` before it sends. After `ok` it prints who answered the echo.
//!
//! `tcp-sink` is a server that reads each connection to its end and answers with the
//! number of bytes it read, as one decimal line (the benchmarks' stream receiver).
//! `tcp-accept` accepts connections and closes them at once. `tcp-connect-timed` makes
//! COUNT connections one after the other, each closed with a reset (no `TIME_WAIT` left),
//! and after `ok` prints the p50 and p99 duration of `connect()` in ns.
//!
//! `http-serve` is an HTTP/1.1 server (hyper) that answers every request with
//! `200 OK` and the cgroup it runs in, so a client sees which service answered;
//! `http-get` sends `GET /` (ureq) and reports `ok` for a `200`, like the other clients,
//! followed by the answer's body on the lines after it.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    Request, Response,
    body::{Bytes, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;

const USAGE: &str = "usage: enforcer-probe tcp-serve|tcp-sink|tcp-accept|udp-serve|http-serve|raw-socket ADDR:PORT\n       \
                     enforcer-probe tcp-connect|udp-send|udp-broadcast|http-get|ping ADDR:PORT TIMEOUT_MS\n       \
                     enforcer-probe tcp-connect-timed|tcp-connect-repeat|tcp-connect-paced|tcp-denied-paced|tcp-denied-burst ADDR:PORT TIMEOUT_MS COUNT\n       \
                     enforcer-probe udp-send-from ADDR:PORT TIMEOUT_MS LOCAL_PORT\n       \
                     enforcer-probe udp-send-route ADDR:PORT VIA TIMEOUT_MS sockopt|cmsg|none [GATE_DIR]";

/// The pause between attempts of the paced modes.
const PACE: Duration = Duration::from_millis(2);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|mode| mode == "udp-send-route") {
        return match source_route_request(&args[1..]) {
            Some(request) => match udp_send_route(&request) {
                Ok(answered_by) => report(Ok(()), &format!("{answered_by}\n")),
                Err(err) => report(Err(err), ""),
            },
            None => {
                eprintln!("{USAGE}");
                ExitCode::from(2)
            }
        };
    }
    let parsed = match args.as_slice() {
        [mode, addr] => addr.parse().ok().map(|addr| (mode.as_str(), addr, 0, 1)),
        [mode, addr, timeout] => addr
            .parse()
            .ok()
            .zip(timeout.parse().ok())
            .map(|(addr, timeout)| (mode.as_str(), addr, timeout, 1)),
        [mode, addr, timeout, count] => addr
            .parse()
            .ok()
            .zip(timeout.parse().ok())
            .zip(count.parse().ok())
            .map(|((addr, timeout), count)| (mode.as_str(), addr, timeout, count)),
        _ => None,
    };
    let Some((mode, addr, timeout_ms, count)) = parsed else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let timeout = Duration::from_millis(timeout_ms);
    let mut answer = String::new();
    let result = match mode {
        "tcp-serve" => tcp_serve(addr),
        "tcp-sink" => tcp_sink(addr),
        "tcp-accept" => tcp_accept(addr),
        "tcp-connect-timed" => tcp_connect_timed(addr, count).map(|times| answer = times),
        "udp-serve" => udp_serve(addr),
        "http-serve" => http_serve(addr),
        "http-get" => http_get(addr, timeout).map(|body| answer = body),
        "tcp-connect" => tcp_connect(addr, timeout),
        "udp-send" => udp_send(addr, timeout, false),
        "udp-broadcast" => udp_send(addr, timeout, true),
        "udp-send-from" => udp_send_from(addr, timeout, count),
        "tcp-connect-repeat" => tcp_connect_repeat(addr, timeout, count, Duration::ZERO),
        "tcp-connect-paced" => tcp_connect_repeat(addr, timeout, count, PACE),
        "tcp-denied-paced" => tcp_denied_repeat(addr, timeout, count, PACE),
        "tcp-denied-burst" => tcp_denied_repeat(addr, timeout, count, Duration::ZERO),
        "raw-socket" => raw_socket(addr),
        "ping" => ping(addr, timeout),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    report(result, &answer)
}

/// Prints the one-line outcome (and the answer after `ok`) and returns the exit code.
fn report(result: io::Result<()>, answer: &str) -> ExitCode {
    match result {
        Ok(()) => {
            println!("ok");
            print!("{answer}");
            ExitCode::SUCCESS
        }
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            println!("timeout");
            ExitCode::FAILURE
        }
        Err(err) => {
            println!("error {} {err}", err.raw_os_error().unwrap_or(0));
            ExitCode::FAILURE
        }
    }
}

fn announce(addr: SocketAddr) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "listening {addr}")?;
    stdout.flush()
}

fn tcp_serve(addr: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    announce(listener.local_addr()?)?;
    for stream in listener.incoming() {
        let stream = stream?;
        std::thread::spawn(move || {
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            if reader.read_line(&mut line).is_ok() {
                let _ = (&stream).write_all(line.as_bytes());
            }
        });
    }
    Ok(())
}

/// Reads every connection to `addr` to its end and answers with the byte count read.
fn tcp_sink(addr: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    announce(listener.local_addr()?)?;
    for stream in listener.incoming() {
        let mut stream = stream?;
        std::thread::spawn(move || {
            if let Ok(read) = io::copy(&mut stream, &mut io::sink()) {
                let _ = writeln!(stream, "{read}");
            }
        });
    }
    Ok(())
}

/// Accepts every connection to `addr` and closes it at once.
fn tcp_accept(addr: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    announce(listener.local_addr()?)?;
    loop {
        drop(listener.accept()?);
    }
}

/// `count` blocking connections to `addr`, each closed with a reset; the p50 and p99
/// duration of `connect()` in ns, as one line.
fn tcp_connect_timed(addr: SocketAddr, count: u32) -> io::Result<String> {
    let mut times = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let started = std::time::Instant::now();
        let stream = TcpStream::connect(addr)?;
        times.push(started.elapsed().as_nanos());
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket and a `linger` of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&stream),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok(format!("{} {}\n", at(0.5), at(0.99)))
}

/// Serves HTTP/1.1 on `addr`, answering every request with `200 OK` and the server's
/// cgroup (from `/proc/self/cgroup`), one connection per task.
fn http_serve(addr: SocketAddr) -> io::Result<()> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")?;
    let body = Bytes::from(format!(
        "served by cgroup {}\n",
        cgroup.trim().trim_start_matches("0::")
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        announce(listener.local_addr()?)?;
        loop {
            let (stream, _) = listener.accept().await?;
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request: Request<Incoming>| {
                    let response = Response::new(Full::new(body.clone()));
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// `GET /` from `addr` within `timeout`; returns the body of a `200 OK`, anything else is
/// an error. A refused `connect()` keeps its errno (EPERM from a cgroup hook), a dropped
/// SYN is a timeout.
fn http_get(addr: SocketAddr, timeout: Duration) -> io::Result<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    match agent.get(format!("http://{addr}/")).call() {
        Ok(mut response) if response.status() == 200 => response
            .body_mut()
            .read_to_string()
            .map_err(io::Error::other),
        Ok(response) => Err(io::Error::other(format!(
            "HTTP status {}",
            response.status()
        ))),
        Err(ureq::Error::Timeout(_)) => Err(io::ErrorKind::TimedOut.into()),
        Err(ureq::Error::Io(err)) => Err(err),
        Err(err) => Err(io::Error::other(err)),
    }
}

fn udp_serve(addr: SocketAddr) -> io::Result<()> {
    let socket = UdpSocket::bind(addr)?;
    announce(socket.local_addr()?)?;
    let mut buf = [0u8; 1500];
    loop {
        let (len, from) = socket.recv_from(&mut buf)?;
        socket.send_to(&buf[..len], from)?;
    }
}

fn tcp_connect(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"ping\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    expect_echo(line.as_bytes())
}

fn tcp_connect_repeat(
    addr: SocketAddr,
    timeout: Duration,
    count: u32,
    pause: Duration,
) -> io::Result<()> {
    for attempt in 1..=count {
        // The error itself is printed on stdout as usual (its errno intact); which
        // attempt failed goes to stderr for the test log.
        tcp_connect(addr, timeout).inspect_err(|_| eprintln!("attempt {attempt} of {count}"))?;
        std::thread::sleep(pause);
    }
    Ok(())
}

fn tcp_denied_repeat(
    addr: SocketAddr,
    timeout: Duration,
    count: u32,
    pace: Duration,
) -> io::Result<()> {
    for attempt in 1..=count {
        match TcpStream::connect_timeout(&addr, timeout) {
            Err(err) if err.raw_os_error() == Some(libc::EPERM) => {}
            Err(err) => {
                eprintln!("attempt {attempt} of {count}");
                return Err(err);
            }
            Ok(_) => {
                eprintln!("attempt {attempt} of {count}");
                return Err(io::Error::other("a denied connection succeeded"));
            }
        }
        std::thread::sleep(pace);
    }
    Ok(())
}

fn raw_socket(addr: SocketAddr) -> io::Result<()> {
    let (family, protocol) = if addr.is_ipv4() {
        (libc::AF_INET, libc::IPPROTO_ICMP)
    } else {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6)
    };
    // SAFETY: socket() takes no pointers; the descriptor is closed right below.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor this function just opened and owns.
    unsafe { libc::close(fd) };
    Ok(())
}

/// One echo request from a ping socket to `addr`'s address, sent with `sendto` and no
/// `connect`, and its reply awaited.
fn ping(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

    let (family, protocol, request, reply) = if addr.is_ipv4() {
        (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8)
    } else {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128, 129)
    };
    // SAFETY: socket() takes no pointers.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros().min(999_999) as i32),
    };
    // SAFETY: `tv` is a valid timeval of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // Type, code, checksum and identifier are filled in by the kernel for ping sockets
    // but the type; sequence 1 and a payload follow.
    let mut message = [0u8; 16];
    message[0] = request;
    message[7] = 1;
    message[8..].copy_from_slice(b"enforcer");
    let sent = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: the buffer and address are valid for the lengths passed.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    message.as_ptr().cast(),
                    message.len(),
                    0,
                    (&raw const sin).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: the buffer and address are valid for the lengths passed.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    message.as_ptr().cast(),
                    message.len(),
                    0,
                    (&raw const sin6).cast(),
                    size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 64];
    // SAFETY: `buf` is writable for its whole length.
    let got = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    if got < 1 || buf[0] != reply {
        return Err(io::Error::other("an answer that is not an echo reply"));
    }
    Ok(())
}

/// One datagram to `addr` from an unconnected socket bound to local port `port` (on every
/// address), and its echo awaited.
fn udp_send_from(addr: SocketAddr, timeout: Duration, port: u32) -> io::Result<()> {
    let port = u16::try_from(port).map_err(|_| io::Error::other("not a port"))?;
    let local: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], port))
    } else {
        SocketAddr::from(([0u16; 8], port))
    };
    let socket = UdpSocket::bind(local)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send_to(b"ping\n", addr)?;
    let mut buf = [0u8; 64];
    let (len, _) = socket.recv_from(&mut buf)?;
    expect_echo(&buf[..len])
}

/// One datagram to `addr` from an unconnected socket (with `SO_BROADCAST` when
/// `broadcast`), and its echo awaited.
fn udp_send(addr: SocketAddr, timeout: Duration, broadcast: bool) -> io::Result<()> {
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    // Unconnected on purpose: `sendto` on an unconnected socket is what sendmsg4/6 see.
    let socket = UdpSocket::bind(local)?;
    socket.set_broadcast(broadcast)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send_to(b"ping\n", addr)?;
    let mut buf = [0u8; 64];
    let (len, _) = socket.recv_from(&mut buf)?;
    expect_echo(&buf[..len])
}

fn expect_echo(reply: &[u8]) -> io::Result<()> {
    if reply == b"ping\n" {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected reply {:?}", String::from_utf8_lossy(reply)),
        ))
    }
}

/// How `udp-send-route` hands its source route to the kernel.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RouteBy {
    /// A socket option (`IPV6_RTHDR`, `IP_OPTIONS`), then a plain `sendto`.
    Sockopt,
    /// Ancillary data of the `sendmsg` call (`IPV6_RTHDR`, `IP_RETOPTS`).
    Cmsg,
    /// No route: the socket option is cleared (set empty), then a plain `sendto`.
    Cleared,
}

/// The arguments of `udp-send-route`.
struct SourceRouteRequest {
    addr: SocketAddr,
    via: IpAddr,
    timeout: Duration,
    by: RouteBy,
    gate: Option<PathBuf>,
}

/// Parses `ADDR VIA TIMEOUT_MS sockopt|cmsg|none [GATE_DIR]`; `None` for anything else,
/// VIA of another family than ADDR included.
fn source_route_request(args: &[String]) -> Option<SourceRouteRequest> {
    let (addr, via, timeout, by, gate) = match args {
        [addr, via, timeout, by] => (addr, via, timeout, by, None),
        [addr, via, timeout, by, gate] => (addr, via, timeout, by, Some(PathBuf::from(gate))),
        _ => return None,
    };
    let addr: SocketAddr = addr.parse().ok()?;
    let via: IpAddr = via.parse().ok()?;
    let by = match by.as_str() {
        "sockopt" => RouteBy::Sockopt,
        "cmsg" => RouteBy::Cmsg,
        "none" => RouteBy::Cleared,
        _ => return None,
    };
    (addr.is_ipv4() == via.is_ipv4()).then_some(SourceRouteRequest {
        addr,
        via,
        timeout: Duration::from_millis(timeout.parse().ok()?),
        by,
        gate,
    })
}

/// `IP_RETOPTS`: IPv4 options as ancillary data of `sendmsg`.
const IP_RETOPTS: libc::c_int = 7;
/// IPv4 option type of a loose source and record route.
const IPOPT_LSRR: u8 = 0x83;
/// IPv6 routing header type 4: a segment routing header (RFC 8754).
const IPV6_SRCRT_TYPE_4: u8 = 4;

/// The source route through `via`, as the kernel takes it from a socket option or
/// ancillary data: for IPv6 a segment routing header whose only segment is `via` with
/// no segment left (the kernel sends the datagram to `via` and puts the destination in
/// the header), for IPv4 an LSRR option whose first hop is `via` (the kernel appends
/// the destination), padded with end-of-options to a multiple of four bytes.
fn source_route(via: IpAddr) -> Vec<u8> {
    match via {
        IpAddr::V6(via) => {
            // Next header (filled by the kernel), length in 8-byte units after the first
            // 8, type, segments left, last entry, flags, tag (2 bytes), the segment.
            let mut header = vec![0, 2, IPV6_SRCRT_TYPE_4, 0, 0, 0, 0, 0];
            header.extend_from_slice(&via.octets());
            header
        }
        IpAddr::V4(via) => {
            // Type, length, pointer, the first hop, end of options.
            let mut option = vec![IPOPT_LSRR, 7, 4];
            option.extend_from_slice(&via.octets());
            option.push(0);
            option
        }
    }
}

/// The `sockaddr` of `addr`, with its length.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero bytes are a valid `sockaddr_storage`.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sockaddr_storage` is larger than and aligned for `sockaddr_in`.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: `sockaddr_storage` is larger than and aligned for `sockaddr_in6`.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Sends `ping\n` to the request's address with a source route through VIA, handed to
/// the kernel as the request says, waits for the echo and returns who answered.
fn udp_send_route(request: &SourceRouteRequest) -> io::Result<SocketAddr> {
    use std::os::fd::AsRawFd as _;

    let v4 = request.addr.is_ipv4();
    let local: SocketAddr = if v4 {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let socket = UdpSocket::bind(local)?;
    socket.set_read_timeout(Some(request.timeout))?;
    let fd = socket.as_raw_fd();
    let route = source_route(request.via);
    let (level, option, cmsg_type) = if v4 {
        (libc::IPPROTO_IP, libc::IP_OPTIONS, IP_RETOPTS)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_RTHDR, libc::IPV6_RTHDR)
    };
    match request.by {
        RouteBy::Sockopt => set_option(fd, level, option, &route)?,
        RouteBy::Cleared => set_option(fd, level, option, &[])?,
        RouteBy::Cmsg => {}
    }
    if let Some(gate) = &request.gate {
        wait_at_gate(gate, request.timeout)?;
    }
    let message = b"ping\n";
    if request.by == RouteBy::Cmsg {
        send_with_cmsg(fd, request.addr, message, (level, cmsg_type, &route))?;
    } else {
        socket.send_to(message, request.addr)?;
    }
    let mut buf = [0u8; 64];
    let (len, from) = socket.recv_from(&mut buf)?;
    expect_echo(&buf[..len]).map(|()| from)
}

/// `setsockopt(fd, level, option, value)`.
fn set_option(fd: i32, level: i32, option: i32, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` is readable for the length passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Creates `gate/ready`, then waits (in steps of 10 ms, at most `timeout`) for
/// `gate/go` to appear.
fn wait_at_gate(gate: &Path, timeout: Duration) -> io::Result<()> {
    const STEP: Duration = Duration::from_millis(10);
    std::fs::File::create(gate.join("ready"))?;
    let steps = timeout.as_millis() / STEP.as_millis();
    for _ in 0..=steps {
        if gate.join("go").exists() {
            return Ok(());
        }
        std::thread::sleep(STEP);
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "the gate did not open",
    ))
}

/// `sendmsg` of `message` to `addr` with one control message `(level, type, data)`.
fn send_with_cmsg(
    fd: i32,
    addr: SocketAddr,
    message: &[u8],
    (level, kind, data): (i32, i32, &[u8]),
) -> io::Result<()> {
    let (mut name, name_len) = sockaddr(addr);
    let mut iov = libc::iovec {
        iov_base: message.as_ptr().cast_mut().cast(),
        iov_len: message.len(),
    };
    // u64 words keep the control buffer aligned for `cmsghdr`.
    let mut control = [0u64; 16];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(data.len() as u32) } as usize;
    assert!(space <= size_of_val(&control), "control message too large");
    // SAFETY: all-zero bytes are a valid `msghdr`; every pointer set below outlives the
    // `sendmsg` call, and the control buffer holds the one message written into it.
    let sent = unsafe {
        let mut header: libc::msghdr = std::mem::zeroed();
        header.msg_name = (&raw mut name).cast();
        header.msg_namelen = name_len;
        header.msg_iov = &raw mut iov;
        header.msg_iovlen = 1;
        header.msg_control = control.as_mut_ptr().cast();
        header.msg_controllen = space;
        let cmsg = libc::CMSG_FIRSTHDR(&raw const header);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data.len() as u32) as usize;
        std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(cmsg), data.len());
        libc::sendmsg(fd, &raw const header, 0)
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
