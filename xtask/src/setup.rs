//! Installs what the build and the tests need, idempotently: the pinned nightly with
//! rust-src, bpf-linker built against that nightly's own libLLVM, Debian packages, and
//! syslog-ng unpacked from its Debian package into the tools directory.
//!
//! Nothing half-installed is ever mistaken for done: bpf-linker is built into a staging
//! root and moved into place only once it runs and reports the pinned version; syslog-ng's
//! wrapper is put in place only once it runs.

use std::{
    fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::run::{Tools, status, stdout};

/// The nightly that builds the kernel crate (must match `enforcer/build.rs`).
pub const NIGHTLY: &str = "nightly-2026-10-30";
/// The bpf-linker release that links for LLVM 23.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The pinned nightly's libLLVM, which bpf-linker is built and run against.
const NIGHTLY_LLVM: &str = "libLLVM.so.23.1-rust-1.101.0-nightly";
/// Commands (or files) the tests use, and the Debian package that provides each.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("systemd-analyze", "systemd"),
    ("rsyslogd", "rsyslog"),
    (
        "/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so",
        "rsyslog-gnutls",
    ),
    ("openssl", "openssl"),
    // tests/tests/air_gap.rs traces the agent's sends.
    ("strace", "strace"),
    // The real servers and clients of tests/tests/real_clients.rs.
    ("curl", "curl"),
    ("/usr/sbin/nginx", "nginx"),
    ("psql", "postgresql-client"),
    // The server programs live in /usr/lib/postgresql/<version>/bin.
    ("/usr/lib/postgresql/*/bin/initdb", "postgresql"),
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    // `./x package`: the C compiler for the static (musl) binary's C dependencies (ring,
    // mimalloc), and `rpm -qlp` to read the built .rpm back.
    ("musl-gcc", "musl-tools"),
    ("rpm", "rpm"),
    // `./x bench connect` and `./x bench filters`: the filters the enforcer is compared
    // with (inside the benches' own network namespaces only), and `ethtool -K` to give the
    // receiving veth NAPI.
    ("nft", "nftables"),
    ("iptables-legacy", "iptables"),
    ("ipset", "ipset"),
    ("ethtool", "ethtool"),
];

/// A cargo subcommand installed with `--locked` into `<tools>/bin` at a pinned version.
pub struct CargoTool {
    /// The crate that provides it.
    pub krate: &'static str,
    /// The pinned version.
    pub version: &'static str,
    /// The binary in `<tools>/bin`.
    pub binary: &'static str,
    /// The arguments that make the binary print its version.
    pub version_args: &'static [&'static str],
}

/// The packagers of `./x package`, installed by every setup.
const CARGO_TOOLS: &[CargoTool] = &[
    CargoTool {
        krate: "cargo-deb",
        version: "3.8.0",
        binary: "cargo-deb",
        version_args: &["--version"],
    },
    CargoTool {
        krate: "cargo-generate-rpm",
        version: "0.21.1",
        binary: "cargo-generate-rpm",
        version_args: &["--version"],
    },
];

/// The services those packages install, which Debian would start and enable on their
/// default ports. The tests start instances of their own on ports of their own, so these
/// are disabled and stopped right after they are installed. `nftables.service` would load
/// `/etc/nftables.conf` (which starts with `flush ruleset`) into the host's namespace.
const DEBIAN_SERVICES: &[&str] = &["nginx", "postgresql", "redis-server", "nftables"];

/// The Debian package of the syslog-ng the forwarding tests run as a second collector. It
/// conflicts with rsyslog (both provide `system-log-daemon`), so installing it would remove
/// rsyslog, which the other forwarding tests and the host's own logging use: it is
/// unpacked instead (no install scripts run, no service exists), with the libraries it
/// needs that the machine lacks, into `<tools>/syslog-ng`, and run through the wrapper
/// `<tools>/bin/syslog-ng`.
const SYSLOG_NG_PACKAGE: &str = "syslog-ng-core";

