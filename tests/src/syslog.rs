//! A real rsyslog (the Debian package) as the collector audit records are forwarded to:
//! its own config, listening with `imtcp` on a loopback port (plain, or TLS through the
//! `gtls` driver of rsyslog-gnutls with a CA and server certificate made by `openssl`)
//! and writing each message's text to a file; stopped and removed on drop.

use std::{
    fs,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{require_root, unique_name};

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

    fn start_with(addr: SocketAddr, tls: bool) -> Self {
        require_root();
        let dir = std::env::temp_dir().join(unique_name());
        fs::create_dir_all(dir.join("work")).expect("create rsyslog's directory");
        let (global, module) = if tls {
            make_certificates(&dir, addr);
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
fn openssl(dir: &std::path::Path, args: &[&str]) {
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

/// A CA (`ca.pem`) and a server key and certificate (`server.key`, `server.pem`) for
/// `collector.test` and `addr`'s IP, valid for a day.
fn make_certificates(dir: &std::path::Path, addr: SocketAddr) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "1",
        "-subj",
        "/CN=enforcer test CA",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    let mut request = vec!["req", "-subj", "/CN=collector.test"];
    request.extend(ec);
    request.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(dir, &request);
    fs::write(
        dir.join("server.ext"),
        format!(
            "subjectAltName=DNS:collector.test,IP:{}\nextendedKeyUsage=serverAuth\n",
            addr.ip()
        ),
    )
    .expect("write the extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
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
