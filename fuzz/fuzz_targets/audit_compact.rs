//! Any bytes as a compact segment file (`audit-00000001.bin`) are records or damage named
//! by `verify`, never a panic: the decoder, the seal reader and the record reader take
//! them apart, and a file `verify` passes is one `query` and `stats`' reader read in full.
#![no_main]

use std::fs;

use enforcer::audit::{
    compact::{self, Decoder},
    files,
};

#[path = "common/store.rs"]
mod store;

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

    let dir = store::empty_dir();
    fs::write(dir.join(files::name_in(1, files::Format::Compact)), data)
        .expect("write the segment");
    let segment = &files::segments(dir).expect("list the store")[0];
    let _ = files::seal_of(segment);
    let _ = files::read_records(segment, |_| true);
    store::verify_then_query(dir);
});
