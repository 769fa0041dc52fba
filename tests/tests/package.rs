//! The packages `./x package` builds (the privileged tier of `./x test` runs it first):
//! the binary is static, the .deb installs on this machine and the installed binary
//! works, purging removes everything but the audit store, and the .rpm holds the same
//! files. The machine is restored whatever happens: the package is purged and what the
//! test made under /var/lib/enforcer is removed on drop, also on panic.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use enforcer_tests::{agent::ENFORCER_BIN, require_root};

/// `target/package/`, where `./x package` leaves its artifacts.
fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .join("target/package")
}

/// The one file in `target/package/` whose name ends with `suffix`.
fn artifact(suffix: &str) -> PathBuf {
    let dir = package_dir();
    let found: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|err| {
            panic!(
                "{}: {err}; run `./x package` first (`./x test` does)",
                dir.display()
            )
        })
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {suffix} in {} (from `./x package`), found {found:?}",
        dir.display()
    );
    found.into_iter().next().expect("one")
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {program}: {err}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "`{program} {}` failed ({}):\n{}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Every file the packages install (deb paths; the rpm has the unit under /usr/lib).
const DEB_FILES: &[&str] = &[
    "/usr/bin/enforcer",
    "/lib/systemd/system/enforcer.service",
    "/etc/enforcer/enforcer.toml",
    "/usr/share/doc/enforcer/protected-service.conf",
    "/usr/share/doc/enforcer/policies/README.md",
    "/usr/share/doc/enforcer/policies/enclave/10-segments.toml",
    "/usr/share/doc/enforcer/policies/demo/20-rules.toml",
    "/usr/share/man/man1/enforcer.1.gz",
    "/usr/share/bash-completion/completions/enforcer",
    "/usr/share/zsh/vendor-completions/_enforcer",
    "/usr/share/fish/vendor_completions.d/enforcer.fish",
];

/// Purges the package and removes the stand-in audit record and the state directory on
/// drop, so a failing test leaves the machine as it found it.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "enforcer"]);
        let _ = fs::remove_dir_all("/var/lib/enforcer");
        let _ = fs::remove_dir_all("/etc/enforcer");
        let _ = fs::remove_dir_all("/run/enforcer");
    }
}

/// The demo (the repository's `enforcer-demo`, which packages do not ship) with the
/// installed `/usr/bin/enforcer` as its agent and commands and the installed example
/// policy: every flow as the policy says, the store verifies, nothing left behind.
fn the_demo_runs_with_the_installed_binary_and_policies() {
    let output = Command::new(env!("CARGO_BIN_EXE_enforcer-demo"))
        .env(ENFORCER_BIN, "/usr/bin/enforcer")
        .arg("/usr/share/doc/enforcer/policies/demo")
        .output()
        .expect("run enforcer-demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the demo failed with the installed binary ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("agent binary    /usr/bin/enforcer"),
        "the demo ran another binary:\n{stdout}"
    );
}

#[test]
fn the_static_binary_runs_and_the_deb_installs_and_purges_keeping_the_audit_store() {
    require_root();
    let binary = artifact("/enforcer");
    let kind = ok("file", &["--brief", &binary.to_string_lossy()]);
    assert!(kind.contains("statically linked"), "file: {kind}");
    let version = ok(&binary.to_string_lossy(), &["--version"]);
    assert!(version.starts_with("enforcer "), "--version: {version}");

    // Never on a machine where enforcer is installed or its directories exist: purging
    // would take them (and the test would judge what it did not make).
    let status = run(
        "dpkg-query",
        &["--show", "--showformat=${Status}", "enforcer"],
    );
    assert!(
        !String::from_utf8_lossy(&status.stdout).ends_with(" installed"),
        "the enforcer package is already installed here; the test would purge it"
    );
    for dir in ["/etc/enforcer", "/var/lib/enforcer", "/usr/bin/enforcer"] {
        assert!(
            !Path::new(dir).exists(),
            "{dir} exists already; the test installs and purges the package and would remove it"
        );
    }

    let deb = artifact(".deb");
    let guard = Installed;
    ok("dpkg", &["--install", &deb.to_string_lossy()]);
    for file in DEB_FILES {
        assert!(Path::new(file).is_file(), "{file} is not installed");
    }
    let conffiles = ok(
        "dpkg-query",
        &["--showformat=${Conffiles}", "--show", "enforcer"],
    );
    assert!(
        conffiles.contains("/etc/enforcer/enforcer.toml"),
        "the config is not a conffile: {conffiles}"
    );
    let unit = fs::read_to_string("/lib/systemd/system/enforcer.service").expect("unit");
    assert!(
        unit.contains("ExecStart=/usr/bin/enforcer run") && !unit.contains("/usr/local/bin"),
        "the installed unit runs another binary:\n{unit}"
    );
    let installed = ok("/usr/bin/enforcer", &["--version"]);
    assert_eq!(installed, version, "the installed binary is another build");
    let preflight = ok("/usr/bin/enforcer", &["preflight", "--json"]);
    let report: serde_json::Value =
        serde_json::from_str(&preflight).expect("preflight --json prints JSON");
    assert_eq!(report["fit"], true, "preflight: {preflight}");
    // man finds the page.
    ok("man", &["--where", "enforcer"]);
    the_demo_runs_with_the_installed_binary_and_policies();

    fs::create_dir_all("/var/lib/enforcer/audit").expect("audit dir");
    fs::write("/var/lib/enforcer/audit/x", "a stand-in audit record\n").expect("record");
    fs::write("/var/lib/enforcer/bundle-floor.json", "{}\n").expect("floor");
    fs::create_dir_all("/run/enforcer").expect("state dir");

    ok("dpkg", &["--purge", "enforcer"]);
    for gone in [
        "/usr/bin/enforcer",
        "/etc/enforcer",
        "/lib/systemd/system/enforcer.service",
        "/usr/share/man/man1/enforcer.1.gz",
        "/usr/share/doc/enforcer",
        "/usr/share/bash-completion/completions/enforcer",
        "/var/lib/enforcer/bundle-floor.json",
        "/run/enforcer",
    ] {
        assert!(
            !Path::new(gone).exists(),
            "{gone} is left after dpkg --purge"
        );
    }
    assert_eq!(
        fs::read_to_string("/var/lib/enforcer/audit/x").expect("the audit store survives purge"),
        "a stand-in audit record\n"
    );
    drop(guard);
    assert!(!Path::new("/var/lib/enforcer").exists());
}

#[test]
fn the_rpm_holds_the_same_files() {
    let rpm = artifact(".rpm");
    let listed = ok(
        "rpm",
        &["--query", "--list", "--package", &rpm.to_string_lossy()],
    );
    let listed: Vec<&str> = listed.lines().collect();
    for file in DEB_FILES {
        let file = match *file {
            "/lib/systemd/system/enforcer.service" => "/usr/lib/systemd/system/enforcer.service",
            "/usr/share/zsh/vendor-completions/_enforcer" => {
                "/usr/share/zsh/site-functions/_enforcer"
            }
            other => other,
        };
        assert!(
            listed.contains(&file),
            "{file} is not in the rpm: {listed:?}"
        );
    }
    let config = ok(
        "rpm",
        &[
            "--query",
            "--configfiles",
            "--package",
            &rpm.to_string_lossy(),
        ],
    );
    assert_eq!(config.trim(), "/etc/enforcer/enforcer.toml");
    let scripts = ok(
        "rpm",
        &["--query", "--scripts", "--package", &rpm.to_string_lossy()],
    );
    assert!(
        scripts.contains("enforcer uninstall"),
        "no uninstall on erase: {scripts}"
    );
}
