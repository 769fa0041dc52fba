//! Any store directory is verified or broken at a named place, never a panic; a store
//! `verify` passes is one `query` reads in full. The input is split at NUL bytes: the
//! first part is `HEAD` (none when empty), the others are JSON Lines segment files from
//! `audit-00000001.jsonl` on (`audit_compact` fuzzes the compact files, which hold NULs).
#![no_main]

use std::{fs, path::PathBuf, sync::OnceLock};

use enforcer::audit::{
    files,
    read::{self, Filter},
    verify,
};

/// One directory per fuzzing process, emptied for every input.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        std::env::temp_dir().join(format!("enforcer-fuzz-verify-{}", std::process::id()))
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = dir();
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).expect("create the store directory");
    let mut parts = data.split(|byte| *byte == 0);
    let head = parts.next().unwrap_or_default();
    if !head.is_empty() {
        fs::write(dir.join(files::HEAD_FILE), head).expect("write HEAD");
    }
    for (number, part) in (1..).zip(parts) {
        let name = files::name_in(number, files::Format::Lines);
        fs::write(dir.join(name), part).expect("write a segment");
    }
    let Ok(outcome) = verify::verify(dir, &verify::Proof::default()) else {
        return;
    };
    match outcome {
        Ok(summary) => {
            let filter = Filter {
                store_records: true,
                ..Filter::default()
            };
            let mut records = 0;
            let mut flows = 0;
            read::scan(
                dir,
                &filter,
                |_| {},
                |record| {
                    records += 1;
                    flows += u64::from(record.flow().is_some());
                    true
                },
            )
            .expect("a verified store reads");
            assert_eq!(
                records, summary.records,
                "query reads every verified record"
            );
            assert_eq!(flows, summary.flows);
        }
        Err(broken) => {
            let _ = broken.to_string();
        }
    }
});
