//! Any line read from an audit store (by `query`, `verify`, `tail`, the forwarder or a
//! restarted writer) is a record or an error, never a panic; a record that parses chains
//! again to a line that checks, and frames as an RFC 5424 message.
#![no_main]

use enforcer::audit::{
    chain::{self, Head},
    forward,
    read::{self, Filter},
};

/// Lower-case hex, as the store writes hashes.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        let _ = chain::claimed_hash(line);
        let Ok(checked) = chain::check(line) else {
            continue;
        };
        let record = checked.record;
        let _ = read::is_reportable(&record);
        let _ = record.flow();
        let filters = [
            Filter::default(),
            Filter {
                store_records: true,
                since: Some(0),
                until: Some(i64::MAX),
                ..Filter::default()
            },
            Filter {
                segment: Some("api".into()),
                rule: Some("default-deny".into()),
                verdict: Some("deny".into()),
                addr: Some("198.18.0.1".parse().expect("an address")),
                port: Some(443),
                ..Filter::default()
            },
        ];
        for filter in &filters {
            let _ = filter.matches(&record);
        }
        let framed = forward::frame(line, &record, 1, forward::Framing::OctetCounting);
        let framed = String::from_utf8(framed).expect("a frame is text");
        let (length, message) = framed.split_once(' ').expect("octet counting");
        assert_eq!(length.parse::<usize>().ok(), Some(message.len()));
        let framed = forward::frame(line, &record, 1, forward::Framing::Newline);
        let framed = String::from_utf8(framed).expect("a frame is text");
        assert_eq!(framed.find('\n'), Some(framed.len() - 1), "one LF, at the end");

        // Chained again after any head, the record's line checks and parses back to it.
        let mut again = record.clone();
        let mut head = Head {
            sequence: record.sequence().saturating_sub(1),
            hash: checked.claimed,
        };
        let mut out = Vec::new();
        chain::append(&mut again, &mut head, &mut out);
        let out = String::from_utf8(out).expect("a record line is text");
        let mut rechecked = chain::check(out.trim_end()).expect("an appended line checks");
        assert_eq!(rechecked.claimed, rechecked.actual);
        assert_eq!(rechecked.claimed, head.hash);
        // The line carries the hash the record itself is written without.
        assert_eq!(rechecked.record.unmapped.hash.take(), Some(hex(&head.hash)));
        assert_eq!(rechecked.record, again);
    }
});
