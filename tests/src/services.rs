//! Real servers and clients from Debian packages: nginx, PostgreSQL and Redis, each started
//! inside a segment's cgroup under its package's own unprivileged account, configured into
//! a temporary directory of its own, and curl, psql and redis-cli run as `nobody` inside a
//! client segment's cgroup.
//!
//! `./x setup` installs the packages. A missing program fails the test with a message that
//! says which package provides it; nothing here skips. Every wait is bounded. A server is
//! stopped by its pid on drop (then killed if it does not stop), and its directory removed.

use std::{
    fs::{self, File, OpenOptions},
    io::Read as _,
    net::{IpAddr, SocketAddr},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::{cgroup::TestCgroup, cmd::run, require_root, unique_name};

/// How long a server may take to listen on all its addresses.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to stop after its stop signal before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may run before it is killed (its own timeouts are shorter).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `initdb` may take.
const INITDB_TIMEOUT: Duration = Duration::from_secs(60);

/// A local account processes are run as.
#[derive(Debug, Clone)]
pub struct Account {
    /// The account's name.
    pub name: String,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

impl Account {
    /// The account `name` (with its primary group); panics if it does not exist.
    pub fn named(name: &str) -> Self {
        let id = |flag: &str| -> u32 {
            run("id", &[flag, name])
                .trim()
                .parse()
                .unwrap_or_else(|err| panic!("`id {flag} {name}` printed no number: {err}"))
        };
        Self {
            name: name.to_owned(),
            uid: id("-u"),
            gid: id("-g"),
        }
    }

    /// `nobody`, the account the clients run as.
    pub fn nobody() -> Self {
        Self::named("nobody")
    }

    fn chown(&self, path: &Path) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).unwrap_or_else(|err| {
            panic!("cannot chown {} to {}: {err}", path.display(), self.name)
        });
    }
}

