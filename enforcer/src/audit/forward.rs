//! Forwarding the store to a collector as RFC 5424 syslog over TCP, for a SIEM inside the
//! enclave. Records are framed by octet counting (RFC 6587 3.4.1, the default) or by a
//! trailing newline (RFC 6587 3.4.2), whichever the collector's input takes ([`Framing`]).
//!
//! The collector is an IP address or a host name ([`Collector`]); a name is resolved by the
//! system resolver (`getaddrinfo`: `/etc/hosts`, then whatever `nsswitch.conf` lists) at
//! every connection attempt, and every address it resolves to is tried in turn. A name that
//! does not resolve is a failed attempt like a refused connection: logged, counted and
//! tried again.
//!
//! The queue is the store itself: the forwarder reads it from a cursor
//! (`forward.cursor` in the store directory, the file number and byte offset up to which
//! the collector has the records), so a collector outage or an agent restart loses
//! nothing while the records are retained, and the queue is bounded by the store's
//! retention. The cursor only moves past a record once the collector's TCP stack has
//! acknowledged its bytes (the socket's unacknowledged send queue, `SIOCOUTQ`, says so);
//! after a broken connection everything past the cursor is sent again. Delivery is thus
//! at least once; `metadata.sequence` identifies repeats. Over TLS (rustls, the collector's
//! certificate checked against a configured CA, optionally a client certificate for a
//! collector that requires one) the cursor moves once the send queue is empty, since TLS
//! framing hides which record a byte belongs to.

use std::{
    collections::VecDeque,
    fmt,
    fs::{self, File},
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    net::{SocketAddr, TcpStream, ToSocketAddrs as _},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use serde::{Deserialize, Serialize};

use super::{
    files,
    record::{Kind, Record},
};
use crate::durable;

/// The cursor file in the store directory.
pub const CURSOR_FILE: &str = "forward.cursor";
/// syslog facility 13: log audit.
const FACILITY_AUDIT: u8 = 13;
/// How long a connection attempt to one address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the forwarder waits before it connects again after a failure.
const RECONNECT: Duration = Duration::from_millis(500);
/// How often the forwarder looks for new records when it has sent everything.
const POLL: Duration = Duration::from_millis(100);
/// Most bytes read from the store at once.
const READ_CHUNK: usize = 4 << 20;
/// How long, after a TLS handshake, the forwarder listens for the collector refusing it
/// before it sends a record (see [`Forwarder::settle`]).
const TLS_SETTLE: Duration = Duration::from_millis(300);

/// Where forwarding stands in the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The segment file.
    pub file: u64,
    /// Bytes of that file already delivered.
    pub offset: u64,
}

/// Counts the metrics endpoint shows.
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Records the collector's TCP stack acknowledged.
    pub delivered: AtomicU64,
    /// Whether a connection is up.
    pub connected: AtomicBool,
    /// Failed connection attempts and lost connections, by [`Failure`].
    pub failures: [AtomicU64; Failure::ALL.len()],
}

impl ForwardStats {
    /// How many times `failure` happened.
    pub fn failures(&self, failure: Failure) -> u64 {
        self.failures[failure as usize].load(Ordering::Relaxed)
    }

    fn failed(&self, failure: Failure) {
        self.failures[failure as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Why the forwarder is not sending: the `reason` label of
/// `enforcer_audit_forward_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The collector's host name did not resolve.
    Resolve,
    /// No address of the collector accepted a TCP connection.
    Connect,
    /// A TCP connection was made but the TLS handshake failed or the collector refused
    /// this client (its certificate, or the lack of one) right after it.
    Tls,
    /// An established connection broke (closed, reset, timed out).
    Lost,
}

impl Failure {
    /// Every failure, in label order.
    pub const ALL: [Self; 4] = [Self::Resolve, Self::Connect, Self::Tls, Self::Lost];

    /// The metric label.
    pub fn word(self) -> &'static str {
        match self {
            Self::Resolve => "resolve",
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Lost => "lost",
        }
    }
}

/// How records are delimited on the TCP stream (RFC 6587).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Framing {
    /// `LENGTH SP MESSAGE` (RFC 6587 3.4.1, as RFC 5425 prescribes for TLS): rsyslog's
    /// `imtcp`, syslog-ng's `syslog()` source. The default.
    #[default]
    OctetCounting,
    /// `MESSAGE LF` (RFC 6587 3.4.2, "non-transparent framing"): syslog-ng's `network()`
    /// source, and the line-based TCP inputs of most log shippers. Safe for these records:
    /// the message is the header (no control characters) and one stored line of JSON,
    /// which never holds an LF (the store is split at LF, and JSON escapes control
    /// characters inside strings); [`frame`] still turns any LF into a space, so no record
    /// can ever be split into two messages.
    Newline,
}

