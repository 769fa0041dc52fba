//! Any bytes as a compact segment file (`audit-00000001.bin`) are records or damage named
//! by `verify`, never a panic: the decoder, the seal reader and the record reader take
//! them apart, and a file `verify` passes is one `query` and `stats`' reader read in full.
#![no_main]

use std::{fs, path::PathBuf, sync::OnceLock};

use enforcer::audit::{
    compact::{self, Decoder},
    files,
    read::{self, Filter},
    verify,
};

/// One directory per fuzzing process, emptied for every input.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        std::env::temp_dir().join(format!("enforcer-fuzz-compact-{}", std::process::id()))
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The decoder alone, fed whole and from the file's start.
    let _ = Decoder::default().read(data, 0, |entry| {
        let _ = entry.record();
        if let Some(flow) = entry.flow() {
            let _ = (flow.segments(), flow.rule(), flow.protocol(), flow.source());
        }
        true
    });
    if let Some((_, batch)) = compact::last_batch(data) {
        let _ = compact::last_json_record(batch);
    }

    let dir = dir();
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).expect("create the store directory");
    let name = files::name_in(1, files::Format::Compact);
    fs::write(dir.join(name), data).expect("write the segment");
    let segment = &files::segments(dir).expect("list the store")[0];
    let _ = files::seal_of(segment);
    let _ = files::read_records(segment, |_| true);
    let Ok(Ok(summary)) = verify::verify(dir, &verify::Proof::default()) else {
        return;
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
    assert_eq!(records, summary.records, "query reads every verified record");
    assert_eq!(flows, summary.flows);
});