/// The path of `program` in the first of `dirs` that has it; panics naming the Debian
/// package that provides it when none does.
fn installed(program: &str, dirs: &[&str], package: &str) -> PathBuf {
    dirs.iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{program}` is not installed (looked in {}): the Debian package `{package}` \
                 provides it; `./x setup` installs it",
                dirs.join(", ")
            )
        })
}

/// `program` from the newest PostgreSQL server installed (`/usr/lib/postgresql/<version>/bin`).
fn postgres_program(program: &str) -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let newest = fs::read_dir(root)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            entry
                .path()
                .join("bin")
                .join(program)
                .is_file()
                .then_some(version)
        })
        .max()
        .unwrap_or_else(|| {
            panic!(
                "no PostgreSQL server is installed ({}/<version>/bin/{program} is missing): the \
                 Debian package `postgresql` provides it; `./x setup` installs it",
                root.display()
            )
        });
    root.join(newest.to_string()).join("bin").join(program)
}

/// Panics, naming the package, unless every server and client program is installed: a
/// test calls it first, so it fails before it has started anything.
pub fn require_programs() {
    postgres_program("initdb");
    for kind in [Kind::Nginx, Kind::Postgres, Kind::Redis] {
        kind.server_program();
        kind.client_program();
    }
}

/// A private directory for one server's files, owned by `account`, removed on drop.
#[derive(Debug)]
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(what: &str, account: &Account) -> Self {
        let dir = std::env::temp_dir().join(format!("{}-rc-{what}", unique_name()));
        fs::create_dir(&dir).unwrap_or_else(|err| panic!("cannot create {}: {err}", dir.display()));
        account.chown(&dir);
        Self { dir }
    }

    /// Writes `name` in the directory, owned by `account`.
    fn write(&self, name: &str, text: &str, account: &Account) -> PathBuf {
        let path = self.dir.join(name);
        fs::write(&path, text)
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
        account.chown(&path);
        path
    }

    /// Creates the subdirectory `name`, owned by `account`.
    fn subdir(&self, name: &str, account: &Account) -> PathBuf {
        let path = self.dir.join(name);
        fs::create_dir(&path)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", path.display()));
        account.chown(&path);
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Makes `command` start inside `cgroup` as `account`, from its first instruction: the
/// child joins the cgroup while it is still root, then drops its groups, group and user,
/// then execs. Its environment is emptied but for `PATH` and `LC_ALL=C`, so no proxy or
/// `PG*` variable of the test's environment reaches it.
fn confine(command: &mut Command, cgroup: &TestCgroup, account: &Account) {
    let procs = OpenOptions::new()
        .write(true)
        .open(cgroup.procs_file())
        .unwrap_or_else(|err| panic!("cannot open {}: {err}", cgroup.procs_file().display()));
    let (uid, gid) = (account.uid, account.gid);
    command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    // SAFETY: the closure only makes async-signal-safe system calls (write, setgroups,
    // setgid, setuid) on a descriptor opened before the fork and on plain integers.
    unsafe {
        command.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            // "0" moves the writing process: the child, before it execs.
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))
        });
    }
}

/// What a finished (or killed) process printed.
#[derive(Debug, Clone)]
pub struct Answer {
    /// How it exited; `None` when it ran past its time and was killed.
    pub status: Option<ExitStatus>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Answer {
    /// Whether it exited with status 0.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|status| status.success())
    }
}

/// Runs `command` (already [`confine`]d) to its end, killing it after `limit`.
fn finish(mut command: Command, limit: Duration) -> Answer {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {command:?}: {err}"));
    let pid = child.id();
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let (output, killed) = match result.recv_timeout(limit) {
        Ok(output) => (output, false),
        Err(_) => {
            signal(pid, libc::SIGKILL);
            let output = result
                .recv_timeout(STOP_TIMEOUT)
                .unwrap_or_else(|_| panic!("{command:?} (pid {pid}) did not die after SIGKILL"));
            (output, true)
        }
    };
    let output = output.unwrap_or_else(|err| panic!("waiting for {command:?}: {err}"));
    Answer {
        status: (!killed).then_some(output.status),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Sends `signal` to our own child `pid`.
fn signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pids fit");
    // SAFETY: kill() takes no pointers; `pid` is our own child, not yet reaped.
    unsafe { libc::kill(pid, signal) };
}

/// The three servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// nginx serving a static page, asked with curl.
    Nginx,
    /// PostgreSQL, asked `SELECT 1` with psql.
    Postgres,
    /// Redis, asked `PING` with redis-cli.
    Redis,
}

impl Kind {
    /// The client program a user would run against this server.
    pub fn client_name(self) -> &'static str {
        match self {
            Self::Nginx => "curl",
            Self::Postgres => "psql",
            Self::Redis => "redis-cli",
        }
    }

    /// The server's program.
    fn server_program(self) -> PathBuf {
        match self {
            Self::Nginx => installed("nginx", &["/usr/sbin", "/usr/bin"], "nginx"),
            Self::Postgres => postgres_program("postgres"),
            Self::Redis => installed("redis-server", &["/usr/bin", "/usr/sbin"], "redis-server"),
        }
    }

    /// The client's program.
    fn client_program(self) -> PathBuf {
        let package = match self {
            Self::Nginx => "curl",
            Self::Postgres => "postgresql-client",
            Self::Redis => "redis-tools",
        };
        installed(self.client_name(), &["/usr/bin", "/bin"], package)
    }

    /// The signal that stops the server quickly and cleanly: nginx's and Redis's
    /// SIGTERM, PostgreSQL's SIGINT ("fast shutdown").
    fn stop_signal(self) -> libc::c_int {
        match self {
            Self::Nginx | Self::Redis => libc::SIGTERM,
            Self::Postgres => libc::SIGINT,
        }
    }

    /// How many times the client calls `connect()` before it gives up on a refused
    /// connection: redis-cli (hiredis) tries once quietly, then once more to report the
    /// error; curl (one address) and psql (one host, TLS and GSSAPI off) try once.
    pub fn connects_when_refused(self) -> usize {
        match self {
            Self::Nginx | Self::Postgres => 1,
            Self::Redis => 2,
        }
    }
}

/// A server's command, account, directory and expected answer, ready to start.
struct Prepared {
    command: Command,
    account: Account,
    scratch: Scratch,
    answer: String,
}

/// A real server listening on `port` at each of its addresses, stopped on drop.
#[derive(Debug)]
pub struct RealServer {
    /// Which server it is.
    pub kind: Kind,
    /// The port it listens on.
    pub port: u16,
    /// What a successful client prints (the page body, `1`, `PONG`).
    pub answer: String,
    child: Child,
    log: PathBuf,
    scratch: Scratch,
}

impl RealServer {
    /// nginx, master and worker as `www-data`, serving one page on `port` at `addresses`.
    pub fn nginx(cgroup: &TestCgroup, addresses: &[IpAddr], port: u16) -> Self {
        Self::start(Kind::Nginx, cgroup, addresses, port)
    }

    /// PostgreSQL as `postgres`: a cluster made by `initdb` in a temporary directory
    /// (superuser `rc`, trust authentication), listening on `port` at `addresses` and on
    /// a Unix socket in that directory.
    pub fn postgres(cgroup: &TestCgroup, addresses: &[IpAddr], port: u16) -> Self {
        Self::start(Kind::Postgres, cgroup, addresses, port)
    }

    /// Redis as `redis`, listening on `port` at `addresses`, persisting nothing.
    pub fn redis(cgroup: &TestCgroup, addresses: &[IpAddr], port: u16) -> Self {
        Self::start(Kind::Redis, cgroup, addresses, port)
    }

    fn prepare_nginx(addresses: &[IpAddr], port: u16) -> Prepared {
        let nginx = Kind::Nginx.server_program();
        let account = Account::named("www-data");
        let scratch = Scratch::new("nginx", &account);
        let dir = scratch.dir.display().to_string();
        let www = scratch.subdir("www", &account);
        let answer = format!("rc-web: served by nginx for {}\n", scratch.dir.display());
        let page = www.join("index.html");
        fs::write(&page, &answer).expect("write the page");
        account.chown(&page);
        let listen: String = addresses
            .iter()
            .map(|address| format!("        listen {};\n", SocketAddr::new(*address, port)))
            .collect();
        let config = scratch.write(
            "nginx.conf",
            &format!(
                r#"daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type text/plain;
    server {{
{listen}        root {dir}/www;
    }}
}}
"#
            ),
            &account,
        );
        let mut command = Command::new(nginx);
        command
            .arg("-p")
            .arg(&scratch.dir)
            .arg("-e")
            .arg(scratch.dir.join("error.log"))
            .arg("-c")
            .arg(config);
        Prepared {
            command,
            account,
            scratch,
            answer,
        }
    }

    fn prepare_postgres(addresses: &[IpAddr], port: u16) -> Prepared {
        let initdb = postgres_program("initdb");
        let postgres = Kind::Postgres.server_program();
        let account = Account::named("postgres");
        let scratch = Scratch::new("postgres", &account);
        let data = scratch.dir.join("data");
        let socket_dir = scratch.subdir("socket", &account);
        let mut command = Command::new(&initdb);
        command
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "rc",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .current_dir(&scratch.dir);
        // In the run's cgroup, as every process the tests start, so a killed run's is found.
        let run_cgroup = crate::cgroup::run_cgroup();
        confine(&mut command, &run_cgroup, &account);
        let made = finish(command, INITDB_TIMEOUT);
        drop(run_cgroup);
        assert!(
            made.succeeded(),
            "initdb ({}) failed ({:?}):\n{}{}",
            initdb.display(),
            made.status,
            made.stdout,
            made.stderr
        );
        let listen = addresses
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(",");
        // initdb's own file trusts loopback only; the interface addresses need entries too.
        let hba: String = addresses
            .iter()
            .map(|address| {
                let bits = if address.is_ipv4() { 32 } else { 128 };
                format!("host all all {address}/{bits} trust\n")
            })
            .collect();
        let hba = scratch.write(
            "pg_hba.conf",
            &format!("local all all trust\n{hba}"),
            &account,
        );
        let mut command = Command::new(postgres);
        command
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&socket_dir)
            .arg("-c")
            .arg(format!("listen_addresses={listen}"))
            .arg("-c")
            .arg(format!("hba_file={}", hba.display()))
            .args([
                "-c",
                "fsync=off",
                "-c",
                "shared_buffers=16MB",
                "-c",
                "max_connections=20",
            ])
            .current_dir(&scratch.dir);
        Prepared {
            command,
            account,
            scratch,
            answer: "1\n".to_owned(),
        }
    }

    fn prepare_redis(addresses: &[IpAddr], port: u16) -> Prepared {
        let redis = Kind::Redis.server_program();
        let account = Account::named("redis");
        let scratch = Scratch::new("redis", &account);
        let bind = addresses
            .iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        let config = scratch.write(
            "redis.conf",
            &format!(
                "bind {bind}\nport {port}\nprotected-mode no\ndaemonize no\nsupervised no\n\
                 dir {}\nsave \"\"\nappendonly no\nlogfile \"\"\n",
                scratch.dir.display()
            ),
            &account,
        );
        let mut command = Command::new(redis);
        command.arg(config).current_dir(&scratch.dir);
        Prepared {
            command,
            account,
            scratch,
            answer: "PONG\n".to_owned(),
        }
    }

    /// Prepares server `kind`, starts it in `cgroup` with its output in `server.log`, and
    /// waits until it listens on `port` at every one of `addresses`.
    fn start(kind: Kind, cgroup: &TestCgroup, addresses: &[IpAddr], port: u16) -> Self {
        require_root();
        let taken = listeners(port);
        assert!(
            taken.is_empty(),
            "port {port} is already taken (listening on {taken:?}): another process uses the \
             port this test's {kind:?} needs"
        );
        let Prepared {
            mut command,
            account,
            scratch,
            answer,
        } = match kind {
            Kind::Nginx => Self::prepare_nginx(addresses, port),
            Kind::Postgres => Self::prepare_postgres(addresses, port),
            Kind::Redis => Self::prepare_redis(addresses, port),
        };
        let log = scratch.dir.join("server.log");
        let out = File::create(&log).expect("create the server log");
        let err = out.try_clone().expect("clone the log");
        confine(&mut command, cgroup, &account);
        let child = command
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {command:?}: {err}"));
        // Owned by the guard first, so a server that fails to start is still stopped.
        let mut server = Self {
            kind,
            port,
            answer,
            child,
            log,
            scratch,
        };
        let started = Instant::now();
        loop {
            let listening = listeners(port);
            if addresses.iter().all(|address| listening.contains(address)) {
                break;
            }
            if let Some(status) = server.child.try_wait().expect("wait") {
                panic!(
                    "{kind:?} exited ({status}) before it listened:\n{}",
                    server.log()
                );
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "{kind:?} did not listen on {addresses:?} port {port} within {START_TIMEOUT:?} \
                 (listening: {listening:?}):\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Everything the server logged to its output (nginx logs to `error.log` too).
    pub fn log(&self) -> String {
        let mut text = fs::read_to_string(&self.log).unwrap_or_default();
        if let Ok(mut file) = File::open(self.scratch.dir.join("error.log")) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Runs this server's client as `account` inside `cgroup` against `to`: curl fetches
    /// the page, psql runs `SELECT 1`, redis-cli sends `PING`.
    pub fn ask(&self, to: IpAddr, cgroup: &TestCgroup, account: &Account) -> Answer {
        let mut command = Command::new(self.kind.client_program());
        match self.kind {
            // -q: no ~/.curlrc; -v: the reason of a failed connect on stderr.
            Kind::Nginx => command.args([
                "-q",
                "-sS",
                "-v",
                "--connect-timeout",
                "3",
                "--max-time",
                "5",
                &format!("http://{}/", SocketAddr::new(to, self.port)),
            ]),
            // -X: no ~/.psqlrc; -A -t: the bare value.
            Kind::Postgres => command.args([
                "-X",
                "-A",
                "-t",
                "-c",
                "SELECT 1",
                &format!(
                    "host={to} port={} user=rc dbname=postgres connect_timeout=3 \
                     sslmode=disable gssencmode=disable",
                    self.port
                ),
            ]),
            Kind::Redis => {
                command.args(["-h", &to.to_string(), "-p", &self.port.to_string(), "PING"])
            }
        };
        confine(&mut command, cgroup, account);
        finish(command, CLIENT_TIMEOUT)
    }
}

impl Drop for RealServer {
    fn drop(&mut self) {
        signal(self.child.id(), self.kind.stop_signal());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The local addresses with a TCP socket listening on `port`, from `/proc/net/tcp` and
/// `/proc/net/tcp6` of this process's namespace.
pub fn listeners(port: u16) -> Vec<IpAddr> {
    let mut found = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let table = fs::read_to_string(file).unwrap_or_else(|err| panic!("read {file}: {err}"));
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // fields[1] is the local address:port in hex, fields[3] the state (0A: listen).
            let (Some(local), Some("0A")) = (fields.get(1), fields.get(3).copied()) else {
                continue;
            };
            let Some((address, listening_port)) = local.split_once(':') else {
                continue;
            };
            if u16::from_str_radix(listening_port, 16).ok() != Some(port) {
                continue;
            }
            if let Some(address) = parse_proc_address(address, v6) {
                found.push(address);
            }
        }
    }
    found
}

/// An address as `/proc/net/tcp{,6}` prints it: hex of the 32-bit words in host (little
/// endian) order.
fn parse_proc_address(hex: &str, v6: bool) -> Option<IpAddr> {
    let words: Vec<u32> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).map(u32::swap_bytes))
        .collect::<Result<_, _>>()
        .ok()?;
    let bytes: Vec<u8> = words.iter().flat_map(|word| word.to_be_bytes()).collect();
    match (v6, bytes.len()) {
        (false, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        (true, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn proc_net_addresses_parse_as_the_kernel_prints_them() {
        assert_eq!(
            parse_proc_address("0100007F", false),
            Some(IpAddr::from(Ipv4Addr::LOCALHOST))
        );
        assert_eq!(
            parse_proc_address("00000000000000000000000001000000", true),
            Some(IpAddr::from(Ipv6Addr::LOCALHOST))
        );
        assert_eq!(
            parse_proc_address("B80D0120000000000000000001000000", true),
            Some("2001:db8::1".parse().expect("address"))
        );
    }
}