impl Framing {
    /// The config word.
    pub fn word(self) -> &'static str {
        match self {
            Self::OctetCounting => "octet-counting",
            Self::Newline => "newline",
        }
    }
}

/// The collector: an IP address or a host name, and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Collector {
    /// An address used as is.
    Address(SocketAddr),
    /// A host name, resolved at every connection attempt.
    Name {
        /// The host name, as configured.
        host: String,
        /// The port.
        port: u16,
    },
}

impl FromStr for Collector {
    type Err = ForwardError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let refuse = |hint| {
            Err(ForwardError::Address {
                text: text.to_owned(),
                hint,
            })
        };
        if let Ok(address) = text.parse::<SocketAddr>() {
            if address.port() == 0 {
                return refuse("the port is 1 to 65535");
            }
            return Ok(Self::Address(address));
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return refuse("no port");
        };
        if host.starts_with('[') {
            return match host
                .strip_prefix('[')
                .and_then(|inner| inner.strip_suffix(']'))
                .map(str::parse::<std::net::Ipv6Addr>)
            {
                Some(Ok(_)) => refuse("the port is 1 to 65535"),
                _ => refuse("not an IPv6 address in the brackets"),
            };
        }
        if host.contains(':') {
            return refuse("an IPv6 address goes in brackets: `[2001:db8::10]:6514`");
        }
        let port = match port.parse::<u16>() {
            Ok(number) if number != 0 && port.bytes().all(|b| b.is_ascii_digit()) => number,
            _ => return refuse("the port is 1 to 65535"),
        };
        if !is_host_name(host) {
            return refuse(
                "a host name is dot-separated labels of letters, digits, `-` and `_`, the last not all digits",
            );
        }
        Ok(Self::Name {
            host: host.to_owned(),
            port,
        })
    }
}

/// Whether `host` is a host name the resolver takes as a name: dot-separated labels of 1
/// to 63 letters, digits, `-` and `_`, not starting with `-`, 253 bytes at most, the last
/// label not all digits (so `10.1` is not taken for an address by `inet_aton`).
fn is_host_name(host: &str) -> bool {
    let labels: Vec<&str> = host.split('.').collect();
    !host.is_empty()
        && host.len() <= 253
        && labels.iter().all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && !labels
            .last()
            .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
}

impl fmt::Display for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(address) => address.fmt(f),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl Serialize for Collector {
    fn serialize<S: serde::Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        out.collect_str(self)
    }
}

impl Collector {
    /// The name the collector's TLS certificate is expected to carry unless configured
    /// otherwise: the host name, or the IP address.
    pub fn default_server_name(&self) -> String {
        match self {
            Self::Address(address) => address.ip().to_string(),
            Self::Name { host, .. } => host.clone(),
        }
    }

    /// The addresses to try, in the resolver's order (an address is itself). A name is
    /// looked up by the system resolver each time, so a changed `/etc/hosts` or DNS record
    /// applies at the next connection attempt; the lookup takes as long as the resolver's
    /// own timeouts.
    pub fn resolve(&self) -> io::Result<Vec<SocketAddr>> {
        let (host, port) = match self {
            Self::Address(address) => return Ok(vec![*address]),
            Self::Name { host, port } => (host, *port),
        };
        let addresses: Vec<SocketAddr> = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|err| io::Error::new(err.kind(), format!("cannot resolve {host}: {err}")))?
            .collect();
        if addresses.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("cannot resolve {host}: no address"),
            ));
        }
        Ok(addresses)
    }
}

/// TLS to the collector.
#[derive(Clone)]
pub struct Tls {
    /// The client configuration (trusted CA, client certificate if any).
    pub config: Arc<rustls::ClientConfig>,
    /// The name the collector's certificate must carry.
    pub server_name: ServerName<'static>,
}

/// A client certificate and its private key, for a collector that requires one (mutual
/// TLS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientCertificate {
    /// PEM file of the certificate, optionally followed by its intermediate CAs.
    pub cert_file: PathBuf,
    /// PEM file of the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Why a forwarding setting was refused: the collector's address, or what TLS is built
/// from. [`ForwardError::key`] names the `[audit.forward]` key each variant is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The address is not `host:port` or `address:port`.
    #[error("`{text}` is not a host:port or address:port ({hint})")]
    Address {
        /// The address as written.
        text: String,
        /// What is wrong with it.
        hint: &'static str,
    },
    /// The CA file could not be read or holds no certificate.
    #[error("{}: {message}", .path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The client certificate file could not be read or holds no certificate.
    #[error("{}: {message}", .path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The client key file could not be read, holds no key, or its key does not belong
    /// to the certificate.
    #[error("{}: {message}", .path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The server name is not a DNS name or address.
    #[error("`{0}` is not a DNS name or an IP address")]
    ServerName(String),
}

