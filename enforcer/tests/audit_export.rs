//! `enforcer audit export` over a store written through the library: for each filter, the
//! OCSF JSON Lines are byte for byte what `query --json` prints, and the CSV rows and the
//! Parquet rows (read back with the csv and parquet crates) hold, field by field, the same
//! records: same count, same values, a missing optional field empty (CSV) or null
//! (Parquet). Parquet keeps OCSF's nesting as struct columns and `time` as a timestamp in
//! milliseconds. An export never replaces a file without `--force`, leaves no file when it
//! fails, and stops with the error when its output cannot be written.

mod support;

use std::path::Path;

use arrow_array::{
    Array, RecordBatch,
    cast::AsArray as _,
    types::{Int32Type, Int64Type, TimestampMillisecondType},
};
use arrow_schema::{DataType, TimeUnit};
use enforcer::audit::record::{AgentEvent, Gap, Kind, Record, now_ms};
use enforcer::audit::store::Store;
use parquet::{
    arrow::arrow_reader::ParquetRecordBatchReaderBuilder,
    basic::{LogicalType, TimeUnit as ParquetTimeUnit},
};
use serde_json::{Map, Value};
use support::{End, enforcer, flow, settings, write_store};

/// Ten minutes, in milliseconds: the spacing of the store's records.
const STEP_MS: i64 = 600_000;

/// A store of twelve flows ten minutes apart from `start` (rules `api-to-db`,
/// `default-deny`, `api-to-audit` in turn; one without a process and a source address, one
/// over IPv6, one whose message needs CSV quoting), a gap and an agent start, each written
/// at its time, in files of about 4 kB. Returns `start`.
fn store(dir: &Path) -> i64 {
    let start = now_ms() - 3 * 3_600_000;
    let api = End {
        segment: "api",
        ip: "198.18.0.7",
        port: 40_000,
    };
    let db = End {
        segment: "db",
        ip: "198.18.7.2",
        port: 5432,
    };
    let mut records: Vec<Record> = (0..12)
        .map(|i| {
            let by = ["api-to-db", "default-deny", "api-to-audit"][i % 3];
            let verdict = if by == "default-deny" {
                "deny"
            } else {
                "allow"
            };
            flow(verdict, by, &api, &db, start + STEP_MS * i as i64)
        })
        .collect();
    // Missing optional fields: no process, no source address.
    records[3].actor = None;
    records[3].src_endpoint.as_mut().unwrap().ip.clear();
    records[4].src_endpoint.as_mut().unwrap().ip = "2001:db8::7".into();
    records[4].dst_endpoint.as_mut().unwrap().ip = "2001:db8::2".into();
    records[6].message = "said \"no\", then\nleft".into();
    let mut gap = Record::new(
        Kind::Gap,
        start + STEP_MS * 5 + 1,
        "host-a",
        "3 events lost (ring-full)".into(),
    );
    gap.unmapped.gap = Some(Gap {
        lost: 3,
        cause: "ring-full".into(),
        error: None,
    });
    let mut agent = Record::new(
        Kind::Agent,
        start + STEP_MS * 7 + 1,
        "host-a",
        "agent started".into(),
    );
    agent.unmapped.agent = Some(AgentEvent {
        event: "started".into(),
        pid: 77,
        version: "0.1.0".into(),
        recovered: true,
        interface: None,
        error: None,
    });
    records.push(gap);
    records.push(agent);
    records.sort_by_key(|record| record.time);
    // Written as the agent writes: each record when it happens, in small files.
    let mut store =
        Store::open(settings(dir, 1_000), "host-a", start - 1_000, None).expect("open the store");
    let end = start + STEP_MS * 12;
    for record in records {
        let time = record.time;
        store.write(&mut [record], time).expect("write");
    }
    store.close(end).expect("seal");
    start
}

