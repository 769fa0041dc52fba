//! Each file in `broken-policies/` states the diagnostics it must produce in `# expect:`
//! lines (`severity code [line:col]`); the validator must report exactly those, at those
//! places, and compile nothing when any is an error.

use std::{fs, path::Path};

use enforcer::policy::{compile_sources, diagnostic::Severity, source::SourceSet};

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Expected {
    severity: String,
    code: String,
    place: Option<(usize, usize)>,
}

fn expectations(text: &str) -> Vec<Expected> {
    let mut found: Vec<Expected> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# expect: "))
        .map(|spec| {
            let mut words = spec.split_whitespace();
            let severity = words.next().expect("severity").to_owned();
            let code = words.next().expect("code").to_owned();
            let place = words.next().map(|place| {
                let (line, col) = place.split_once(':').expect("line:col");
                (line.parse().expect("line"), col.parse().expect("col"))
            });
            Expected {
                severity,
                code,
                place,
            }
        })
        .collect();
    found.sort();
    found
}

#[test]
fn every_broken_policy_reports_its_diagnostics_at_the_right_place() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken-policies");
    let mut files: Vec<_> = fs::read_dir(&dir)
        .expect("broken-policies")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "the broken policies are there");
    for path in files {
        let sources = SourceSet::load(std::slice::from_ref(&path)).expect("readable");
        let want = expectations(&sources.files[0].text);
        assert!(
            !want.is_empty(),
            "{} has no `# expect:` line",
            path.display()
        );
        let (diagnostics, compiled) = match compile_sources(sources.clone()) {
            Ok(compiled) => (compiled.warnings.clone(), true),
            Err(rejected) => (rejected.diagnostics.clone(), false),
        };
        let mut got: Vec<Expected> = diagnostics
            .iter()
            .map(|d| Expected {
                severity: match d.severity {
                    Severity::Error => "error".into(),
                    Severity::Warning => "warning".into(),
                },
                code: d.code.to_owned(),
                place: d
                    .span
                    .as_ref()
                    .map(|s| sources.line_col(s.file, s.range.start)),
            })
            .collect();
        got.sort();
        assert_eq!(got, want, "{}", path.display());
        let has_error = want.iter().any(|e| e.severity == "error");
        assert_eq!(
            compiled,
            !has_error,
            "{}: compiled despite errors, or refused without",
            path.display()
        );
        // The rendered form names file:line:col and shows the offending text.
        for d in diagnostics.iter().filter(|d| d.span.is_some()) {
            let rendered = d.render(&sources);
            let span = d.span.as_ref().expect("span");
            assert!(rendered.contains(&sources.location(span)), "{rendered}");
            let first_line = sources.text(span).lines().next().unwrap_or("");
            assert!(
                rendered.contains(first_line),
                "{rendered} lacks {first_line:?}"
            );
        }
    }
}

#[test]
fn a_large_policy_parsed_in_pieces_reports_true_positions_and_order() {
    // Large enough to be split at its table headers and parsed in parallel.
    let mut text = String::from("[segments.a]\ncidrs = [\"198.18.1.0/24\"]\n");
    for i in 0..1200 {
        text.push_str(&format!(
            "[[allow]]\nid = \"r{i}\"\nfrom = [\"a\"]\nto = [\"a\"]\nports = [\"{}/tcp\"]\n",
            1 + i
        ));
    }
    let bad_line = text.lines().count() + 3;
    text.push_str(
        "[[deny]]\nid = \"late\"\nfrom = [\"a\"]\nto = [\"nope\"]\nports = [\"1/tcp\"]\n",
    );
    assert!(text.len() > 64 * 1024, "{} bytes", text.len());
    let mut sources = SourceSet::default();
    sources.add("big.toml", text);
    let rejected = compile_sources(sources.clone()).expect_err("unknown segment");
    let unknown: Vec<_> = rejected
        .diagnostics
        .iter()
        .filter(|d| d.code == "unknown-segment")
        .collect();
    assert_eq!(unknown.len(), 1);
    let span = unknown[0].span.as_ref().expect("span");
    assert_eq!(
        sources.line_col(span.file, span.range.start),
        (bad_line + 1, 7)
    );
    assert_eq!(sources.text(span), "\"nope\"");

    // Without the error, rules keep their declaration order across the pieces.
    let fixed = sources.files[0].text.replace("\"nope\"", "\"a\"");
    let mut sources = SourceSet::default();
    sources.add("big.toml", fixed);
    let compiled = compile_sources(sources).expect("valid");
    let ids: Vec<&str> = compiled
        .policy
        .rules
        .iter()
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(ids[0], "r0");
    assert_eq!(ids[1199], "r1199");
    assert_eq!(ids[1200], "late");
}

#[test]
fn compiling_is_deterministic_and_independent_of_segment_declaration_order() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/enclave");
    let first = enforcer::policy::load(std::slice::from_ref(&dir)).expect("enclave compiles");
    let second = enforcer::policy::load(std::slice::from_ref(&dir)).expect("enclave compiles");
    assert_eq!(first.image, second.image);
    assert_eq!(first.image.digest(), second.image.digest());

    // Segments declared in another order (and in other files) compile to the same image.
    let mut reordered = SourceSet::default();
    for file in first.sources.files.iter().rev() {
        reordered.add(file.path.clone(), file.text.clone());
    }
    let reordered = compile_sources(reordered).expect("compiles");
    assert_eq!(reordered.image.segment_names, first.image.segment_names);
    assert_eq!(reordered.image.cidrs_v4, first.image.cidrs_v4);
}

/// A policy file declaring defaults, a segment and a failsafe, as a policy directory's
/// files each could.
const DECLARATIONS: &str = r#"[defaults]
audit = "deny"

[segments.web]
cidrs = ["198.18.1.0/24"]

[failsafe.ssh]
from = ["198.18.250.0/24"]
port = "22/tcp"
"#;

#[test]
fn declarations_repeated_in_another_file_are_refused_at_the_repeat() {
    // One TOML file cannot hold a table twice (a `syntax` error); two files of a policy
    // directory can.
    let mut sources = SourceSet::default();
    sources.add("10-first.toml", DECLARATIONS);
    sources.add("20-second.toml", DECLARATIONS);
    let rejected = compile_sources(sources.clone()).expect_err("repeated declarations");
    let mut got: Vec<(&str, String)> = rejected
        .diagnostics
        .iter()
        .map(|d| {
            let span = d.span.as_ref().expect("a place");
            (d.code, sources.location(span))
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("duplicate-defaults", "20-second.toml:1:1".to_owned()),
            ("duplicate-failsafe", "20-second.toml:7:11".to_owned()),
            ("duplicate-segment", "20-second.toml:4:11".to_owned()),
        ]
    );
}
