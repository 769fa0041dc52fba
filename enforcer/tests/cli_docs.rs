//! The man page and shell completions an operator installs: generated from the parser,
//! so every subcommand is in them.

use std::process::Command;

fn enforcer(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_enforcer"))
        .args(args)
        .output()
        .expect("run enforcer");
    assert!(
        output.status.success(),
        "enforcer {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

#[test]
fn the_man_page_has_a_section_per_subcommand_and_the_exit_status() {
    let page = enforcer(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH enforcer 1"),
        "roff"
    );
    for section in [
        "ENFORCER PREFLIGHT",
        "ENFORCER POLICY EXPLAIN",
        "ENFORCER POLICY SIMULATE",
        "ENFORCER AUDIT VERIFY",
        "ENFORCER AUDIT EXPORT",
        "ENFORCER AUDIT SETUP-KEYS",
        "ENFORCER STATUS",
        "EXIT STATUS",
    ] {
        assert!(page.contains(&format!(".SH \"{section}\"")), "no {section}");
    }
    assert!(
        page.contains("\\-\\-verify\\-key"),
        "audit verify's options are listed"
    );
}

#[test]
fn completions_cover_every_shell_and_subcommand() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = enforcer(&["completions", shell]);
        for word in ["simulate", "setup-keys", "preflight", "since"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    // The bash script is valid bash.
    let script = enforcer(&["completions", "bash"]);
    let checked = Command::new("bash")
        .args(["-n", "-c", &script])
        .status()
        .expect("bash");
    assert!(checked.success());
}