/// `enforcer ARGS`, which must succeed: its standard output.
fn run_ok(args: &[String]) -> Vec<u8> {
    let output = enforcer(args);
    assert!(
        output.status.success(),
        "enforcer {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// `audit SUBCOMMAND --dir DIR FILTERS... EXTRA...`.
fn audit_args(subcommand: &str, dir: &Path, filters: &[String], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["audit", subcommand, "--dir", dir.to_str().unwrap()]
        .map(str::to_owned)
        .to_vec();
    args.extend_from_slice(filters);
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    args
}

/// The path of the one column that holds an object as JSON text.
const SUMMARY: &str = "unmapped.file.summary";

/// The leaves of a record's JSON as CSV cells, by flattened path: objects flattened with
/// dots (a seal's summary as its JSON), an array as its JSON, a string as itself, a
/// number or a boolean as JSON writes it.
fn csv_cells(value: &Value, prefix: &str, out: &mut Map<String, Value>) {
    for (key, value) in value.as_object().expect("an object") {
        let path = format!("{prefix}{key}");
        match value {
            // A seal's summary has data for keys: one column of its JSON text.
            Value::Object(_) if path == SUMMARY => {
                out.insert(path, Value::from(value.to_string()));
            }
            Value::Object(_) => csv_cells(value, &format!("{path}."), out),
            Value::String(text) => {
                out.insert(path, Value::from(text.clone()));
            }
            other => {
                out.insert(path, Value::from(other.to_string()));
            }
        }
    }
}

/// Row `row` of a Parquet column as JSON: a struct is an object without its null fields,
/// a list an array, a timestamp its milliseconds; `None` for a null.
fn parquet_value(array: &dyn Array, row: usize) -> Option<Value> {
    if array.is_null(row) {
        return None;
    }
    Some(match array.data_type() {
        DataType::Utf8 => Value::from(array.as_string::<i32>().value(row)),
        DataType::Int32 => Value::from(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => Value::from(array.as_primitive::<Int64Type>().value(row)),
        DataType::Boolean => Value::from(array.as_boolean().value(row)),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            Value::from(array.as_primitive::<TimestampMillisecondType>().value(row))
        }
        DataType::Struct(fields) => {
            let columns = array.as_struct();
            Value::Object(
                fields
                    .iter()
                    .zip(columns.columns())
                    .filter_map(|(field, column)| {
                        parquet_value(column.as_ref(), row).map(|v| (field.name().clone(), v))
                    })
                    .collect(),
            )
        }
        DataType::List(_) => {
            let items = array.as_list::<i32>().value(row);
            Value::Array(
                (0..items.len())
                    .map(|i| parquet_value(items.as_ref(), i).unwrap_or(Value::Null))
                    .collect(),
            )
        }
        other => panic!("a column of type {other} the export does not write"),
    })
}

/// The records of a Parquet file as JSON, after checking the layout Security Lake uses:
/// `time` an INT64 timestamp in milliseconds (UTC), the OCSF objects struct columns.
fn parquet_records(path: &Path) -> Vec<Value> {
    let file = std::fs::File::open(path).expect("open the Parquet file");
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).expect("a Parquet file");
    let descriptor = builder.parquet_schema();
    let time = descriptor
        .columns()
        .iter()
        .find(|column| column.path().string() == "time")
        .expect("a time column");
    assert!(
        matches!(
            time.logical_type_ref(),
            Some(LogicalType::Timestamp(timestamp))
                if timestamp.is_adjusted_to_u_t_c && timestamp.unit == ParquetTimeUnit::MILLIS
        ),
        "time is {:?}",
        time.logical_type_ref()
    );
    assert_eq!(time.physical_type(), parquet::basic::Type::INT64);
    assert!(
        descriptor
            .columns()
            .iter()
            .any(|column| column.path().string() == "src_endpoint.ip"),
        "src_endpoint is a struct column"
    );
    let schema = builder.schema().clone();
    assert!(matches!(
        schema.field_with_name("unmapped").unwrap().data_type(),
        DataType::Struct(_)
    ));
    let batches: Vec<RecordBatch> = builder
        .build()
        .expect("a reader")
        .collect::<Result<_, _>>()
        .expect("read the batches");
    let mut records = Vec::new();
    for batch in &batches {
        let rows = batch.num_rows();
        let whole = arrow_array::StructArray::from(batch.clone());
        records.extend((0..rows).map(|row| {
            let mut record = parquet_value(&whole, row).expect("a row");
            // A seal's summary is its JSON text in one string column.
            if let Some(summary) = record.pointer_mut("/unmapped/file/summary") {
                *summary = serde_json::from_str(summary.as_str().expect("summary text"))
                    .expect("summary JSON");
            }
            record
        }));
    }
    records
}

/// The CSV file's rows, each as path → cell, checking that the header names every field
/// of every record once.
fn csv_rows(path: &Path, records: &[Value]) -> Vec<Map<String, Value>> {
    let mut reader = csv::Reader::from_path(path).expect("open the CSV file");
    let header: Vec<String> = reader
        .headers()
        .expect("a header")
        .iter()
        .map(str::to_owned)
        .collect();
    let mut unique = header.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        header.len(),
        "a column named twice: {header:?}"
    );
    for record in records {
        let mut cells = Map::new();
        csv_cells(record, "", &mut cells);
        for path in cells.keys() {
            assert!(header.contains(path), "no column {path} in {header:?}");
        }
    }
    reader
        .records()
        .map(|row| {
            let row = row.expect("a CSV row");
            assert_eq!(row.len(), header.len());
            header
                .iter()
                .zip(row.iter())
                .map(|(column, cell)| (column.clone(), Value::from(cell)))
                .collect()
        })
        .collect()
}

