//! The `enforcer policy` and `enforcer keygen` commands as an admin runs them: the
//! shipped policies pass `check`, broken ones fail naming file:line:col, and signed
//! bundles are refused when altered, foreign-signed or older.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use enforcer::policy::{
    Compiled,
    bundle::{BundleError, read_private_key, read_public_key, sign, verify},
    source::SourceSet,
};

fn enforcer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_enforcer"))
        .args(args)
        .output()
        .expect("run enforcer")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_owned()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_shipped_policy_passes_check() {
    let policies = repo().join("policies");
    let mut checked = 0;
    for entry in std::fs::read_dir(&policies).expect("policies/") {
        let path = entry.expect("entry").path();
        let is_policy = path.is_dir() || path.extension().is_some_and(|e| e == "toml");
        if !is_policy {
            continue;
        }
        let out = enforcer(&["policy", "check", path.to_str().expect("utf-8")]);
        assert!(
            out.status.success(),
            "{}: {}{}",
            path.display(),
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains("policy OK"),
            "{}",
            text(&out.stdout)
        );
        checked += 1;
    }
    assert!(checked > 0, "policies/ holds at least one policy");
}

#[test]
fn check_shows_failsafes_and_map_fill() {
    let out = enforcer(&[
        "policy",
        "check",
        repo().join("policies/enclave").to_str().expect("utf-8"),
    ]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("ssh: 22/tcp from 198.18.250.0/24"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rules") && stdout.contains("1048576"),
        "{stdout}"
    );
}

#[test]
fn check_says_none_when_no_failsafe_is_declared() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[segments.web]\ncidrs = [\"198.18.1.0/24\"]\n\n[[allow]]\nid = \"web-to-web\"\nfrom = [\"web\"]\nto = [\"web\"]\nports = [\"443/tcp\"]\n",
    )
    .expect("write the policy");
    let out = enforcer(&["policy", "check", policy.to_str().expect("utf-8")]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("failsafe access: NONE"),
        "check does not say there is no failsafe:\n{stdout}"
    );
}