/// Debian's hook that `invoke-rc.d` and `deb-systemd-invoke` ask before they start a
/// service from a package's install script; exit code 101 means "do not".
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Runs every setup step and returns the located tools.
pub fn run() -> anyhow::Result<Tools> {
    let tools = Tools::locate();
    install_nightly()?;
    install_musl_target(&tools)?;
    install_bpf_linker(&tools)?;
    install_cargo_tools(&tools)?;
    install_debian_packages()?;
    install_syslog_ng(&tools)?;
    Ok(tools)
}

fn install_nightly() -> anyhow::Result<()> {
    status(Command::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
        "--component",
        "rust-src,clippy",
    ]))
    .context("installing the pinned nightly for the eBPF crate; check that rustup reaches its distribution server")
}

/// The static binary's target, for the pinned userspace toolchain (rustup reads
/// `rust-toolchain.toml` in the repository root); a no-op once installed.
fn install_musl_target(tools: &Tools) -> anyhow::Result<()> {
    status(
        tools
            .command("rustup")
            .args(["target", "add", crate::package::MUSL_TARGET]),
    )
    .context("installing the musl target of the pinned toolchain for `./x package`")
}

fn install_cargo_tools(tools: &Tools) -> anyhow::Result<()> {
    CARGO_TOOLS
        .iter()
        .try_for_each(|tool| install_cargo_tool(tools, tool))
}

/// Installs `tool` unless its binary already names the pinned version.
pub fn install_cargo_tool(tools: &Tools, tool: &CargoTool) -> anyhow::Result<()> {
    let installed = stdout(Command::new(tools.bin().join(tool.binary)).args(tool.version_args));
    if installed.is_some_and(|v| v.split_whitespace().any(|word| word == tool.version)) {
        return Ok(());
    }
    status(
        tools
            .cargo(&[
                "install",
                &format!("{}@{}", tool.krate, tool.version),
                "--locked",
                "--root",
            ])
            .arg(&tools.dir),
    )
    .with_context(|| {
        format!(
            "installing {} {} (needs the crates registry)",
            tool.krate, tool.version
        )
    })
}

fn installed_linker_version(tools: &Tools) -> Option<String> {
    stdout(Command::new(tools.bin().join("bpf-linker")).arg("--version"))
}

fn install_bpf_linker(tools: &Tools) -> anyhow::Result<()> {
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    link_nightly_llvm(tools)?;
    if installed_linker_version(tools).as_deref() == Some(wanted.as_str()) {
        eprintln!("setup: {wanted} already in {}", tools.bin().display());
        return Ok(());
    }
    let staging = tools.dir.join("staging");
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .with_context(|| format!("removing the stale {}", staging.display()))?;
    }
    let llvm_prefix = tools.dir.join("rustc-llvm");
    status(
        tools
            .cargo(&[
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--root",
            ])
            .arg(&staging)
            .env("LLVM_PREFIX", &llvm_prefix),
    )
    .context("building bpf-linker against the nightly's libLLVM (needs the crates registry)")?;
    let built = staging.join("bin").join("bpf-linker");
    let version = stdout(Command::new(&built).arg("--version"));
    if version.as_deref() != Some(wanted.as_str()) {
        bail!(
            "the freshly built {} reports {version:?}, not {wanted}",
            built.display()
        );
    }
    fs::create_dir_all(tools.bin())?;
    fs::rename(&built, tools.bin().join("bpf-linker"))
        .with_context(|| format!("moving bpf-linker into {}", tools.bin().display()))?;
    fs::remove_dir_all(&staging)?;
    eprintln!("setup: installed {wanted} into {}", tools.bin().display());
    Ok(())
}

