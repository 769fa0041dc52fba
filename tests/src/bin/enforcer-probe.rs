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
//! `http-serve` is an HTTP/1.1 server (hyper) that answers every request with
//! `200 OK` and the cgroup it runs in, so a client sees which service answered;
//! `http-get` sends `GET /` (ureq) and reports `ok` for a `200`, like the other clients,
//! followed by the answer's body on the lines after it.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
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

const USAGE: &str = "usage: enforcer-probe tcp-serve|udp-serve|http-serve|raw-socket ADDR:PORT\n       \
                     enforcer-probe tcp-connect|udp-send|http-get|ping ADDR:PORT TIMEOUT_MS\n       \
                     enforcer-probe tcp-connect-repeat|tcp-connect-paced|tcp-denied-paced|tcp-denied-burst ADDR:PORT TIMEOUT_MS COUNT";

/// The pause between attempts of the paced modes.
const PACE: Duration = Duration::from_millis(2);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
        "udp-serve" => udp_serve(addr),
        "http-serve" => http_serve(addr),
        "http-get" => http_get(addr, timeout).map(|body| answer = body),
        "tcp-connect" => tcp_connect(addr, timeout),
        "udp-send" => udp_send(addr, timeout),
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

fn udp_send(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    // Unconnected on purpose: `sendto` on an unconnected socket is what sendmsg4/6 see.
    let socket = UdpSocket::bind(local)?;
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
