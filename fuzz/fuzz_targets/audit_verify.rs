//! Any store directory is verified or broken at a named place, never a panic; a store
//! `verify` passes is one `query` reads in full. The input is split at NUL bytes: the
//! first part is `HEAD` (none when empty), the others are JSON Lines segment files from
//! `audit-00000001.jsonl` on (`audit_compact` fuzzes the compact files, which hold NULs).
#![no_main]

use std::fs;

use enforcer::audit::files;

#[path = "common/store.rs"]
mod store;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = store::empty_dir();
    let mut parts = data.split(|byte| *byte == 0);
    let head = parts.next().unwrap_or_default();
    if !head.is_empty() {
        fs::write(dir.join(files::HEAD_FILE), head).expect("write HEAD");
    }
    for (number, part) in (1..).zip(parts) {
        let name = files::name_in(number, files::Format::Lines);
        fs::write(dir.join(name), part).expect("write a segment");
    }
    store::verify_then_query(dir);
});
