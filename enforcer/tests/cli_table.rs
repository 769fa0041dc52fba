//! Every subcommand that runs without the kernel, its exit codes and its `--json`, in one
//! table: what a script or a CI job relies on. (`run`, `status`, `preflight` and
//! `uninstall` need root and a kernel; the privileged tests cover them.)

mod support;

use std::path::Path;

use support::{End, enforcer, flow, write_store};

/// How a row's standard output must parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// One JSON document.
    Json,
    /// JSON Lines, at least one.
    JsonLines,
    /// Anything (text, or nothing).
    Text,
}

/// A store with one allowed flow of `api` to `db` by rule `api-to-db`, sealed.
fn store(dir: &Path) {
    let api = End {
        segment: "api",
        ip: "198.18.0.7",
        port: 40_000,
    };
    let db = End {
        segment: "db",
        ip: "198.18.7.2",
        port: 5432,
    };
    let now = enforcer::audit::record::now_ms();
    write_store(dir, vec![flow("allow", "api-to-db", &api, &db, now)]);
}

#[test]
fn every_subcommand_answers_with_its_exit_code_and_its_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let audit = path("audit");
    store(Path::new(&audit));
    let policy = path("policy.toml");
    std::fs::write(
        &policy,
        "[segments.api]\ncgroups = [\"system.slice/api.service\"]\n\n[segments.db]\ncidrs = [\"198.18.7.0/24\"]\n\n[[allow]]\nid = \"api-to-db\"\nfrom = [\"api\"]\nto = [\"db\"]\nports = [\"5432/tcp\"]\n",
    )
    .expect("write");
    let wider = path("wider.toml");
    std::fs::write(
        &wider,
        std::fs::read_to_string(&policy)
            .unwrap()
            .replace("5432/tcp", "5432-5433/tcp"),
    )
    .expect("write");
    let broken = path("broken.toml");
    std::fs::write(&broken, "[segments.api\n").expect("write");
    let config = path("enforcer.toml");
    std::fs::write(
        &config,
        format!("cgroup = \"enforcer-test\"\n[policy]\npath = \"{policy}\"\n[audit]\ndir = \"{audit}\"\n"),
    )
    .expect("write");
    let key = path("signing");
    let public = format!("{key}.pub");
    let bundle = path("p.bundle");
    let seal_key = path("seal.key");
    // Written by the first export row; the next refuses to replace it.
    let exported = path("flows.parquet");
    let explain = |from: &str, port: &str| -> Vec<String> {
        [
            "policy", "explain", &policy, "--from", from, "--to", "db", "--port", port, "--json",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let rows: Vec<(Vec<String>, i32, Out)> = vec![
        (
            vec![
                "policy".into(),
                "check".into(),
                policy.clone(),
                "--json".into(),
            ],
            0,
            Out::Json,
        ),
        (
            vec![
                "policy".into(),
                "check".into(),
                broken.clone(),
                "--json".into(),
            ],
            2,
            Out::Json,
        ),
        (explain("api", "5432/tcp"), 0, Out::Json),
        (explain("api", "22/tcp"), 1, Out::Json),
        (
            vec![
                "policy".into(),
                "diff".into(),
                policy.clone(),
                policy.clone(),
                "--json".into(),
            ],
            0,
            Out::Json,
        ),
        (
            vec![
                "policy".into(),
                "diff".into(),
                policy.clone(),
                wider.clone(),
                "--json".into(),
            ],
            1,
            Out::Json,
        ),
        (
            vec![
                "policy".into(),
                "diff".into(),
                policy.clone(),
                broken.clone(),
            ],
            2,
            Out::Text,
        ),
        (
            vec!["keygen".into(), key.clone(), "--json".into()],
            0,
            Out::Json,
        ),
        (
            vec!["keygen".into(), key.clone(), "--json".into()],
            1,
            Out::Text,
        ),
        (
            [
                "policy",
                "sign",
                &policy,
                "--key",
                &key,
                "--bundle-version",
                "2",
                "-o",
                &bundle,
                "--json",
            ]
            .map(str::to_owned)
            .to_vec(),
            0,
            Out::Json,
        ),
        (
            [
                "policy",
                "verify",
                &bundle,
                "--trusted-key",
                &public,
                "--json",
            ]
            .map(str::to_owned)
            .to_vec(),
            0,
            Out::Json,
        ),
        (
            [
                "policy",
                "verify",
                &bundle,
                "--trusted-key",
                &public,
                "--min-version",
                "3",
                "--json",
            ]
            .map(str::to_owned)
            .to_vec(),
            3,
            Out::Json,
        ),
        (
            [
                "policy",
                "simulate",
                &wider,
                "--audit-dir",
                &audit,
                "--json",
            ]
            .map(str::to_owned)
            .to_vec(),
            0,
            Out::Json,
        ),
        (
            vec![
                "config".into(),
                "check".into(),
                config.clone(),
                "--json".into(),
            ],
            0,
            Out::Json,
        ),
        (
            vec![
                "config".into(),
                "check".into(),
                broken.clone(),
                "--json".into(),
            ],
            2,
            Out::Json,
        ),
        (
            ["audit", "query", "--dir", &audit, "--json"]
                .map(str::to_owned)
                .to_vec(),
            0,
            Out::JsonLines,
        ),
        (
            ["audit", "query", "--dir", &audit, "--segment", "dbb"]
                .map(str::to_owned)
                .to_vec(),
            1,
            Out::Text,
        ),
        (
            ["audit", "export", "--dir", &audit, "--format", "ocsf-jsonl"]
                .map(str::to_owned)
                .to_vec(),
            0,
            Out::JsonLines,
        ),
        (
            [
                "audit", "export", "--dir", &audit, "--format", "parquet", "-o", &exported,
                "--json",
            ]
            .map(str::to_owned)
            .to_vec(),
            0,
            Out::Json,
        ),
        (
            [
                "audit", "export", "--dir", &audit, "--format", "csv", "-o", &exported,
            ]
            .map(str::to_owned)
            .to_vec(),
            1,
            Out::Text,
        ),
        (
            ["audit", "export", "--dir", &audit, "--format", "parquet"]
                .map(str::to_owned)
                .to_vec(),
            2,
            Out::Text,
        ),
        (
            ["audit", "tail", "--dir", &audit, "--json"]
                .map(str::to_owned)
                .to_vec(),
            0,
            Out::JsonLines,
        ),
        (
            ["audit", "stats", "--dir", &audit, "--json"]
                .map(str::to_owned)
                .to_vec(),
            0,
            Out::Json,
        ),
        (
            ["audit", "verify", &audit, "--json"]
                .map(str::to_owned)
                .to_vec(),
            0,
            Out::Json,
        ),
        (
            ["audit", "verify", &path("nowhere"), "--json"]
                .map(str::to_owned)
                .to_vec(),
            1,
            Out::Text,
        ),
        (
            ["audit", "setup-keys", "--key-file", &seal_key, "--json"]
                .map(str::to_owned)
                .to_vec(),
            0,
            Out::Json,
        ),
        (vec!["completions".into(), "bash".into()], 0, Out::Text),
        (vec!["man".into()], 0, Out::Text),
        (vec!["policy".into(), "bogus".into()], 2, Out::Text),
    ];
    let mut wrong = Vec::new();
    for (args, code, out) in &rows {
        let output = enforcer(args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let parses = match out {
            Out::Json => serde_json::from_str::<serde_json::Value>(&stdout).is_ok(),
            Out::JsonLines => {
                stdout.lines().count() > 0
                    && stdout
                        .lines()
                        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
            }
            Out::Text => true,
        };
        if output.status.code() != Some(*code) || !parses {
            wrong.push(format!(
                "enforcer {}: exit {:?} (want {code}), {out:?} {}\n  stderr: {}",
                args.join(" "),
                output.status.code(),
                if parses { "ok" } else { "does not parse" },
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
