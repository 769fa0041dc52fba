//! The crate's layering, written down as data and checked against every `crate::` and
//! `super::` path in `src/`: a module may use what its own unit holds and what lower
//! layers hold, never a sibling unit of its own layer or anything above it.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

/// The layers, lowest first. An entry names a module (`policy`), a submodule
/// (`cli::table`), or every child of a module as its own unit (`cli::*`: the
/// subcommands, which may not use each other). The longest matching entry decides
/// where a module belongs.
const LAYERS: &[(&str, &[&str])] = &[
    ("foundations", &["digest", "durable", "object", "host"]),
    ("policy", &["policy"]),
    ("audit trail and kernel loader", &["audit", "loader"]),
    ("agent config", &["config"]),
    ("agent", &["agent"]),
    ("cli helpers", &["cli::table", "cli::time"]),
    ("cli subcommands", &["cli::*"]),
    ("cli entry", &["cli"]),
];

/// Where a module path belongs: its layer's index and the unit it is part of.
fn place(path: &[String]) -> Option<(usize, String)> {
    let mut best: Option<(usize, usize, String)> = None;
    for (layer, (_, entries)) in LAYERS.iter().enumerate() {
        for entry in *entries {
            let parts: Vec<&str> = entry.split("::").collect();
            let (depth, unit) = if parts.last() == Some(&"*") {
                let parent = &parts[..parts.len() - 1];
                if path.len() <= parent.len() || !path.iter().zip(parent).all(|(a, b)| a == b) {
                    continue;
                }
                // A named submodule (`cli::table`) beats `cli::*` at the same depth.
                (2 * parts.len(), path[..parts.len()].join("::"))
            } else if path.len() >= parts.len() && path.iter().zip(&parts).all(|(a, b)| a == b) {
                (2 * parts.len() + 1, entry.to_string())
            } else {
                continue;
            };
            if best.as_ref().is_none_or(|(d, ..)| depth > *d) {
                best = Some((depth, layer, unit));
            }
        }
    }
    best.map(|(_, layer, unit)| (layer, unit))
}

/// The module path of a source file below `src/`.
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts
        .last()
        .is_some_and(|last| last == "mod" || last == "lib")
    {
        parts.pop();
    }
    parts
}

/// The code of a file without comments and string literals (their contents are
/// blanked), so paths in docs and messages do not count.
fn code_only(source: &str) -> String {
    let bytes = source.as_bytes();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            // A char literal such as '"' or '{' (lifetimes have no closing quote nearby).
            b'\'' if bytes.get(i + 2) == Some(&b'\'') => {
                out.push_str("' '");
                i += 3;
            }
            b'\'' if bytes.get(i + 1) == Some(&b'\\') && bytes.get(i + 3) == Some(&b'\'') => {
                out.push_str("' '");
                i += 4;
            }
            byte => {
                out.push(char::from(byte));
                i += 1;
            }
        }
    }
    out
}

/// Expands a path that may hold `{a::b, c}` groups into every path it names, as
/// identifier lists (globs and `self` end a path).
fn expand(prefix: &[String], text: &str, out: &mut Vec<Vec<String>>) {
    let text = text.trim();
    if let Some(inner) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(prefix, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(prefix, &inner[start..], out);
        return;
    }
    if text.is_empty() {
        return;
    }
    let (head, rest) = text.split_once("::").unwrap_or((text, ""));
    let head = head.split_whitespace().next().unwrap_or("");
    let mut path = prefix.to_vec();
    if !head.is_empty() && head != "self" && head != "*" {
        path.push(head.to_owned());
    }
    if rest.is_empty() || head == "self" || head == "*" {
        out.push(path);
    } else {
        expand(&path, rest, out);
    }
}

/// The text of the path starting at `start` (`crate::x::{y, z}`): identifiers, `::` and
/// balanced braces.
fn path_text(code: &str, start: usize) -> &str {
    let bytes = code.as_bytes();
    let mut depth = 0;
    let mut end = start;
    while end < bytes.len() {
        let c = bytes[end];
        match c {
            b'{' => depth += 1,
            b'}' if depth > 0 => depth -= 1,
            b'}' => break,
            _ if depth > 0 => {}
            b':' => {}
            _ if c.is_ascii_alphanumeric() || c == b'_' || c == b'*' => {}
            _ => break,
        }
        end += 1;
        if depth == 0 && c == b'}' {
            break;
        }
    }
    &code[start..end]
}