/// For one filter: the three formats against `query --json`.
fn exports_equal_the_query(dir: &Path, out: &Path, filters: &[String]) -> usize {
    let queried = run_ok(&audit_args("query", dir, filters, &["--json"]));
    let records: Vec<Value> = String::from_utf8(queried.clone())
        .expect("UTF-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON record"))
        .collect();
    let file = |format: &str| {
        let path = out.join(format!("export.{format}"));
        let summary = run_ok(&audit_args(
            "export",
            dir,
            filters,
            &[
                "--format",
                format,
                "--output",
                path.to_str().unwrap(),
                "--force",
                "--json",
            ],
        ));
        let summary: Value = serde_json::from_slice(&summary).expect("a JSON summary");
        assert_eq!(summary["records"], records.len(), "{filters:?} {format}");
        path
    };
    // OCSF JSON Lines: byte for byte, in a file and on standard output.
    assert_eq!(
        std::fs::read(file("ocsf-jsonl")).unwrap(),
        queried,
        "{filters:?}"
    );
    assert_eq!(
        run_ok(&audit_args(
            "export",
            dir,
            filters,
            &["--format", "ocsf-jsonl"]
        )),
        queried,
        "{filters:?}"
    );
    // CSV: each cell is the record's field, empty where the record has none.
    let rows = csv_rows(&file("csv"), &records);
    assert_eq!(rows.len(), records.len(), "{filters:?} csv");
    for (row, record) in rows.iter().zip(&records) {
        let mut cells = Map::new();
        csv_cells(record, "", &mut cells);
        for (column, cell) in row {
            let want = cells.get(column).cloned().unwrap_or(Value::from(""));
            if column == SUMMARY && !want.as_str().is_some_and(str::is_empty) {
                // JSON text: the same object, whatever the order of its keys.
                let parse = |text: &Value| -> Value {
                    serde_json::from_str(text.as_str().expect("text")).expect("summary JSON")
                };
                assert_eq!(
                    parse(cell),
                    parse(&want),
                    "{filters:?} csv {column} of {record}"
                );
                continue;
            }
            assert_eq!(cell, &want, "{filters:?} csv column {column} of {record}");
        }
    }
    let stdout_csv = run_ok(&audit_args("export", dir, filters, &["--format", "csv"]));
    assert_eq!(
        stdout_csv,
        std::fs::read(out.join("export.csv")).unwrap(),
        "{filters:?}: csv on standard output"
    );
    // Parquet: each row read back is the record.
    let parquet = parquet_records(&file("parquet"));
    assert_eq!(parquet.len(), records.len(), "{filters:?} parquet");
    for (row, record) in parquet.iter().zip(&records) {
        assert_eq!(row, record, "{filters:?} parquet");
    }
    records.len()
}