#[test]
fn a_broken_policy_fails_with_file_line_col_and_compiles_nothing() {
    let broken = repo().join("enforcer/tests/broken-policies/unknown-segment.toml");
    let out = enforcer(&["policy", "check", broken.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown-segment.toml:9:17"), "{stderr}");
    assert!(stderr.contains("\"paymnts\""), "{stderr}");
    assert!(stderr.contains("nothing was compiled"), "{stderr}");
    assert!(!text(&out.stdout).contains("policy OK"));

    let json = enforcer(&["policy", "check", "--json", broken.to_str().expect("utf-8")]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(report["ok"], false);
    assert_eq!(report["diagnostics"][0]["code"], "unknown-segment");
    assert_eq!(report["diagnostics"][0]["line"], 9);
    assert_eq!(report["diagnostics"][0]["column"], 17);
}

/// `explain --json`'s answer, checking its exit code says the same: 1 for a denied flow,
/// 0 for one that passes (allowed, or let through by audit mode).
fn explained(out: &Output) -> serde_json::Value {
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("json; stderr: {}", text(&out.stderr)));
    let denied = answer["verdict"] == "deny";
    assert_eq!(out.status.code(), Some(i32::from(denied)), "{answer}");
    answer
}

#[test]
fn explain_names_the_rule_and_the_classification() {
    let policy = repo().join("policies/enclave");
    let out = enforcer(&[
        "policy",
        "explain",
        policy.to_str().expect("utf-8"),
        "--from",
        "198.18.20.7",
        "--to",
        "payments",
        "--port",
        "9050/tcp",
        "--json",
    ]);
    let answer = explained(&out);
    assert_eq!(answer["from"]["segment"], "orders");
    // payments is in audit mode: the deny is recorded, not enforced.
    assert_eq!(answer["verdict"], "audit");
    assert_eq!(answer["rule"], "nobody-to-payments-admin");
}

/// XDP classifies every source address by prefix (`decide.rs`, `ipv4_segment`): a frame
/// from `255.255.255.255` or a multicast address comes from the segment whose CIDR holds
/// it. Broadcast and multicast are destination classes only. (Found by the differential
/// test: explain used to call such a source `broadcast`/`multicast`, so it answered
/// `default-deny` where the kernel applied the source segment's rules.)
#[test]
fn explain_classifies_a_broadcast_or_multicast_source_by_its_cidr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[segments.everyone]\ncidrs = [\"0.0.0.0/0\", \"::/0\"]\n\
         [segments.web]\nports = [\"80/tcp\"]\n\
         [[allow]]\nid = \"everyone-to-web\"\nfrom = [\"everyone\"]\nto = [\"web\"]\nports = [\"80/tcp\"]\n",
    )
    .expect("write");
    let explain = |from: &str, to: &str| -> serde_json::Value {
        let out = enforcer(&[
            "policy",
            "explain",
            policy.to_str().expect("utf-8"),
            "--from",
            from,
            "--to",
            to,
            "--port",
            "80/tcp",
            "--json",
        ]);
        explained(&out)
    };
    for source in [
        "255.255.255.255",
        "224.0.0.251",
        "::ffff:239.1.2.3",
        "ff02::fb",
    ] {
        let answer = explain(source, "web");
        assert_eq!(answer["from"]["segment"], "everyone", "{source}: {answer}");
        assert_eq!(answer["verdict"], "allow", "{source}: {answer}");
        assert_eq!(answer["rule"], "everyone-to-web", "{source}: {answer}");
    }
    // As a destination the same addresses stay classes of their own.
    assert_eq!(
        explain("everyone", "255.255.255.255")["to"]["segment"],
        "broadcast"
    );
    assert_eq!(
        explain("everyone", "ff02::fb")["to"]["segment"],
        "multicast"
    );
}

/// An address the host delivers to itself (an interface address, an AnyIP prefix) is
/// decided by the kernel against the segment serving the port, whatever the CIDRs say:
/// explain does the same for the addresses it is told are the host's, and for this
/// machine's own with `--on-this-host` (its loopback `local` route among them).
#[test]
fn explain_decides_the_hosts_own_addresses_as_this_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[segments.client]
cgroups = [\"client.service\"]
         [segments.payments]
ports = [\"8443/tcp\"]
         [[allow]]
id = \"client-out\"
from = [\"client\"]
to = [\"world\"]
ports = [\"8443/tcp\"]
",
    )
    .expect("write");
    let explain = |to: &str, host: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "policy",
            "explain",
            policy.to_str().expect("utf-8"),
            "--from",
            "client.service",
            "--to",
            to,
            "--port",
            "8443/tcp",
            "--json",
        ];
        args.extend_from_slice(host);
        explained(&enforcer(&args))
    };
    // Offline, an address is its CIDR's: `world`, allowed.
    let offline = explain("198.19.253.7", &[]);
    assert_eq!(offline["to"]["segment"], "world", "{offline}");
    assert_eq!(offline["verdict"], "allow", "{offline}");
    // Named as the host's (a prefix, an address): the serving segment, denied.
    for host in [
        ["--local-address", "198.19.253.0/24"],
        ["--local-address", "198.19.253.7"],
    ] {
        let answer = explain("198.19.253.7", &host);
        assert_eq!(answer["to"]["segment"], "payments", "{host:?}: {answer}");
        assert_eq!(answer["verdict"], "deny", "{host:?}: {answer}");
        assert_eq!(answer["reason"], "default-deny", "{host:?}: {answer}");
    }
    let mapped = explain(
        "::ffff:198.19.253.7",
        &["--local-address", "198.19.253.0/24"],
    );
    assert_eq!(mapped["to"]["segment"], "payments", "{mapped}");
    // Every address of 127.0.0.0/8 is this host without any flag; with --on-this-host
    // the machine's own interface addresses are too (loopback's is always there).
    let here = explain("127.0.0.1", &["--on-this-host"]);
    assert_eq!(here["to"]["segment"], "payments", "{here}");
    let bad = enforcer(&[
        "policy",
        "explain",
        policy.to_str().expect("utf-8"),
        "--from",
        "client.service",
        "--to",
        "198.19.253.7",
        "--port",
        "8443/tcp",
        "--local-address",
        "not-an-address",
    ]);
    assert_eq!(bad.status.code(), Some(2), "trouble, not an answer");
    assert!(
        text(&bad.stderr).contains("`not-an-address` is neither an IP address nor a prefix"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn diff_lists_verdict_changes_and_rule_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = dir.path().join("old.toml");
    let new = dir.path().join("new.toml");
    let segments =
        "[segments.a]\ncidrs = [\"198.18.1.0/24\"]\n[segments.b]\ncidrs = [\"198.18.2.0/24\"]\n";
    std::fs::write(&old, format!("{segments}[[allow]]\nid = \"a-b\"\nfrom = [\"a\"]\nto = [\"b\"]\nports = [\"80-90/tcp\"]\n")).expect("write");
    std::fs::write(&new, format!("{segments}[[allow]]\nid = \"a-b\"\nfrom = [\"a\"]\nto = [\"b\"]\nports = [\"80-85/tcp\"]\n")).expect("write");
    let out = enforcer(&[
        "policy",
        "diff",
        old.to_str().expect("p"),
        new.to_str().expect("p"),
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "policies that differ: {}",
        text(&out.stderr)
    );
    let changes: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(changes["verdicts"][0]["from"], "a");
    assert_eq!(changes["verdicts"][0]["to"], "b");
    assert_eq!(changes["verdicts"][0]["changes"][0]["ports"], "86-90/tcp");
    assert_eq!(changes["verdicts"][0]["changes"][0]["old"], "allow");
    assert_eq!(changes["verdicts"][0]["changes"][0]["new"], "deny");
    assert_eq!(changes["verdicts"].as_array().expect("array").len(), 1);
    assert_eq!(changes["rules"][0]["change"], "changed");
    let summary = &changes["summary"];
    assert_eq!(summary["segment_pairs"], 1);
    assert_eq!(summary["verdict_changes"], 1);
    assert_eq!(summary["opened"], 0);
    assert_eq!(summary["closed"], 1);
    assert_eq!(summary["rules"]["changed"], 1);
    let out = enforcer(&[
        "policy",
        "diff",
        old.to_str().expect("p"),
        new.to_str().expect("p"),
    ]);
    assert!(
        text(&out.stdout).ends_with(
            "summary: 1 verdict changes in 1 segment pairs (0 opened, 1 closed); rules +0 -0 ~1\n"
        ),
        "{}",
        text(&out.stdout)
    );
    // The same policy twice: 0, as diff(1) says "no difference".
    let same = enforcer(&[
        "policy",
        "diff",
        old.to_str().expect("p"),
        old.to_str().expect("p"),
    ]);
    assert_eq!(same.status.code(), Some(0), "{}", text(&same.stderr));
    // A policy that does not compile: 2, trouble.
    std::fs::write(&new, "[segments.a\n").expect("write");
    let broken = enforcer(&[
        "policy",
        "diff",
        old.to_str().expect("p"),
        new.to_str().expect("p"),
    ]);
    assert_eq!(broken.status.code(), Some(2), "{}", text(&broken.stderr));
}

struct Signed {
    _dir: tempfile::TempDir,
    key_a: PathBuf,
    key_b: PathBuf,
    bundle: PathBuf,
}

fn signed_bundle(version: &str) -> Signed {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_a = dir.path().join("a.key");
    let key_b = dir.path().join("b.key");
    for key in [&key_a, &key_b] {
        let out = enforcer(&["keygen", key.to_str().expect("p")]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&key_a).expect("key").permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the private key is readable by its owner only"
    );
    let bundle = dir.path().join("policy.bundle");
    let policy = repo().join("policies/enclave");
    let out = enforcer(&[
        "policy",
        "sign",
        policy.to_str().expect("p"),
        "--key",
        key_a.to_str().expect("p"),
        "--bundle-version",
        version,
        "-o",
        bundle.to_str().expect("p"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    Signed {
        _dir: dir,
        key_a,
        key_b,
        bundle,
    }
}

fn pub_of(key: &Path) -> String {
    format!("{}.pub", key.display())
}

/// `enforcer policy verify BUNDLE --trusted-key KEY.pub [--min-version N]`.
fn verify_cli(bundle: &Path, key: &Path, min_version: Option<&str>) -> Output {
    let public = pub_of(key);
    let mut args = vec![
        "policy",
        "verify",
        bundle.to_str().expect("utf-8"),
        "--trusted-key",
        &public,
    ];
    if let Some(min) = min_version {
        args.extend(["--min-version", min]);
    }
    enforcer(&args)
}

/// Asserts the CLI refused a bundle (exit 3) with `reason` in its message.
fn assert_refused(out: &Output, reason: &str) {
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains(reason), "{}", text(&out.stderr));
}

#[test]
fn a_signed_bundle_verifies_with_its_key() {
    let s = signed_bundle("5");
    let out = verify_cli(&s.bundle, &s.key_a, Some("5"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("bundle OK: version 5"),
        "{}",
        text(&out.stdout)
    );
}

/// A bundle signed with `key` whose sources are `sources` but whose signed image is
/// the one `signed` compiles to: what a signer would make whose compiler disagrees
/// with this build's, or who signed other sources than it compiled.
fn bundle_of_other_sources(signed: &Compiled, sources: SourceSet, key: &Path) -> Vec<u8> {
    let key = read_private_key(key).expect("the private key");
    let mut mismatched = signed.clone();
    mismatched.sources = sources;
    sign(&mismatched, 6, &key)
}

/// The enclave policy's sources with `from` replaced by `to` in the file holding it.
fn enclave_edited(enclave: &Compiled, from: &str, to: &str) -> SourceSet {
    let mut sources = enclave.sources.clone();
    let file = sources
        .files
        .iter_mut()
        .find(|file| file.text.contains(from))
        .unwrap_or_else(|| panic!("no enclave file holds {from}"));
    file.text = file.text.replacen(from, to, 1);
    sources
}

#[test]
fn a_bundle_whose_sources_do_not_compile_to_the_signed_image_is_refused() {
    let s = signed_bundle("5");
    let enclave = enforcer::policy::load(&[repo().join("policies/enclave")]).expect("enclave");
    let bundle = s.bundle.with_file_name("mismatched.bundle");
    // Sources that compile, to another image (a failsafe source moved); then sources
    // that do not compile at all.
    for sources in [
        enclave_edited(&enclave, "198.18.250.0/24", "198.18.251.0/24"),
        enclave_edited(&enclave, "[defaults]", "[defaults]\nbogus = 1"),
    ] {
        std::fs::write(
            &bundle,
            bundle_of_other_sources(&enclave, sources, &s.key_a),
        )
        .expect("write the bundle");
        let out = verify_cli(&bundle, &s.key_a, None);
        assert_refused(&out, "the sources do not compile to the signed image");
    }
}

#[test]
fn a_bundle_signed_by_another_key_is_refused_saying_so() {
    let s = signed_bundle("5");
    let out = verify_cli(&s.bundle, &s.key_b, None);
    assert_refused(&out, "signed by another key");
}

#[test]
fn an_older_bundle_is_refused_saying_so() {
    let s = signed_bundle("5");
    let out = verify_cli(&s.bundle, &s.key_a, Some("6"));
    assert_refused(&out, "version 5 is older than version 6");
}

#[test]
fn flipping_any_byte_of_a_bundle_gets_it_refused() {
    let s = signed_bundle("5");
    let bytes = std::fs::read(&s.bundle).expect("bundle");
    let trusted = read_public_key(Path::new(&pub_of(&s.key_a))).expect("pub");
    assert!(verify(&bytes, &trusted, 0).is_ok());
    let mut altered_content = 0;
    for i in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[i] ^= 0x01;
        match verify(&flipped, &trusted, 0) {
            Ok(_) => panic!("byte {i} flipped and the bundle still verified"),
            Err(BundleError::BadSignature) => altered_content += 1,
            Err(_) => {}
        }
    }
    assert!(
        altered_content > bytes.len() / 2,
        "most flips land in signed content and are reported as altered"
    );

    // The CLI says which check failed: a flip inside a policy source is "altered".
    let at = text(&bytes)
        .find("gateway-to-orders")
        .expect("a rule id in the payload");
    let mut flipped = bytes.clone();
    flipped[at] ^= 0x01;
    std::fs::write(&s.bundle, &flipped).expect("write");
    let out = verify_cli(&s.bundle, &s.key_a, None);
    assert_refused(&out, "altered");
}

#[test]
fn keygen_never_overwrites_a_key() {
    let s = signed_bundle("1");
    let before = std::fs::read(&s.key_a).expect("key");
    let out = enforcer(&["keygen", s.key_a.to_str().expect("p")]);
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&s.key_a).expect("key"), before);
}

#[test]
fn keygen_sign_and_verify_answer_in_json_and_say_an_error_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("k.key");
    let json = |out: &Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("JSON; stderr: {}", text(&out.stderr)))
    };
    let made = enforcer(&["keygen", key.to_str().expect("p"), "--json"]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    let made = json(&made);
    let key_id = made["key_id"].as_str().expect("key id").to_owned();
    assert_eq!(made["public_key"], pub_of(&key));
    // A second keygen to the same path: refused, its reason said once.
    let again = enforcer(&["keygen", key.to_str().expect("p")]);
    assert_eq!(again.status.code(), Some(1));
    let said = text(&again.stderr);
    assert_eq!(said.matches("File exists").count(), 1, "{said}");

    let bundle = dir.path().join("p.bundle");
    let policy = repo().join("policies/enclave");
    let signed = enforcer(&[
        "policy",
        "sign",
        policy.to_str().expect("p"),
        "--key",
        key.to_str().expect("p"),
        "--bundle-version",
        "3",
        "-o",
        bundle.to_str().expect("p"),
        "--json",
    ]);
    assert!(signed.status.success(), "{}", text(&signed.stderr));
    let signed = json(&signed);
    assert_eq!(signed["version"], 3);
    assert_eq!(signed["key_id"], key_id.as_str());

    let public = pub_of(&key);
    let verify = |min: &str| {
        enforcer(&[
            "policy",
            "verify",
            bundle.to_str().expect("p"),
            "--trusted-key",
            &public,
            "--min-version",
            min,
            "--json",
        ])
    };
    let accepted = verify("3");
    assert_eq!(accepted.status.code(), Some(0));
    let accepted = json(&accepted);
    assert_eq!(accepted["accepted"], true);
    assert_eq!(accepted["image_sha256"], signed["image_sha256"]);
    let refused = verify("4");
    assert_eq!(refused.status.code(), Some(3));
    let refused = json(&refused);
    assert_eq!(refused["accepted"], false);
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("version 3 is older than version 4")),
        "{refused}"
    );
}
