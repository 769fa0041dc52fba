//! What the audit store targets share: a scratch store directory, and the check that a
//! store `verify` passes is one `query` reads in full.

use std::{fs, path::PathBuf, sync::OnceLock};

use enforcer::audit::{
    read::{self, Filter},
    verify,
};

/// One empty store directory per fuzzing process, emptied again for every input.
pub fn empty_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        std::env::temp_dir().join(format!("enforcer-fuzz-store-{}", std::process::id()))
    });
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).expect("create the store directory");
    dir
}

/// Verifies the store in `dir`: a break must render; a store that verifies is one
/// `query` reads in full, every record and every flow it counted.
pub fn verify_then_query(dir: &PathBuf) {
    let summary = match verify::verify(dir, &verify::Proof::default()) {
        Ok(Ok(summary)) => summary,
        Ok(Err(broken)) => {
            let _ = broken.to_string();
            return;
        }
        Err(_) => return,
    };
    let filter = Filter {
        store_records: true,
        ..Filter::default()
    };
    let (mut records, mut flows) = (0, 0);
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