#[test]
fn export_round_trip_csv_and_parquet_hold_what_query_json_prints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit");
    let start = store(&audit);
    let files = enforcer::audit::read::segments(&audit).unwrap().len();
    assert!(files > 2, "{files} files");
    let at_offset = jiff::Timestamp::from_millisecond(start + STEP_MS * 3)
        .unwrap()
        .display_with_offset(jiff::tz::offset(2))
        .to_string();
    assert!(at_offset.ends_with("+02:00"), "{at_offset}");
    let until = jiff::Timestamp::from_millisecond(start + STEP_MS * 8)
        .unwrap()
        .to_string();
    let cases: Vec<(Vec<&str>, usize)> = vec![
        // Flows, the gap and the agent start.
        (vec![], 14),
        (vec!["--rule", "api-to-db"], 4),
        // Flows 3..=7, the gap and the agent start (RFC 3339 with an offset).
        (vec!["--since", &at_offset, "--until", &until], 7),
        (vec!["--since", "4h", "--verdict", "deny"], 4),
        // The seals: the store's own file details (times, counts).
        (vec!["--kind", "seal"], files),
    ];
    for (filters, want) in cases {
        let filters: Vec<String> = filters.into_iter().map(str::to_owned).collect();
        assert_eq!(
            exports_equal_the_query(&audit, dir.path(), &filters),
            want,
            "{filters:?}"
        );
    }
}

#[test]
fn an_export_replaces_a_file_only_with_force_and_leaves_none_when_it_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit");
    let api = End {
        segment: "api",
        ip: "198.18.0.7",
        port: 40_000,
    };
    let db = End {
        segment: "db",
        ip: "198.18.7.2",
        port: 5432,
    };
    write_store(
        &audit,
        vec![
            flow("allow", "api-to-db", &api, &db, now_ms()),
            flow("deny", "default-deny", &api, &db, now_ms()),
        ],
    );
    let out = dir.path().join("flows.csv");
    std::fs::write(&out, "keep me\n").unwrap();
    let export = |extra: &[&str]| {
        enforcer(&audit_args(
            "export",
            &audit,
            &[],
            &[&["--format", "csv", "-o", out.to_str().unwrap()], extra].concat(),
        ))
    };
    let refused = export(&[]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(out.to_str().unwrap()) && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep me\n");
    let replaced = export(&["--force"]);
    assert!(replaced.status.success(), "{replaced:?}");
    let text = String::from_utf8_lossy(&replaced.stdout);
    assert!(text.contains("2 records written to"), "{text}");
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .starts_with("class_uid,class_name,")
    );
    // A rule no flow names: an error with the closest name, and no file.
    let missing = dir.path().join("none.parquet");
    let typo = enforcer(&audit_args(
        "export",
        &audit,
        &["--rule".into(), "api-to-dbb".into()],
        &["--format", "parquet", "-o", missing.to_str().unwrap()],
    ));
    assert_eq!(typo.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&typo.stderr);
    assert!(stderr.contains("did you mean `api-to-db`?"), "{stderr}");
    assert!(
        !missing.exists(),
        "a failed export left {}",
        missing.display()
    );
    // A full disk stops the export with the error, as an exit code.
    let full = std::process::Command::new(env!("CARGO_BIN_EXE_enforcer"))
        .args(audit_args("export", &audit, &[], &["--format", "csv"]))
        .stdout(
            std::fs::File::options()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        )
        .output()
        .expect("run enforcer");
    assert_eq!(full.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert!(stderr.contains("No space left on device"), "{stderr}");
    // Parquet is written to a file only.
    let piped = enforcer(&audit_args("export", &audit, &[], &["--format", "parquet"]));
    assert_eq!(piped.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(stderr.contains("--output"), "{stderr}");
}
