//! Forwarding the store to a collector as RFC 5424 syslog over TCP (octet-counted
//! framing, RFC 6587), for a SIEM inside the enclave.
//!
//! The queue is the store itself: the forwarder reads it from a cursor
//! (`forward.cursor` in the store directory, the file number and byte offset up to which
//! the collector has the records), so a collector outage or an agent restart loses
//! nothing while the records are retained, and the queue is bounded by the store's
//! retention. The cursor only moves past a record once the collector's TCP stack has
//! acknowledged its bytes (the socket's unacknowledged send queue, `SIOCOUTQ`, says so);
//! after a broken connection everything past the cursor is sent again. Delivery is thus
//! at least once; `metadata.sequence` identifies repeats. Over TLS (rustls, the collector's
//! certificate checked against a configured CA) the cursor moves once the send queue is
//! empty, since TLS framing hides which record a byte belongs to.

use std::{
    collections::VecDeque,
    fs::{self, File},
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject as _};
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
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the forwarder waits before it connects again after a failure.
const RECONNECT: Duration = Duration::from_millis(500);
/// How often the forwarder looks for new records when it has sent everything.
const POLL: Duration = Duration::from_millis(100);
/// Most bytes read from the store at once.
const READ_CHUNK: usize = 4 << 20;

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
}

/// TLS to the collector.
#[derive(Clone)]
pub struct Tls {
    /// The client configuration (trusted CA).
    pub config: Arc<rustls::ClientConfig>,
    /// The name the collector's certificate must carry.
    pub server_name: ServerName<'static>,
}

/// Why a TLS setup could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read or holds no certificate.
    #[error("{}: {message}", .path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The server name is not a DNS name or address.
    #[error("`{0}` is not a DNS name or an IP address")]
    ServerName(String),
}

