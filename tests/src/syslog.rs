//! Real collectors audit records are forwarded to, each with its own config, listening on a
//! loopback port and writing each message's text to a file; stopped and removed on drop:
//!
//! - [`Rsyslog`] (the Debian package): `imtcp`, octet-counted, plain or TLS through the
//!   `gtls` driver of rsyslog-gnutls;
//! - [`SyslogNg`] (Debian's syslog-ng-core, unpacked by `./x setup` into the tools
//!   directory because it conflicts with rsyslog): the `network()` source with newline
//!   framing over plain TCP, or the `syslog()` source (octet counting) over TLS, with or
//!   without a required client certificate.
//!
//! Certificates ([`Pki`]) are made by `openssl`: a CA, server certificates for the names
//! a test asks for, client certificates, and a second, untrusted CA.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{PREFIX, next_serial, require_root, unique_name};

/// How long rsyslog may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running (or stopped) rsyslogd and its files.
#[derive(Debug)]
pub struct Rsyslog {
    dir: PathBuf,
    /// Where it listens.
    pub addr: SocketAddr,
    process: Option<Child>,
}

impl Rsyslog {
    /// Writes a config for a plain TCP collector on `addr` (loopback) and starts it.
    pub fn start(addr: SocketAddr) -> Self {
        Self::start_with(addr, false)
    }

    /// A TLS collector on `addr`: its certificate, for `collector.test` and the address,
    /// is signed by a fresh CA ([`Rsyslog::ca_file`]).
    pub fn start_tls(addr: SocketAddr) -> Self {
        Self::start_with(addr, true)
    }

    /// The CA certificate (PEM) of a TLS collector.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Another CA's certificate (PEM): the collector's certificate does not chain to it.
    pub fn untrusted_ca_file(&self) -> PathBuf {
        Pki {
            dir: self.dir.clone(),
        }
        .rogue_ca_file()
    }

    fn start_with(addr: SocketAddr, tls: bool) -> Self {
        require_root();
        let dir = std::env::temp_dir().join(unique_name());
        fs::create_dir_all(dir.join("work")).expect("create rsyslog's directory");
        let (global, module) = if tls {
            let pki = Pki::new(&dir);
            pki.server(
                "server",
                &["DNS:collector.test", &format!("IP:{}", addr.ip())],
            );
            (
                format!(
                    r#" DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="{ca}" DefaultNetstreamDriverCertFile="{cert}" DefaultNetstreamDriverKeyFile="{key}""#,
                    ca = dir.join("ca.pem").display(),
                    cert = dir.join("server.pem").display(),
                    key = dir.join("server.key").display(),
                ),
                r#" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon""#,
            )
        } else {
            (String::new(), "")
        };
        let config = format!(
            r#"global(workDirectory="{work}"{global})
module(load="imtcp"{module})
input(type="imtcp" address="{ip}" port="{port}")
template(name="message" type="string" string="%msg%\n")
action(type="omfile" file="{received}" template="message")
"#,
            work = dir.join("work").display(),
            ip = addr.ip(),
            port = addr.port(),
            received = dir.join("received.log").display(),
        );
        fs::write(dir.join("rsyslog.conf"), config).expect("write rsyslog.conf");
        let mut collector = Self {
            dir,
            addr,
            process: None,
        };
        collector.restart();
        collector
    }

