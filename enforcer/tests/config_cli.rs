//! `enforcer config check` as an infrastructure team runs it before deploying: the shipped
//! example config is valid, and a broken one is refused naming each field and its line.

use std::{path::Path, process::Command};

fn config_check(path: &Path, json: bool) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_enforcer"));
    command.args(["config", "check"]).arg(path);
    if json {
        command.arg("--json");
    }
    command.output().expect("run enforcer")
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/enforcer.toml");
    let out = config_check(&example, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["ok"], true);
    assert_eq!(report["config"]["pin_dir"], "/sys/fs/bpf/enforcer");
    assert_eq!(report["config"]["metrics_listen"], "127.0.0.1:9464");
    assert_eq!(report["config"]["audit"]["dedup_window_ms"], 1000);
}

#[test]
fn a_broken_config_is_refused_naming_fields_and_lines() {
    let dir = std::env::temp_dir().join(format!("enforcer-test-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("enforcer.toml");
    std::fs::write(
        &path,
        "pin_dir = \"pins\"\n\n[policy]\npath = \"/etc/enforcer/policy\"\n\n[metrics]\nlisten = \"everywhere\"\n",
    )
    .expect("write config");
    let out = config_check(&path, false);
    std::fs::remove_dir_all(&dir).expect("remove temp dir");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display();
    assert!(
        stderr.contains(&format!("{file}:1:11: `pin_dir`: must be an absolute path")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file}:7:10: `metrics.listen`: `everywhere` is not an address:port"
        )),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn config_check_shows_where_and_how_records_are_forwarded() {
    let dir = std::env::temp_dir().join(format!("enforcer-test-fwd-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("enforcer.toml");
    std::fs::write(
        &path,
        "[policy]\npath = \"/etc/enforcer/policy\"\n\n[audit.forward]\naddress = \"collector.example:6514\"\nframing = \"newline\"\n",
    )
    .expect("write config");
    let text = config_check(&path, false);
    let json = config_check(&path, true);
    std::fs::remove_dir_all(&dir).expect("remove temp dir");
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let stdout = String::from_utf8_lossy(&text.stdout);
    for line in [
        "audit.forward.address  collector.example:6514 (resolved at every connection attempt)",
        "audit.forward.framing  newline",
        "audit.forward.tls      no (plain TCP)",
    ] {
        assert!(stdout.contains(line), "{line:?} in:\n{stdout}");
    }
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    let forward = &report["config"]["audit"]["forward"];
    assert_eq!(forward["address"], "collector.example:6514");
    assert_eq!(forward["framing"], "newline");
    assert_eq!(forward["tls"], serde_json::Value::Null);
}

/// `enforcer run` with a config it refuses (before anything is attached), `env` set and
/// `args` added; its standard error, line by line.
fn refused_run(env: &[(&str, &str)], args: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("enforcer.toml");
    std::fs::write(
        &config,
        "cgroup = \"x\"\n[policy]\npath = \"/p\"\nbogus = 1\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_enforcer"))
        .env_remove("JOURNAL_STREAM")
        .envs(env.iter().copied())
        .args(args)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .expect("run enforcer");
    assert_eq!(out.status.code(), Some(2), "a refused config");
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn logs_carry_journald_priorities_under_systemd_and_come_as_json_on_request() {
    let text = refused_run(&[], &[]);
    assert!(
        text.iter()
            .any(|l| l.contains("ERROR") && l.contains("unknown field `bogus`"))
    );
    assert!(text.iter().all(|l| !l.starts_with('<')), "{text:?}");

    // As systemd runs it: each line starts with its syslog priority, 3 for an error.
    let journal = refused_run(&[("JOURNAL_STREAM", "8:1234")], &[]);
    assert!(!journal.is_empty());
    assert!(journal.iter().all(|l| l.starts_with("<3>")), "{journal:?}");

    let json = refused_run(&[], &["--log-format", "json"]);
    for line in &json {
        let entry: serde_json::Value = serde_json::from_str(line).expect("a JSON object per line");
        assert_eq!(entry["level"], "ERROR");
        assert!(
            entry["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("config"))
        );
    }
    let both = refused_run(&[("JOURNAL_STREAM", "8:1234")], &["--log-format", "json"]);
    for line in &both {
        let entry = line.strip_prefix("<3>").expect("the priority first");
        serde_json::from_str::<serde_json::Value>(entry).expect("then the JSON object");
    }
}