/// Every module path `source` (the file of module `module`) refers to through `crate::`
/// or `super::`.
fn references(module: &[String], source: &str) -> Vec<Vec<String>> {
    let code = code_only(source);
    // Inside an inline `mod tests { ... }`, `super` is the file's own module.
    let tests_at = code.find("mod tests {").unwrap_or(usize::MAX);
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(offset) = code[at..].find(['c', 's']) {
        let start = at + offset;
        at = start + 1;
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[start..];
        let (base, text_start) = if rest.starts_with("crate::") {
            (Vec::new(), start + "crate::".len())
        } else if rest.starts_with("super::") {
            let mut base = module.to_vec();
            if start > tests_at {
                base.push("tests".to_owned());
            }
            let mut cursor = start;
            while code[cursor..].starts_with("super::") {
                base.pop();
                cursor += "super::".len();
            }
            (base, cursor)
        } else {
            continue;
        };
        expand(&base, path_text(&code, text_start), &mut found);
    }
    found
}

/// Every violation of [`LAYERS`] among `files` (module path, source), and every module
/// the table does not place.
fn violations(files: &[(Vec<String>, String)]) -> Vec<String> {
    let mut problems = BTreeSet::new();
    for (module, source) in files {
        if module.is_empty() {
            continue;
        }
        let Some((layer, unit)) = place(module) else {
            problems.insert(format!(
                "module `{}` is in no layer: add it to LAYERS",
                module.join("::")
            ));
            continue;
        };
        for target in references(module, source) {
            if target.is_empty() || target.first().is_some_and(|t| t == "tests") {
                continue;
            }
            let Some((target_layer, target_unit)) = place(&target) else {
                continue;
            };
            if target_unit == unit || target_layer < layer {
                continue;
            }
            problems.insert(format!(
                "`{}` ({}) uses `{}` ({}): {}",
                module.join("::"),
                LAYERS[layer].0,
                target.join("::"),
                LAYERS[target_layer].0,
                if target_layer == layer {
                    "a sibling unit of the same layer"
                } else {
                    "a layer above it"
                }
            ));
        }
    }
    problems.into_iter().collect()
}

fn sources(dir: &Path, root: &Path, out: &mut Vec<(Vec<String>, String)>) {
    for entry in fs::read_dir(dir).expect("src is readable") {
        let path: PathBuf = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).expect("below src");
            if relative == Path::new("main.rs") {
                // The binary's entry point, not a module of the library.
                continue;
            }
            let text = fs::read_to_string(&path).expect("a source file is readable");
            out.push((module_of(relative), text));
        }
    }
}

#[test]
fn every_module_imports_only_its_own_unit_and_lower_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &root, &mut files);
    assert!(files.len() > 50, "found only {} source files", files.len());
    let problems = violations(&files);
    assert!(
        problems.is_empty(),
        "layering broken:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_check_sees_upward_sibling_and_grouped_imports() {
    let file = |module: &str, source: &str| {
        (
            module.split("::").map(str::to_owned).collect::<Vec<_>>(),
            source.to_owned(),
        )
    };
    let files = [
        // Upward, through a group.
        file(
            "audit::store",
            "use crate::{digest, agent::consumer::AuditStats};",
        ),
        // A sibling unit of the same layer.
        file("loader::fill", "fn f() { crate::audit::read::scan(); }"),
        // One subcommand using another, through `super::super`.
        file("cli::audit::query", "use super::super::policy::table;"),
        // Allowed: lower layers, own unit, helpers; paths in comments and strings.
        file(
            "cli::policy::simulate",
            "use super::load_or_report;\nuse crate::{cli::table::table, audit::replay};\n\
             // crate::agent::run\nconst S: &str = \"crate::agent\";",
        ),
        // A module the table does not place.
        file("telemetry", ""),
    ];
    let problems = violations(&files);
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(
        problems[0].starts_with(
            "`audit::store` (audit trail and kernel loader) uses `agent::consumer::AuditStats`"
        ),
        "{problems:#?}"
    );
    assert!(
        problems[1].starts_with("`cli::audit::query` (cli subcommands) uses `cli::policy::table`"),
        "{problems:#?}"
    );
    assert!(
        problems[2]
            .starts_with("`loader::fill` (audit trail and kernel loader) uses `audit::read::scan`"),
        "{problems:#?}"
    );
    assert!(
        problems[3].starts_with("module `telemetry` is in no layer"),
        "{problems:#?}"
    );
}