impl ForwardError {
    /// The `[audit.forward]` key the problem is about.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Address { .. } => "address",
            Self::Ca { .. } => "ca_file",
            Self::Certificate { .. } => "cert_file",
            Self::Key { .. } => "key_file",
            Self::ServerName(_) => "server_name",
        }
    }
}

impl Tls {
    /// Trusts the CA certificates (PEM) in `ca_file`; the collector must present a
    /// certificate for `server_name`. With `client`, this certificate is presented to a
    /// collector that asks for one.
    pub fn new(
        ca_file: &Path,
        client: Option<&ClientCertificate>,
        server_name: &str,
    ) -> Result<Self, ForwardError> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| ForwardError::ServerName(server_name.to_owned()))?;
        let ca_error = |message: String| ForwardError::Ca {
            path: ca_file.to_owned(),
            message,
        };
        let mut roots = rustls::RootCertStore::empty();
        for certificate in certificates(ca_file).map_err(ca_error)? {
            roots
                .add(certificate)
                .map_err(|err| ca_error(err.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| ca_error(err.to_string()))?
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some(client) => {
                let chain = certificates(&client.cert_file).map_err(|message| {
                    ForwardError::Certificate {
                        path: client.cert_file.clone(),
                        message,
                    }
                })?;
                let key_error = |message: String| ForwardError::Key {
                    path: client.key_file.clone(),
                    message,
                };
                let key = PrivateKeyDer::from_pem_file(&client.key_file).map_err(|err| {
                    key_error(match err {
                        rustls_pki_types::pem::Error::NoItemsFound => {
                            "no PEM private key in the file".to_owned()
                        }
                        other => other.to_string(),
                    })
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|err| match err {
                        rustls::Error::InconsistentKeys(_) => key_error(format!(
                            "this key does not belong to the certificate in {}",
                            client.cert_file.display()
                        )),
                        other => key_error(other.to_string()),
                    })?
            }
        };
        Ok(Self {
            config: Arc::new(config),
            server_name,
        })
    }
}

/// The certificates (PEM) in `path`: at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|err| err.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| err.to_string())?;
    if certificates.is_empty() {
        return Err("no PEM certificate in the file".to_owned());
    }
    Ok(certificates)
}

/// The forwarder of one store to one collector.
pub struct Forwarder {
    /// The store directory.
    pub dir: PathBuf,
    /// The collector.
    pub address: Collector,
    /// How records are delimited.
    pub framing: Framing,
    /// TLS, when configured.
    pub tls: Option<Tls>,
    /// The agent's pid, the syslog PROCID.
    pub pid: u32,
    /// Counts for metrics.
    pub stats: Arc<ForwardStats>,
}

/// A connection to the collector, plain or TLS.
enum Transport {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Transport {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(stream) => stream,
            Self::Tls(stream) => &stream.sock,
        }
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(stream) => stream.write_all(bytes),
            Self::Tls(stream) => {
                stream.write_all(bytes)?;
                stream.flush()
            }
        }
    }

    /// Whether the collector closed or reset the connection (it sends nothing else; over
    /// TLS, session tickets are read and dropped).
    fn closed(&mut self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.tcp().as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        if unsafe { libc::poll(&raw mut poll, 1, 0) } == 0 {
            return false;
        }
        if poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return true;
        }
        let Self::Tls(stream) = self else {
            return true;
        };
        if stream.sock.set_nonblocking(true).is_err() {
            return true;
        }
        let mut sink = [0u8; 4096];
        let closed = loop {
            match stream.read(&mut sink) {
                Ok(0) => break true,
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        closed || stream.sock.set_nonblocking(false).is_err()
    }
}

