//! Every record a test's store holds, validated against the OCSF schema of the audit
//! records (`tests/ocsf/ocsf-1.3.0-enforcer.schema.json`, generated from the OCSF schema
//! repository: `tests/ocsf/README.md`). The helpers that read a store call
//! [`assert_store_is_ocsf`] first, so every test that reads one checks it.

use std::{path::Path, sync::OnceLock};

const SCHEMA: &str = include_str!("../ocsf/ocsf-1.3.0-enforcer.schema.json");

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).expect("the schema is JSON");
        jsonschema::draft202012::new(&schema).expect("the OCSF schema compiles")
    })
}

/// What the OCSF schema finds wrong with one record line (nothing when it is valid).
pub fn violations(line: &str) -> Vec<String> {
    let value: serde_json::Value = match serde_json::from_str(line) {
        Ok(value) => value,
        Err(err) => return vec![format!("not JSON: {err}")],
    };
    validator()
        .iter_errors(&value)
        .map(|error| format!("{}: {error}", error.instance_path()))
        .collect()
}

/// Validates every record in the store `dir` against the OCSF schema and panics naming
/// each record that does not fit (file, line, path, why). A last line without its newline
/// is a batch still being written and is left for the next read. Returns how many
/// records were checked.
pub fn assert_store_is_ocsf(dir: &Path) -> usize {
    let segments = enforcer::audit::files::segments(dir)
        .unwrap_or_else(|err| panic!("read the audit store {}: {err}", dir.display()));
    let mut checked = 0;
    let mut wrong = Vec::new();
    for segment in segments {
        let read = enforcer::audit::files::read_records(&segment, |stored| {
            checked += 1;
            match stored {
                Ok(stored) => {
                    for violation in violations(&stored.json()) {
                        wrong.push(format!(
                            "{}:{}: {violation}",
                            segment.path.display(),
                            stored.number
                        ));
                    }
                }
                Err(damage) => wrong.push(format!("{}: {damage}", segment.path.display())),
            }
            true
        });
        match read {
            Ok(_) => {}
            // Retention removed it since the listing.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => panic!("read {}: {err}", segment.path.display()),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} violation(s) of the OCSF schema in {}:\n{}",
        wrong.len(),
        dir.display(),
        wrong[..wrong.len().min(20)].join("\n")
    );
    checked
}