    /// Starts rsyslogd again (after [`Rsyslog::stop`]); returns once it listens.
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "rsyslogd already runs");
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rsyslogd (the rsyslog package; ./x test installs it)");
        self.process = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err()
        {
            assert!(
                started.elapsed() < START_TIMEOUT,
                "rsyslogd does not listen on {} after {START_TIMEOUT:?}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops rsyslogd (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        let mut child = self.process.take().expect("rsyslogd runs");
        let pid = i32::try_from(child.id()).expect("pid fits");
        // SAFETY: kill() takes no pointers; `pid` is our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        child.wait().expect("reap rsyslogd");
    }

    /// Every message text received so far, one per line.
    pub fn received(&self) -> Vec<String> {
        fs::read_to_string(self.dir.join("received.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Runs `openssl ARGS` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (./x test installs it)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The certificates of one test, made by `openssl` in its directory: a CA (`ca.pem`)
/// and the certificates it signs, and an untrusted CA (`rogue-ca.pem`) with its own.
/// Every certificate is an EC P-256 one, valid for a day.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
}

/// A certificate (`NAME.pem`) and its key (`NAME.key`).
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
}

const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

impl Pki {
    /// Makes the CA (`ca.pem`, `ca.key`) in `dir`.
    pub fn new(dir: &Path) -> Self {
        let pki = Self {
            dir: dir.to_owned(),
        };
        pki.ca("ca", "enforcer test CA");
        pki
    }

    /// The trusted CA's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn ca(&self, name: &str, subject: &str) {
        let mut args = vec!["req", "-x509", "-days", "1", "-subj"];
        let subject = format!("/CN={subject}");
        args.push(&subject);
        args.extend(EC_KEY);
        let (key, cert) = (format!("{name}.key"), format!("{name}.pem"));
        args.extend(["-keyout", &key, "-out", &cert]);
        openssl(&self.dir, &args);
    }

    /// Signs a key and certificate `name` with the CA `ca`, for `alt_names`
    /// (`DNS:collector.test`, `IP:127.0.0.1`) and the extended key usage `usage`.
    fn issue(&self, ca: &str, name: &str, alt_names: &[&str], usage: &str) -> Issued {
        let subject = format!("/CN={name}");
        let (key, csr) = (format!("{name}.key"), format!("{name}.csr"));
        let mut request = vec!["req", "-subj", &subject];
        request.extend(EC_KEY);
        request.extend(["-keyout", &key, "-out", &csr]);
        openssl(&self.dir, &request);
        let mut extensions = format!("extendedKeyUsage={usage}\n");
        if !alt_names.is_empty() {
            extensions.push_str(&format!("subjectAltName={}\n", alt_names.join(",")));
        }
        let ext = format!("{name}.ext");
        fs::write(self.dir.join(&ext), extensions).expect("write the extensions");
        let (ca_cert, ca_key, cert) = (
            format!("{ca}.pem"),
            format!("{ca}.key"),
            format!("{name}.pem"),
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_cert,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
        );
        Issued {
            cert: self.dir.join(cert),
            key: self.dir.join(key),
        }
    }

    /// A server certificate `name` for `alt_names`, signed by the CA.
    pub fn server(&self, name: &str, alt_names: &[&str]) -> Issued {
        self.issue("ca", name, alt_names, "serverAuth")
    }

    /// A client certificate `name`, signed by the CA.
    pub fn client(&self, name: &str) -> Issued {
        self.issue("ca", name, &[], "clientAuth")
    }

    /// The certificate of another CA (`rogue-ca.pem`), which nothing trusts; made on
    /// first use.
    pub fn rogue_ca_file(&self) -> PathBuf {
        let path = self.dir.join("rogue-ca.pem");
        if !path.exists() {
            self.ca("rogue-ca", "untrusted test CA");
        }
        path
    }

    /// A client certificate `name` signed by another CA, which nothing trusts.
    pub fn rogue_client(&self, name: &str) -> Issued {
        self.rogue_ca_file();
        self.issue("rogue-ca", name, &[], "clientAuth")
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// How a [`SyslogNg`] listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogNgInput {
    /// The `network()` source over plain TCP: one message per line (newline framing),
    /// parsed as RFC 5424.
    NewlineTcp,
    /// The `syslog()` source over TLS: octet counting (RFC 5425). The client must present
    /// a certificate signed by the CA when `require_client_certificate`.
    OctetCountingTls {
        /// `peer-verify(required-trusted)` rather than `optional-untrusted`.
        require_client_certificate: bool,
    },
}

/// A running (or stopped) syslog-ng and its files.
#[derive(Debug)]
pub struct SyslogNg {
    dir: PathBuf,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificates (TLS inputs only).
    pub pki: Option<Pki>,
    process: Option<Child>,
}

impl SyslogNg {
    /// Writes a config for a collector on `addr` (loopback) taking `input`, and starts it.
    /// Over TLS its certificate, for `server_names` (`DNS:…`, `IP:…`), is signed by a fresh
    /// CA ([`Pki::ca_file`]).
    pub fn start(addr: SocketAddr, input: SyslogNgInput, server_names: &[&str]) -> Self {
        require_root();
        // `fwd`: the forwarding tests' objects, told apart from other tests' by name.
        let dir = std::env::temp_dir().join(format!(
            "{PREFIX}fwd-{}-{}",
            std::process::id(),
            next_serial()
        ));
        fs::create_dir_all(&dir).expect("create syslog-ng's directory");
        let received = dir.join("received.log");
        let (source, pki) = match input {
            SyslogNgInput::NewlineTcp => (
                format!(
                    r#"network(ip("{ip}") port({port}) transport("tcp") flags(syslog-protocol))"#,
                    ip = addr.ip(),
                    port = addr.port()
                ),
                None,
            ),
            SyslogNgInput::OctetCountingTls {
                require_client_certificate,
            } => {
                let pki = Pki::new(&dir);
                let server = pki.server("server", server_names);
                (
                    format!(
                        r#"syslog(ip("{ip}") port({port}) transport("tls") tls(key-file("{key}") cert-file("{cert}") ca-file("{ca}") peer-verify({verify})))"#,
                        ip = addr.ip(),
                        port = addr.port(),
                        key = server.key.display(),
                        cert = server.cert.display(),
                        ca = pki.ca_file().display(),
                        verify = if require_client_certificate {
                            "required-trusted"
                        } else {
                            "optional-untrusted"
                        },
                    ),
                    Some(pki),
                )
            }
        };
        let config = format!(
            r#"@version: 3.38
options {{ log-msg-size(1048576); }};
source s_forwarded {{ {source}; }};
destination d_received {{ file("{received}" template("${{MSG}}
")); }};
log {{ source(s_forwarded); destination(d_received); }};
"#,
            received = received.display(),
        );
        fs::write(dir.join("syslog-ng.conf"), config).expect("write syslog-ng.conf");
        let mut collector = Self {
            dir,
            addr,
            pki,
            process: None,
        };
        collector.restart();
        collector
    }

    /// Starts syslog-ng again (after [`SyslogNg::stop`]); returns once it listens.
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "syslog-ng already runs");
        let log = fs::File::create(self.dir.join("syslog-ng.log")).expect("create its log");
        let child = Command::new("syslog-ng")
            .arg("--foreground")
            .arg("--stderr")
            .arg(format!("--cfgfile={}", self.dir.join("syslog-ng.conf").display()))
            .arg(format!("--persist-file={}", self.dir.join("persist").display()))
            .arg(format!("--pidfile={}", self.dir.join("syslog-ng.pid").display()))
            .arg(format!("--control={}", self.dir.join("control").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start syslog-ng (`./x setup` unpacks it into the tools directory, whose bin/ must be on PATH)");
        self.process = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err()
        {
            if let Some(status) = self
                .process
                .as_mut()
                .and_then(|child| child.try_wait().expect("wait"))
            {
                panic!("syslog-ng exited ({status}):\n{}", self.log());
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "syslog-ng does not listen on {} after {START_TIMEOUT:?}:\n{}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops syslog-ng (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        let mut child = self.process.take().expect("syslog-ng runs");
        let pid = i32::try_from(child.id()).expect("pid fits");
        // SAFETY: kill() takes no pointers; `pid` is our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        child.wait().expect("reap syslog-ng");
    }

    /// What syslog-ng said about itself (its internal messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("syslog-ng.log")).unwrap_or_default()
    }

    /// Every message text received so far, one per line (a line still being written is
    /// left out).
    pub fn received(&self) -> Vec<String> {
        let text = fs::read_to_string(self.dir.join("received.log")).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete.lines().map(str::to_owned).collect()
    }

    /// A directory of the collector's own, for files a test makes (config, hosts file).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SyslogNg {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