/// The cursor last saved, or the store's beginning.
fn load_cursor(dir: &Path) -> Cursor {
    fs::read(dir.join(CURSOR_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn save_cursor(dir: &Path, cursor: Cursor) -> io::Result<()> {
    durable::replace_file(
        &dir.join(CURSOR_FILE),
        &serde_json::to_vec(&cursor).map_err(io::Error::other)?,
    )
}

/// One record as an RFC 5424 message, framed by `framing`. The message is the header and
/// the stored line unchanged, except that under [`Framing::Newline`] an LF in `line` (which
/// a stored line never has, and which in a line that parses as a record can only be JSON
/// whitespace) is sent as a space, so the frame's only LF is its end.
pub fn frame(line: &str, record: &Record, pid: u32, framing: Framing) -> Vec<u8> {
    let severity = match (
        record.unmapped.kind,
        record.flow().map(|f| f.verdict.as_str()),
    ) {
        (Kind::Gap, _) => 3,
        (Kind::Flow, Some("deny")) => 4,
        (Kind::Flow, Some("audit")) => 5,
        _ => 6,
    };
    // A time RFC 3339 cannot write (a corrupt or forged record's) is sent as the NILVALUE
    // rather than formatted, which would panic.
    let timestamp = super::record::rfc3339(record.time).unwrap_or_else(|| "-".to_owned());
    let hostname: String = record
        .device
        .hostname
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    let message = format!(
        "<{}>1 {} {} enforcer {pid} {} - ",
        FACILITY_AUDIT * 8 + severity,
        timestamp,
        if hostname.is_empty() { "-" } else { &hostname },
        record.unmapped.kind.word(),
    );
    match framing {
        Framing::OctetCounting => {
            format!("{} {message}{line}", message.len() + line.len()).into_bytes()
        }
        Framing::Newline => {
            let mut framed = message.into_bytes();
            framed.extend(line.bytes().map(|b| if b == b'\n' { b' ' } else { b }));
            framed.push(b'\n');
            framed
        }
    }
}

/// Bytes sent but not yet acknowledged by the peer (`SIOCOUTQ`).
fn unacknowledged(stream: &TcpStream) -> io::Result<u64> {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ for sockets) writes one int through the pointer, which
    // points to a live `c_int`.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &raw mut queued) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(queued).unwrap_or(0))
}

/// One connection's progress: what was sent, and where the store stands after each
/// record still unacknowledged.
struct Connection {
    transport: Transport,
    sent: u64,
    in_flight: VecDeque<(u64, Cursor)>,
    /// The reader of the file being sent, where it stopped (a compact file's reader
    /// knows the names its records so far defined).
    reading: Option<(Cursor, files::Records)>,
}

/// A failed connection attempt: why, and what was tried.
struct Refused {
    failure: Failure,
    error: String,
}

impl Forwarder {
    /// Resolves the collector and tries each of its addresses in turn until one accepts
    /// the connection (and, over TLS, the handshake, see [`Forwarder::settle`]); returns
    /// the connection and the address.
    fn connect(&self) -> Result<(Transport, SocketAddr), Refused> {
        let addresses = self.address.resolve().map_err(|err| Refused {
            failure: Failure::Resolve,
            error: err.to_string(),
        })?;
        self.connect_any(addresses)
    }

    /// Tries `addresses` in order; the first that takes the connection wins.
    fn connect_any(&self, addresses: Vec<SocketAddr>) -> Result<(Transport, SocketAddr), Refused> {
        let mut failure = Failure::Connect;
        let mut errors = Vec::new();
        for address in addresses {
            match self.connect_to(address) {
                Ok(transport) => return Ok((transport, address)),
                Err((stage, err)) => {
                    if stage == Failure::Tls {
                        failure = Failure::Tls;
                    }
                    errors.push(format!("{address}: {err}"));
                }
            }
        }
        Err(Refused {
            failure,
            error: errors.join("; "),
        })
    }

    /// Connects to one address, and over TLS completes the handshake (so a certificate
    /// problem is a connection failure, reported once per outage).
    fn connect_to(&self, address: SocketAddr) -> Result<Transport, (Failure, io::Error)> {
        let tcp = |err| (Failure::Connect, err);
        let mut stream = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT).map_err(tcp)?;
        let _ = stream.set_nodelay(true);
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .map_err(tcp)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(tcp)?;
        let Some(tls) = &self.tls else {
            return Ok(Transport::Plain(stream));
        };
        let tls_error = |err| (Failure::Tls, err);
        let mut connection =
            rustls::ClientConnection::new(Arc::clone(&tls.config), tls.server_name.clone())
                .map_err(|err| tls_error(io::Error::other(err)))?;
        while connection.is_handshaking() {
            connection.complete_io(&mut stream).map_err(tls_error)?;
        }
        Self::settle(&mut connection, &mut stream).map_err(tls_error)?;
        Ok(Transport::Tls(Box::new(rustls::StreamOwned::new(
            connection, stream,
        ))))
    }

    /// Waits up to [`TLS_SETTLE`] for the collector's first word after the handshake.
    /// In TLS 1.3 the client's handshake ends before the server has checked the client's
    /// certificate: a collector that requires one, and finds none or one it does not
    /// trust, answers with an alert and closes. Records sent before that alert would be
    /// acknowledged by its TCP stack, which moves the cursor, and then thrown away; so
    /// nothing is sent until the alert had the time to arrive. A session ticket or
    /// silence means the collector took this client.
    fn settle(connection: &mut rustls::ClientConnection, stream: &mut TcpStream) -> io::Result<()> {
        stream.set_read_timeout(Some(TLS_SETTLE))?;
        let outcome = match connection.read_tls(stream) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the collector closed the connection right after the TLS handshake (does it require a client certificate?)",
            )),
            Ok(_) => match connection.process_new_packets() {
                Err(err) => Err(io::Error::other(err)),
                Ok(state) if state.peer_has_closed() => Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the collector closed the TLS session right after the handshake",
                )),
                Ok(_) => Ok(()),
            },
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(err),
        };
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        outcome
    }

    /// Runs until `stop` is set (then makes one last pass, bounded in time).
    pub fn run(self, stop: &AtomicBool) {
        let mut delivered = load_cursor(&self.dir);
        let mut saved = delivered;
        let mut down_since: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            let (transport, peer) = match self.connect() {
                Ok(connected) => connected,
                Err(refused) => {
                    self.stats.failed(refused.failure);
                    if down_since.is_none() {
                        tracing::warn!(collector = %self.address, reason = refused.failure.word(), error = %refused.error, "cannot reach the syslog collector; records wait in the store");
                        down_since = Some(Instant::now());
                    }
                    std::thread::sleep(RECONNECT);
                    continue;
                }
            };
            if let Some(since) = down_since.take() {
                tracing::info!(collector = %self.address, %peer, down_s = since.elapsed().as_secs(), "syslog collector reachable again; sending what it missed");
            } else {
                tracing::info!(collector = %self.address, %peer, tls = self.tls.is_some(), framing = self.framing.word(), "forwarding audit records");
            }
            self.stats.connected.store(true, Ordering::Relaxed);
            let mut connection = Connection {
                transport,
                sent: 0,
                in_flight: VecDeque::new(),
                reading: None,
            };
            let outcome = self.serve(&mut connection, &mut delivered, &mut saved, stop);
            self.stats.connected.store(false, Ordering::Relaxed);
            if let Err(err) = outcome {
                self.stats.failed(Failure::Lost);
                tracing::warn!(collector = %self.address, %peer, error = %err, "syslog connection lost; unacknowledged records will be sent again");
                down_since = Some(Instant::now());
                std::thread::sleep(RECONNECT);
            }
        }
    }

    /// Sends records over one connection until it breaks or `stop` is set.
    fn serve(
        &self,
        connection: &mut Connection,
        delivered: &mut Cursor,
        saved: &mut Cursor,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        let mut read_at = *delivered;
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            let progressed = self.send_available(connection, &mut read_at)?;
            if connection.transport.closed() {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "the collector closed the connection",
                ));
            }
            let queued = unacknowledged(connection.transport.tcp())?;
            let acknowledged = match connection.transport {
                Transport::Plain(_) => connection.sent - queued,
                // TLS adds its own bytes: only an empty queue says what arrived.
                Transport::Tls(_) if queued == 0 => connection.sent,
                Transport::Tls(_) => 0,
            };
            while let Some(&(end, cursor)) = connection.in_flight.front() {
                if end > acknowledged {
                    break;
                }
                connection.in_flight.pop_front();
                *delivered = cursor;
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            if *delivered != *saved {
                save_cursor(&self.dir, *delivered)?;
                *saved = *delivered;
            }
            if stopping {
                return Ok(());
            }
            if !progressed {
                std::thread::sleep(POLL);
            }
        }
    }

    /// Sends the complete records after `at`; moves to the next file at the end of a
    /// file that has a successor. Returns whether anything was sent.
    fn send_available(&self, connection: &mut Connection, at: &mut Cursor) -> io::Result<bool> {
        let segments = files::segments(&self.dir)?;
        let Some(oldest) = segments.first() else {
            return Ok(false);
        };
        if at.file < oldest.number {
            if at.file != 0 {
                tracing::error!(
                    from = %files::segment_name(at.file),
                    to = %files::segment_name(oldest.number),
                    "retention removed audit files before they were forwarded"
                );
            }
            *at = Cursor {
                file: oldest.number,
                offset: 0,
            };
        }
        let Some(current) = segments.iter().find(|s| s.number == at.file) else {
            return Ok(false);
        };
        let mut records = match connection.reading.take() {
            Some((cursor, records)) if cursor == *at => records,
            _ => files::Records::at(current, at.offset)?,
        };
        let mut file = File::open(&current.path)?;
        file.seek(SeekFrom::Start(at.offset))?;
        let mut bytes = Vec::new();
        file.take(READ_CHUNK as u64).read_to_end(&mut bytes)?;
        let mut sent_any = false;
        let mut damaged = false;
        let mut out = Vec::new();
        let end = records.read(&bytes, at.offset, |stored| {
            match stored {
                Ok(stored) => {
                    let framed = frame(&stored.json(), &stored.record, self.pid, self.framing);
                    connection.sent += framed.len() as u64;
                    out.extend_from_slice(&framed);
                    connection.in_flight.push_back((
                        connection.sent,
                        Cursor {
                            file: at.file,
                            offset: stored.resume_at,
                        },
                    ));
                    sent_any = true;
                }
                Err(damage) => {
                    tracing::error!(file = %current.path.display(), %damage, "a record of the store is damaged: skipped, not forwarded (`enforcer audit verify` names it)");
                    damaged = matches!(damage, files::Damage::Compact(_));
                }
            }
            true
        });
        if !out.is_empty() {
            connection.transport.send(&out)?;
        }
        let complete = usize::try_from(end - at.offset).unwrap_or(bytes.len());
        at.offset = end;
        connection.reading = Some((*at, records));
        // A damaged compact file cannot be read past its damage: the next file goes on.
        let at_end = damaged || (complete == bytes.len() && bytes.len() < READ_CHUNK);
        if at_end && let Some(next) = segments.iter().find(|s| s.number > at.file) {
            *at = Cursor {
                file: next.number,
                offset: 0,
            };
            // The move itself is progress: the next pass reads the new file at once.
            if !sent_any {
                return Ok(true);
            }
        }
        Ok(sent_any)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader},
        net::TcpListener,
        sync::Mutex,
    };

    use super::*;
    use crate::audit::{
        record::Gap,
        store::{Fsync, Store, StoreSettings},
    };

    /// What the log says while `run` runs, as the agent's log would show it.
    fn logged(run: impl FnOnce()) -> String {
        /// The log's lines, shared with the subscriber.
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Captured {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, run);
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn files_removed_before_they_were_forwarded_are_logged_as_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let settings = StoreSettings {
            dir: dir.path().to_owned(),
            rotate_bytes: 2_000,
            rotate_age: Duration::from_secs(3600),
            retain_bytes: 6_000,
            retain_age: Duration::from_secs(86_400 * 365),
            fsync: Fsync::Never,
            format: files::Format::Compact,
        };
        // Forwarded into the first file; then the collector was away while the store
        // went on and retention removed that file and more.
        let mut store = Store::open(settings, "host-a", 1_000, None).unwrap();
        save_cursor(
            dir.path(),
            Cursor {
                file: 1,
                offset: 100,
            },
        )
        .unwrap();
        for n in 0..30 {
            let mut record = Record::new(Kind::Gap, 2_000, "host-a", format!("gap {n}"));
            record.unmapped.gap = Some(Gap {
                lost: 1,
                cause: "ring-full".into(),
                error: None,
            });
            store.write(&mut [record], 2_000).unwrap();
        }
        let oldest = files::segments(dir.path()).unwrap()[0].number;
        assert!(oldest > 2, "retention removed files");

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let forwarder = Forwarder {
            dir: dir.path().to_owned(),
            address: Collector::Address(listener.local_addr().unwrap()),
            framing: Framing::Newline,
            tls: None,
            pid: 1,
            stats: Arc::default(),
        };
        let log = logged(|| {
            let (transport, _) = forwarder
                .connect()
                .unwrap_or_else(|refused| panic!("{}", refused.error));
            let mut connection = Connection {
                transport,
                sent: 0,
                in_flight: VecDeque::new(),
                reading: None,
            };
            let (mut delivered, mut saved) = (load_cursor(dir.path()), load_cursor(dir.path()));
            // One pass.
            forwarder
                .serve(
                    &mut connection,
                    &mut delivered,
                    &mut saved,
                    &AtomicBool::new(true),
                )
                .unwrap();
        });
        let error = log
            .lines()
            .find(|line| line.contains("retention removed audit files before they were forwarded"))
            .unwrap_or_else(|| panic!("nothing logged about the removed files:\n{log}"));
        assert!(error.contains("ERROR"), "{error}");
        assert!(
            error.contains(&files::segment_name(1)) && error.contains(&files::segment_name(oldest)),
            "{error}"
        );
        // Forwarding goes on from the oldest file left, from its open record.
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut first = String::new();
        BufReader::new(stream).read_line(&mut first).unwrap();
        assert!(
            first.contains(&format!(
                "audit file {} opened (rotate)",
                files::name_in(oldest, files::Format::Compact)
            )),
            "{first}"
        );
    }

    fn gap() -> (Record, String) {
        let record = Record::new(Kind::Gap, 1_700_000_000_123, "host-a", "3 lost".into());
        let line = serde_json::to_string(&record).unwrap();
        (record, line)
    }

    #[test]
    fn a_record_is_framed_as_rfc5424_with_its_octet_count() {
        let (record, line) = gap();
        let framed = String::from_utf8(frame(&line, &record, 42, Framing::OctetCounting)).unwrap();
        let (count, message) = framed.split_once(' ').unwrap();
        assert_eq!(count.parse::<usize>().unwrap(), message.len());
        assert!(
            message.starts_with("<107>1 2023-11-14T22:13:20.123Z host-a enforcer 42 gap - {"),
            "{message}"
        );
        assert!(message.ends_with(&line));
    }

    #[test]
    fn newline_framing_ends_each_record_with_its_only_lf() {
        let (record, line) = gap();
        let framed = String::from_utf8(frame(&line, &record, 42, Framing::Newline)).unwrap();
        assert_eq!(
            framed,
            format!("<107>1 2023-11-14T22:13:20.123Z host-a enforcer 42 gap - {line}\n")
        );
        // A line that parses as a record can hold an LF only as JSON whitespace; it never
        // splits the record into two messages.
        let spread = line.replacen(',', ",\n", 2);
        let parsed: Record = serde_json::from_str(&spread).unwrap();
        let framed = String::from_utf8(frame(&spread, &parsed, 42, Framing::Newline)).unwrap();
        assert_eq!(framed.matches('\n').count(), 1, "{framed}");
        assert!(framed.ends_with('\n'));
        let message = framed.trim_end_matches('\n');
        let json = &message[message.find('{').unwrap()..];
        assert_eq!(serde_json::from_str::<Record>(json).unwrap(), parsed);
    }

    #[test]
    fn a_time_rfc3339_cannot_write_is_framed_as_the_nilvalue() {
        // Found by the audit_record fuzz target: formatting year 10000 panicked.
        for time in [i64::MAX, 253_402_300_800_000, -1] {
            let record = Record::new(Kind::Gap, time, "host-a", "3 lost".into());
            let line = serde_json::to_string(&record).unwrap();
            let framed =
                String::from_utf8(frame(&line, &record, 42, Framing::OctetCounting)).unwrap();
            assert!(
                framed.contains("<107>1 - host-a enforcer 42 gap - {"),
                "{framed}"
            );
        }
        let record = Record::new(Kind::Gap, 253_402_300_799_999, "host-a", "3 lost".into());
        let line = serde_json::to_string(&record).unwrap();
        let framed = String::from_utf8(frame(&line, &record, 42, Framing::OctetCounting)).unwrap();
        assert!(framed.contains(" 9999-12-31T23:59:59.999Z "), "{framed}");
    }

    #[test]
    fn a_collector_is_an_address_or_a_host_name_with_a_port() {
        let parse = |text: &str| text.parse::<Collector>();
        assert_eq!(
            parse("198.18.0.10:6514"),
            Ok(Collector::Address("198.18.0.10:6514".parse().unwrap()))
        );
        assert_eq!(
            parse("[2001:db8::10]:6514"),
            Ok(Collector::Address("[2001:db8::10]:6514".parse().unwrap()))
        );
        for (text, host) in [
            ("collector.example:6514", "collector.example"),
            ("siem-01:514", "siem-01"),
            ("log_in.enclave.internal:6514", "log_in.enclave.internal"),
        ] {
            let collector = parse(text).unwrap();
            assert_eq!(
                collector,
                Collector::Name {
                    host: host.to_owned(),
                    port: text.rsplit_once(':').unwrap().1.parse().unwrap()
                }
            );
            assert_eq!(collector.to_string(), text);
            assert_eq!(collector.default_server_name(), host);
        }
        assert_eq!(
            parse("[2001:db8::10]:6514").unwrap().default_server_name(),
            "2001:db8::10"
        );
        for (text, hint) in [
            ("collector.example", "no port"),
            ("collector.example:0", "the port is 1 to 65535"),
            ("198.18.0.10:0", "the port is 1 to 65535"),
            ("collector.example:65536", "the port is 1 to 65535"),
            ("collector.example:+80", "the port is 1 to 65535"),
            ("2001:db8::10:6514", "an IPv6 address goes in brackets"),
            ("[2001:db8::10]:x", "the port is 1 to 65535"),
            ("[collector]:6514", "not an IPv6 address in the brackets"),
            ("198.18.0.300:6514", "a host name is"),
            ("collector..example:6514", "a host name is"),
            ("-collector:6514", "a host name is"),
            ("collector example:6514", "a host name is"),
            (":6514", "a host name is"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(
                matches!(&err, ForwardError::Address { hint: said, .. } if said.starts_with(hint)),
                "{text}: {err}"
            );
            assert!(
                err.to_string()
                    .starts_with(&format!("`{text}` is not a host:port"))
            );
        }
    }

    #[test]
    fn an_address_resolves_to_itself_and_localhost_through_the_system_resolver() {
        let address: SocketAddr = "198.18.0.10:6514".parse().unwrap();
        assert_eq!(
            Collector::Address(address).resolve().unwrap(),
            vec![address]
        );
        let local = "localhost:6514"
            .parse::<Collector>()
            .unwrap()
            .resolve()
            .unwrap();
        assert!(
            local
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 6514)
                && !local.is_empty(),
            "{local:?}"
        );
    }

    /// A sealed store holding a denied flow, an audit-mode flow, an allowed flow and a gap
    /// (each severity), as lines in write order.
    fn store_of_every_severity(dir: &Path) -> Vec<String> {
        let settings = StoreSettings {
            dir: dir.to_owned(),
            rotate_bytes: 1 << 20,
            rotate_age: Duration::from_secs(3600),
            retain_bytes: u64::MAX,
            retain_age: Duration::from_secs(86_400),
            fsync: Fsync::Never,
            format: files::Format::Compact,
        };
        let now = 1_700_000_000_000;
        let mut store = Store::open(settings, "host-a", now, None).unwrap();
        let mut records = vec![
            Record::example_flow("deny", ("tcp", 6), 5432),
            Record::example_flow("audit", ("tcp", 6), 22),
            Record::example_flow("allow", ("tcp", 6), 80),
            gap().0,
        ];
        store.write(&mut records, now).unwrap();
        store.close(now).unwrap();
        files::stored_lines(dir)
    }

    /// Reads newline-framed messages from `stream` until `count` arrived (or 10 s passed).
    fn read_messages(stream: &mut TcpStream, count: usize) -> Vec<String> {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        while bytes.iter().filter(|&&b| b == b'\n').count() < count {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            }
        }
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits (at most 10 s) until `done` holds.
    fn eventually(what: &str, done: impl Fn() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(10), "never: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_store_is_forwarded_in_order_with_each_severity_and_not_again_after_a_reconnect() {
        let dir = tempfile::tempdir().unwrap();
        let lines = store_of_every_severity(dir.path());
        let collector = TcpListener::bind("127.0.0.1:0").unwrap();
        let stats: Arc<ForwardStats> = Arc::default();
        let forwarder = Forwarder {
            dir: dir.path().to_owned(),
            address: Collector::Address(collector.local_addr().unwrap()),
            framing: Framing::Newline,
            tls: None,
            pid: 1,
            stats: Arc::clone(&stats),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let running = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || forwarder.run(&stop))
        };

        let (mut stream, _) = collector.accept().unwrap();
        let messages = read_messages(&mut stream, lines.len());
        assert_eq!(messages.len(), lines.len(), "{messages:#?}");
        for (message, line) in messages.iter().zip(&lines) {
            assert!(
                message.ends_with(line.as_str()),
                "{message}\nis not\n{line}"
            );
        }
        // Facility 13 (log audit): deny is a warning, audit-mode a notice, allow
        // informational, a gap an error.
        let severities: Vec<&str> = messages
            .iter()
            .filter(|m| m.contains(" flow ") || m.contains(" gap "))
            .map(|m| &m[..5])
            .collect();
        assert_eq!(
            severities,
            ["<108>", "<109>", "<110>", "<107>"],
            "{messages:#?}"
        );
        eventually("every record delivered", || {
            stats.delivered.load(Ordering::Relaxed) == lines.len() as u64
        });
        eventually("the cursor saved at the end", || {
            load_cursor(dir.path()) != Cursor::default()
        });
        assert!(stats.connected.load(Ordering::Relaxed));

        // The collector goes away: a lost connection, nothing else; the forwarder comes
        // back and sends nothing again.
        drop(stream);
        eventually("the lost connection counted", || {
            stats.failures(Failure::Lost) == 1
        });
        for other in [Failure::Resolve, Failure::Connect, Failure::Tls] {
            assert_eq!(stats.failures(other), 0, "{other:?}");
        }
        let (mut again, _) = collector.accept().unwrap();
        again
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut resent = Vec::new();
        let _ = again.read_to_end(&mut resent);
        assert_eq!(String::from_utf8_lossy(&resent), "", "sent again");
        stop.store(true, Ordering::Relaxed);
        running.join().unwrap();
        assert_eq!(stats.delivered.load(Ordering::Relaxed), lines.len() as u64);
    }

    #[test]
    fn every_resolved_address_is_tried_in_turn() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let forwarder = Forwarder {
            dir: dir.path().to_owned(),
            address: Collector::Name {
                host: "collector.test".to_owned(),
                port: open.port(),
            },
            framing: Framing::Newline,
            tls: None,
            pid: 1,
            stats: Arc::default(),
        };
        let (_, peer) = forwarder
            .connect_any(vec![closed, open])
            .unwrap_or_else(|refused| panic!("{}", refused.error));
        assert_eq!(peer, open);
        let Err(refused) = forwarder.connect_any(vec![closed]) else {
            panic!("nothing listens on {closed}");
        };
        assert_eq!(refused.failure, Failure::Connect);
        assert!(
            refused.error.starts_with(&format!("{closed}: ")),
            "{}",
            refused.error
        );
    }
}