impl Tls {
    /// Trusts the CA certificates (PEM) in `ca_file`; the collector must present a
    /// certificate for `server_name`.
    pub fn new(ca_file: &Path, server_name: &str) -> Result<Self, TlsError> {
        let ca_error = |message: String| TlsError::Ca {
            path: ca_file.to_owned(),
            message,
        };
        let mut roots = rustls::RootCertStore::empty();
        let certificates =
            CertificateDer::pem_file_iter(ca_file).map_err(|err| ca_error(err.to_string()))?;
        for certificate in certificates {
            let certificate = certificate.map_err(|err| ca_error(err.to_string()))?;
            roots
                .add(certificate)
                .map_err(|err| ca_error(err.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ca_error("no PEM certificate in the file".to_owned()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| ca_error(err.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
            server_name: ServerName::try_from(server_name.to_owned())
                .map_err(|_| TlsError::ServerName(server_name.to_owned()))?,
        })
    }
}

/// The forwarder of one store to one collector.
pub struct Forwarder {
    /// The store directory.
    pub dir: PathBuf,
    /// The collector.
    pub address: SocketAddr,
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

/// One record as an RFC 5424 message with octet-counting framing.
pub fn frame(line: &str, record: &Record, pid: u32) -> Vec<u8> {
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
        "<{}>1 {} {} enforcer {pid} {} - {line}",
        FACILITY_AUDIT * 8 + severity,
        timestamp,
        if hostname.is_empty() { "-" } else { &hostname },
        record.unmapped.kind.word(),
    );
    format!("{} {message}", message.len()).into_bytes()
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
}

impl Forwarder {
    /// Connects, and over TLS completes the handshake (so a certificate problem is a
    /// connection failure, reported once per outage).
    fn connect(&self) -> io::Result<Transport> {
        let stream = TcpStream::connect_timeout(&self.address, CONNECT_TIMEOUT)?;
        let _ = stream.set_nodelay(true);
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let Some(tls) = &self.tls else {
            return Ok(Transport::Plain(stream));
        };
        let mut connection =
            rustls::ClientConnection::new(Arc::clone(&tls.config), tls.server_name.clone())
                .map_err(io::Error::other)?;
        let mut stream = stream;
        while connection.is_handshaking() {
            connection.complete_io(&mut stream)?;
        }
        Ok(Transport::Tls(Box::new(rustls::StreamOwned::new(
            connection, stream,
        ))))
    }

    /// Runs until `stop` is set (then makes one last pass, bounded in time).
    pub fn run(self, stop: &AtomicBool) {
        let mut delivered = load_cursor(&self.dir);
        let mut saved = delivered;
        let mut down_since: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            let transport = match self.connect() {
                Ok(transport) => transport,
                Err(err) => {
                    if down_since.is_none() {
                        tracing::warn!(collector = %self.address, error = %err, "cannot reach the syslog collector; records wait in the store");
                        down_since = Some(Instant::now());
                    }
                    std::thread::sleep(RECONNECT);
                    continue;
                }
            };
            if let Some(since) = down_since.take() {
                tracing::info!(collector = %self.address, down_s = since.elapsed().as_secs(), "syslog collector reachable again; sending what it missed");
            } else {
                tracing::info!(collector = %self.address, tls = self.tls.is_some(), "forwarding audit records");
            }
            self.stats.connected.store(true, Ordering::Relaxed);
            let mut connection = Connection {
                transport,
                sent: 0,
                in_flight: VecDeque::new(),
            };
            let outcome = self.serve(&mut connection, &mut delivered, &mut saved, stop);
            self.stats.connected.store(false, Ordering::Relaxed);
            if let Err(err) = outcome {
                tracing::warn!(collector = %self.address, error = %err, "syslog connection lost; unacknowledged records will be sent again");
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
        let mut file = File::open(&current.path)?;
        file.seek(SeekFrom::Start(at.offset))?;
        let mut bytes = Vec::new();
        file.take(READ_CHUNK as u64).read_to_end(&mut bytes)?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut sent_any = false;
        let mut out = Vec::new();
        let mut offset = at.offset;
        for line in bytes[..complete].split_inclusive(|&b| b == b'\n') {
            offset += line.len() as u64;
            let text = String::from_utf8_lossy(line);
            let text = text.trim_end_matches('\n');
            let Ok(record) = serde_json::from_str::<Record>(text) else {
                tracing::error!(file = %current.path.display(), offset, "a line of the store is not a record; forwarded as is");
                continue;
            };
            let framed = frame(text, &record, self.pid);
            connection.sent += framed.len() as u64;
            out.extend_from_slice(&framed);
            connection.in_flight.push_back((
                connection.sent,
                Cursor {
                    file: at.file,
                    offset,
                },
            ));
            sent_any = true;
        }
        if !out.is_empty() {
            connection.transport.send(&out)?;
        }
        at.offset = offset;
        let at_end = complete == bytes.len() && bytes.len() < READ_CHUNK;
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
    use super::*;

    #[test]
    fn a_record_is_framed_as_rfc5424_with_its_octet_count() {
        let record = Record::new(Kind::Gap, 1_700_000_000_123, "host-a", "3 lost".into());
        let line = serde_json::to_string(&record).unwrap();
        let framed = String::from_utf8(frame(&line, &record, 42)).unwrap();
        let (count, message) = framed.split_once(' ').unwrap();
        assert_eq!(count.parse::<usize>().unwrap(), message.len());
        assert!(
            message.starts_with("<107>1 2023-11-14T22:13:20.123Z host-a enforcer 42 gap - {"),
            "{message}"
        );
        assert!(message.ends_with(&line));
    }

    #[test]
    fn a_time_rfc3339_cannot_write_is_framed_as_the_nilvalue() {
        // Found by the audit_record fuzz target: formatting year 10000 panicked.
        for time in [i64::MAX, 253_402_300_800_000, -1] {
            let record = Record::new(Kind::Gap, time, "host-a", "3 lost".into());
            let line = serde_json::to_string(&record).unwrap();
            let framed = String::from_utf8(frame(&line, &record, 42)).unwrap();
            assert!(
                framed.contains("<107>1 - host-a enforcer 42 gap - {"),
                "{framed}"
            );
        }
        let record = Record::new(Kind::Gap, 253_402_300_799_999, "host-a", "3 lost".into());
        let line = serde_json::to_string(&record).unwrap();
        let framed = String::from_utf8(frame(&line, &record, 42)).unwrap();
        assert!(framed.contains(" 9999-12-31T23:59:59.999Z "), "{framed}");
    }
}