/// Points `<tools>/rustc-llvm/lib/{libLLVM.so, <versioned name>}` at the nightly's libLLVM.
/// bpf-linker's build finds LLVM there, and its RUNPATH keeps using it at run time.
fn link_nightly_llvm(tools: &Tools) -> anyhow::Result<()> {
    let sysroot = stdout(
        Command::new("rustc")
            .arg(format!("+{NIGHTLY}"))
            .args(["--print", "sysroot"]),
    )
    .with_context(|| format!("cannot ask {NIGHTLY} for its sysroot"))?;
    let target = Path::new(&sysroot).join("lib").join(NIGHTLY_LLVM);
    if !target.exists() {
        bail!(
            "{} is missing: the {NIGHTLY} install is incomplete; run `rustup toolchain uninstall {NIGHTLY}` and retry",
            target.display()
        );
    }
    let lib = tools.dir.join("rustc-llvm").join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for name in ["libLLVM.so", NIGHTLY_LLVM] {
        let link = lib.join(name);
        if fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
            continue;
        }
        let _ = fs::remove_file(&link);
        symlink(&target, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}

fn install_debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(command, _)| {
            stdout(
                Command::new("sh")
                    .args(["-c", &format!("command -v {command} || test -e {command}")]),
            )
            .is_none()
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    status(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get update (needs root and the Debian package mirror)")?;
    let no_starts = NoServiceStarts::during_install()?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("installing Debian packages {}", missing.join(" ")))?;
    drop(no_starts);
    disable_services()
}

/// A `policy-rc.d` that refuses every service start, present while packages install
/// (where the machine has none of its own), removed on drop.
struct NoServiceStarts {
    written: bool,
}

impl NoServiceStarts {
    fn during_install() -> anyhow::Result<Self> {
        if Path::new(POLICY_RC_D).exists() {
            return Ok(Self { written: false });
        }
        fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# Written by `./x setup` while it installs packages: start no service.\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        fs::set_permissions(POLICY_RC_D, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {POLICY_RC_D} executable"))?;
        Ok(Self { written: true })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.written
            && let Err(err) = fs::remove_file(POLICY_RC_D)
        {
            eprintln!("setup: cannot remove {POLICY_RC_D}: {err}");
        }
    }
}

/// Disables the installed packages' services (so no boot starts them) and, where systemd
/// runs, stops any that started anyway.
fn disable_services() -> anyhow::Result<()> {
    if stdout(Command::new("sh").args(["-c", "command -v systemctl"])).is_none() {
        return Ok(());
    }
    let running_systemd = Path::new("/run/systemd/system").is_dir();
    for service in DEBIAN_SERVICES {
        let unit = format!("{service}.service");
        let installed = ["/lib/systemd/system", "/usr/lib/systemd/system"]
            .iter()
            .any(|dir| Path::new(dir).join(&unit).exists());
        if !installed {
            continue;
        }
        status(Command::new("systemctl").args(["disable", "--quiet", &unit]))
            .with_context(|| format!("disabling {unit}, which the tests must not depend on"))?;
        if running_systemd {
            status(Command::new("systemctl").args(["stop", &unit]))
                .with_context(|| format!("stopping {unit}"))?;
        }
    }
    Ok(())
}

/// Unpacks [`SYSLOG_NG_PACKAGE`] and the packages installing it would add (as apt
/// computes them, without recommends) into `<tools>/syslog-ng`, and writes the wrapper
/// `<tools>/bin/syslog-ng` that runs it with its libraries and modules from there.
fn install_syslog_ng(tools: &Tools) -> anyhow::Result<()> {
    let wrapper = tools.bin().join("syslog-ng");
    if stdout(Command::new(&wrapper).arg("--version"))
        .is_some_and(|version| version.starts_with("syslog-ng"))
    {
        eprintln!("setup: syslog-ng already in {}", tools.bin().display());
        return Ok(());
    }
    let simulate = || {
        stdout(
            Command::new("apt-get")
                .args([
                    "install",
                    "--simulate",
                    "--no-install-recommends",
                    SYSLOG_NG_PACKAGE,
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    let plan = match simulate() {
        Some(plan) => plan,
        None => {
            status(
                Command::new("apt-get")
                    .arg("update")
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
            .context("apt-get update (needs root and the Debian package mirror)")?;
            simulate().with_context(|| format!("apt-get cannot find {SYSLOG_NG_PACKAGE}"))?
        }
    };
    // `Inst PACKAGE (VERSION ...)`: what installing would add. (It would also remove
    // rsyslog: the reason it is unpacked here instead.)
    let packages: Vec<&str> = plan
        .lines()
        .filter_map(|line| line.strip_prefix("Inst "))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    if !packages.contains(&SYSLOG_NG_PACKAGE) {
        bail!("apt-get would not install {SYSLOG_NG_PACKAGE}:\n{plan}");
    }
    let staging = tools.dir.join("staging-syslog-ng");
    let root = tools.dir.join("syslog-ng");
    for stale in [&staging, &root] {
        if stale.exists() {
            fs::remove_dir_all(stale)
                .with_context(|| format!("removing the stale {}", stale.display()))?;
        }
    }
    fs::create_dir_all(staging.join("debs"))?;
    status(
        Command::new("apt-get")
            .arg("download")
            .args(&packages)
            .current_dir(staging.join("debs")),
    )
    .with_context(|| format!("downloading {}", packages.join(" ")))?;
    let unpacked = staging.join("root");
    for deb in fs::read_dir(staging.join("debs"))? {
        status(
            Command::new("dpkg-deb")
                .arg("--extract")
                .arg(deb?.path())
                .arg(&unpacked),
        )?;
    }
    fs::rename(&unpacked, &root)
        .with_context(|| format!("moving syslog-ng into {}", root.display()))?;
    fs::remove_dir_all(&staging)?;

    // The libraries, relative to the root: syslog-ng's own and the multiarch directories
    // of the others.
    let mut libraries = vec![PathBuf::from("usr/lib/syslog-ng")];
    for lib in ["usr/lib", "lib"] {
        for entry in fs::read_dir(root.join(lib)).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().ends_with("-linux-gnu") {
                libraries.push(Path::new(lib).join(entry.file_name()));
            }
        }
    }
    // The modules: the versioned directory that holds the socket drivers.
    let modules = fs::read_dir(root.join("usr/lib/syslog-ng"))?
        .flatten()
        .find(|entry| entry.path().join("libafsocket.so").exists())
        .map(|entry| Path::new("usr/lib/syslog-ng").join(entry.file_name()))
        .context("no syslog-ng module directory (with libafsocket.so) in the package")?;
    let library_path = libraries
        .iter()
        .map(|dir| format!("$root/{}", dir.display()))
        .collect::<Vec<_>>()
        .join(":");
    // The wrapper finds the unpacked tree beside its own directory, wherever the tools
    // directory is reached from.
    let script = format!(
        "#!/bin/sh\n# Written by `./x setup`: Debian's {SYSLOG_NG_PACKAGE}, unpacked into ../syslog-ng (installing it\n# would remove rsyslog).\nroot=\"$(dirname \"$(readlink -f \"$0\")\")/../syslog-ng\"\nLD_LIBRARY_PATH=\"{library_path}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}\" exec \"$root/usr/sbin/syslog-ng\" --module-path=\"$root/{modules}\" \"$@\"\n",
        modules = modules.display(),
    );
    fs::create_dir_all(tools.bin())?;
    let written = tools.bin().join("syslog-ng.new");
    fs::write(&written, script).with_context(|| format!("writing {}", written.display()))?;
    fs::set_permissions(&written, fs::Permissions::from_mode(0o755))?;
    let version = stdout(Command::new(&written).arg("--version"))
        .context("the unpacked syslog-ng does not run")?;
    fs::rename(&written, &wrapper)?;
    eprintln!(
        "setup: unpacked {} into {}",
        version.lines().next().unwrap_or("syslog-ng"),
        root.display()
    );
    Ok(())
}
