//! The formats `enforcer audit export` writes records in, for the tools SOC teams use:
//! OCSF JSON Lines (each record exactly as `enforcer audit query --json` prints it), CSV
//! (a header of flattened OCSF field paths such as `src_endpoint.ip`, one row per record)
//! and Parquet laid out as Amazon Security Lake stores OCSF (nested objects as struct
//! columns, arrays as list columns, `time` as a timestamp in milliseconds, Snappy).
//!
//! The columns are every field a record can have ([`RECORD`]), the same for every export,
//! so files exported on different days stack into one table. A record field without a
//! column, or with a value its column cannot hold, stops the export with the field's
//! path: nothing is dropped silently. The exporter takes [`Record`]s, whatever store
//! they were read from.

use std::{
    io::{self, Write},
    sync::Arc,
};

use arrow_array::{
    ArrayRef, ListArray, RecordBatch, StructArray,
    builder::{
        BooleanBuilder, Int32Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
    },
};
use arrow_buffer::{NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_schema::{
    ArrowError, DataType, Field as ArrowField, Fields, Schema, SchemaRef, TimeUnit,
};
use parquet::{
    arrow::ArrowWriter, basic::Compression, errors::ParquetError,
    file::properties::WriterProperties,
};
use serde_json::{Map, Value};

use super::record::Record;

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One OCSF record per line, as `query --json` prints them.
    OcsfJsonl,
    /// A header of flattened field paths, one row per record (RFC 4180).
    Csv,
    /// Apache Parquet, one column per field (nested objects as struct columns).
    Parquet,
}

impl Format {
    /// The words `--format` takes.
    pub const WORDS: [&'static str; 3] = ["ocsf-jsonl", "csv", "parquet"];

    /// The word `--format` takes for it.
    pub fn word(self) -> &'static str {
        match self {
            Self::OcsfJsonl => Self::WORDS[0],
            Self::Csv => Self::WORDS[1],
            Self::Parquet => Self::WORDS[2],
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        [Self::OcsfJsonl, Self::Csv, Self::Parquet]
            .into_iter()
            .find(|format| format.word() == text)
            .ok_or_else(|| format!("`{text}` is not an export format (ocsf-jsonl, csv, parquet)"))
    }
}

/// Writes `record` as one line of OCSF JSON: what `query --json` prints and what
/// `--format ocsf-jsonl` writes.
pub fn write_json_line(out: &mut impl Write, record: &Record) -> io::Result<()> {
    serde_json::to_writer(&mut *out, record)?;
    out.write_all(b"\n")
}

/// What a field's column holds.
#[derive(Debug)]
pub enum Shape {
    /// A string.
    Text,
    /// OCSF `integer_t`: 32 bits, signed.
    Int,
    /// OCSF `long_t`: 64 bits, signed.
    Long,
    /// A boolean.
    Flag,
    /// OCSF `timestamp_t`: milliseconds since the epoch (a Parquet timestamp in UTC).
    Time,
    /// An object: a struct column (CSV: one column per field, `parent.child`).
    Object(&'static [Field]),
    /// An array: a list column (CSV: the array as JSON in one cell).
    List(&'static Self),
}

/// One field of an exported object.
#[derive(Debug)]
pub struct Field {
    /// Its key in the record's JSON.
    pub name: &'static str,
    /// What it holds.
    pub shape: Shape,
}

const fn field(name: &'static str, shape: Shape) -> Field {
    Field { name, shape }
}

use Shape::{Flag, Int, List, Long, Object, Text, Time};

const PRODUCT: &[Field] = &[
    field("name", Text),
    field("vendor_name", Text),
    field("version", Text),
];
const METADATA: &[Field] = &[
    field("version", Text),
    field("profiles", List(&Text)),
    field("product", Object(PRODUCT)),
    field("sequence", Long),
];
const DEVICE: &[Field] = &[
    field("type_id", Int),
    field("type", Text),
    field("hostname", Text),
];
const ENDPOINT: &[Field] = &[field("ip", Text), field("port", Int), field("name", Text)];
const CONNECTION_INFO: &[Field] = &[
    field("protocol_num", Int),
    field("protocol_name", Text),
    field("protocol_ver_id", Int),
    field("protocol_ver", Text),
    field("direction_id", Int),
    field("direction", Text),
    field("boundary_id", Int),
    field("boundary", Text),
];
const PROCESS: &[Field] = &[field("pid", Int), field("name", Text)];
const ACTOR: &[Field] = &[field("process", Object(PROCESS))];
const FIREWALL_RULE: &[Field] = &[field("uid", Text), field("type", Text)];
const FLOW: &[Field] = &[
    field("verdict", Text),
    field("reason", Text),
    field("rule", Text),
    field("hook", Text),
    field("src_segment", Text),
    field("dst_segment", Text),
    field("generation", Long),
    field("policy_sha256", Text),
    field("cgroup_id", Long),
    field("cgroup", Text),
    field("interface", Text),
    field("kernel_ns", Long),
];
const GAP: &[Field] = &[
    field("lost", Long),
    field("cause", Text),
    field("error", Text),
];
const FILE: &[Field] = &[
    field("number", Long),
    field("opened", Text),
    field("records", Long),
    field("first_sequence", Long),
    field("first_time", Time),
    field("last_time", Time),
    field("flows", Long),
    field("lost", Long),
];
const REMOVED: &[Field] = &[
    field("number", Long),
    field("last_sequence", Long),
    field("seal_hash", Text),
];
const EPOCH: &[Field] = &[field("index", Long), field("tag", Text)];
const AGENT: &[Field] = &[
    field("event", Text),
    field("pid", Int),
    field("version", Text),
    field("recovered", Flag),
    field("interface", Text),
    field("error", Text),
];
const ITEM_COUNTS: &[Field] = &[
    field("added", Long),
    field("removed", Long),
    field("changed", Long),
];
const DIFF: &[Field] = &[
    field("segment_pairs", Long),
    field("verdict_changes", Long),
    field("opened", Long),
    field("closed", Long),
    field("rules", Object(ITEM_COUNTS)),
    field("segments", Object(ITEM_COUNTS)),
    field("failsafes", Object(ITEM_COUNTS)),
];
const POLICY: &[Field] = &[
    field("outcome", Text),
    field("trigger", Text),
    field("generation", Long),
    field("source_sha256", Text),
    field("image_sha256", Text),
    field("bundle_version", Long),
    field("signer_key_id", Text),
    field("previous_generation", Long),
    field("diff", Object(DIFF)),
    field("segments", Long),
    field("rules", Long),
    field("error", Text),
];
const UNMAPPED: &[Field] = &[
    field("kind", Text),
    field("flow", Object(FLOW)),
    field("gap", Object(GAP)),
    field("file", Object(FILE)),
    field("removed", List(&Object(REMOVED))),
    field("epoch", Object(EPOCH)),
    field("agent", Object(AGENT)),
    field("policy", Object(POLICY)),
    field("prev", Text),
    field("hash", Text),
];

/// Every field a record can have, in the order of its JSON: the export's columns.
pub const RECORD: &[Field] = &[
    field("class_uid", Int),
    field("class_name", Text),
    field("category_uid", Int),
    field("category_name", Text),
    field("activity_id", Int),
    field("activity_name", Text),
    field("type_uid", Long),
    field("type_name", Text),
    field("severity_id", Int),
    field("severity", Text),
    field("time", Time),
    field("message", Text),
    field("metadata", Object(METADATA)),
    field("device", Object(DEVICE)),
    field("action_id", Int),
    field("action", Text),
    field("disposition_id", Int),
    field("disposition", Text),
    field("src_endpoint", Object(ENDPOINT)),
    field("dst_endpoint", Object(ENDPOINT)),
    field("connection_info", Object(CONNECTION_INFO)),
    field("actor", Object(ACTOR)),
    field("firewall_rule", Object(FIREWALL_RULE)),
    field("log_provider", Text),
    field("log_name", Text),
    field("app", Object(PRODUCT)),
    field("unmapped", Object(UNMAPPED)),
];

/// The CSV header: the path of every column, objects flattened with dots
/// (`src_endpoint.ip`, `unmapped.flow.rule`); an array is one column.
pub fn csv_columns() -> Vec<String> {
    fn add(fields: &[Field], prefix: &str, out: &mut Vec<String>) {
        for field in fields {
            let path = format!("{prefix}{}", field.name);
            match &field.shape {
                Object(children) => add(children, &format!("{path}."), out),
                _ => out.push(path),
            }
        }
    }
    let mut out = Vec::new();
    add(RECORD, "", &mut out);
    out
}

/// Where a value is in the record, kept as links so a path is written only for an error.
#[derive(Clone, Copy)]
struct Trail<'a> {
    name: &'a str,
    parent: Option<&'a Self>,
}

impl<'a> Trail<'a> {
    const ROOT: Trail<'static> = Trail {
        name: "",
        parent: None,
    };

    fn child(&'a self, name: &'a str) -> Self {
        Trail {
            name,
            parent: Some(self),
        }
    }

    fn path(&self) -> String {
        let mut names = Vec::new();
        let mut at = Some(self);
        while let Some(trail) = at {
            if !trail.name.is_empty() {
                names.push(trail.name);
            }
            at = trail.parent;
        }
        names.reverse();
        names.join(".")
    }
}

/// A field of a record the export cannot write.
#[derive(Debug, thiserror::Error)]
#[error("field `{path}` {problem}")]
pub struct FieldError {
    /// The field's path (`unmapped.flow.rule`).
    pub path: String,
    /// What is wrong with it.
    pub problem: String,
}

impl FieldError {
    fn new(trail: &Trail<'_>, problem: String) -> Self {
        Self {
            path: trail.path(),
            problem,
        }
    }

    fn wrong(trail: &Trail<'_>, shape: &Shape, value: &Value) -> Self {
        let expected = match shape {
            Text => "a string",
            Int => "a 32-bit integer",
            Long => "a 64-bit integer",
            Flag => "true or false",
            Time => "milliseconds since the epoch (64-bit)",
            Object(_) => "an object",
            List(_) => "an array",
        };
        Self::new(trail, format!("holds {value}, its column takes {expected}"))
    }
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A record the columns cannot hold.
    #[error("record {sequence}: {source}")]
    Field {
        /// The record's sequence number.
        sequence: u64,
        /// The field.
        source: FieldError,
    },
    /// The output could not be written.
    #[error("writing the export: {0}")]
    Io(#[from] io::Error),
    /// CSV.
    #[error("writing CSV: {0}")]
    Csv(#[from] csv::Error),
    /// Parquet.
    #[error("writing Parquet: {0}")]
    Parquet(#[from] ParquetError),
    /// Arrow arrays.
    #[error("building Parquet columns: {0}")]
    Arrow(#[from] ArrowError),
}

/// The fields of `object` that have no column.
fn check_keys(
    fields: &[Field],
    object: &Map<String, Value>,
    trail: &Trail<'_>,
) -> Result<(), FieldError> {
    for key in object.keys() {
        if !fields.iter().any(|field| field.name == key) {
            return Err(FieldError::new(
                &trail.child(key),
                "has no column in the export (enforcer's export columns lack it)".to_owned(),
            ));
        }
    }
    Ok(())
}

/// Rows per Arrow batch handed to the Parquet writer.
const BATCH_ROWS: usize = 8192;

/// Writes records in one format to `W`.
pub struct Exporter<W: Write + Send> {
    sink: Sink<W>,
    rows: u64,
}

enum Sink<W: Write + Send> {
    Jsonl(io::BufWriter<W>),
    Csv {
        writer: csv::Writer<W>,
        row: csv::ByteRecord,
    },
    Parquet {
        writer: ArrowWriter<W>,
        schema: SchemaRef,
        columns: Vec<Column>,
        pending: usize,
    },
}

impl<W: Write + Send> Exporter<W> {
    /// Starts an export to `out` (the CSV header is written now).
    pub fn new(format: Format, out: W) -> Result<Self, ExportError> {
        let sink = match format {
            Format::OcsfJsonl => Sink::Jsonl(io::BufWriter::with_capacity(1 << 20, out)),
            Format::Csv => {
                let mut writer = csv::WriterBuilder::new()
                    .buffer_capacity(1 << 20)
                    .from_writer(out);
                writer.write_record(csv_columns())?;
                Sink::Csv {
                    writer,
                    row: csv::ByteRecord::new(),
                }
            }
            Format::Parquet => {
                let schema = Arc::new(Schema::new(arrow_fields(RECORD)));
                let properties = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .build();
                Sink::Parquet {
                    writer: ArrowWriter::try_new(out, Arc::clone(&schema), Some(properties))?,
                    schema,
                    columns: RECORD
                        .iter()
                        .map(|field| Column::new(&field.shape))
                        .collect(),
                    pending: 0,
                }
            }
        };
        Ok(Self { sink, rows: 0 })
    }

    /// Writes one record.
    pub fn write(&mut self, record: &Record) -> Result<(), ExportError> {
        let field_error = |source| ExportError::Field {
            sequence: record.sequence(),
            source,
        };
        match &mut self.sink {
            Sink::Jsonl(out) => write_json_line(out, record)?,
            Sink::Csv { writer, row } => {
                let value = to_object(record)?;
                row.clear();
                csv_cells(RECORD, Some(&value), &Trail::ROOT, row).map_err(field_error)?;
                writer.write_byte_record(row)?;
            }
            Sink::Parquet {
                writer,
                schema,
                columns,
                pending,
            } => {
                let value = to_object(record)?;
                append_fields(RECORD, columns, Some(&value), &Trail::ROOT).map_err(field_error)?;
                *pending += 1;
                if *pending == BATCH_ROWS {
                    writer.write(&batch(schema, columns)?)?;
                    *pending = 0;
                }
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Ends the export (the Parquet footer is written now): the records written, and the
    /// output.
    pub fn finish(self) -> Result<(u64, W), ExportError> {
        let out = match self.sink {
            Sink::Jsonl(out) => out.into_inner().map_err(io::IntoInnerError::into_error)?,
            Sink::Csv { writer, .. } => writer
                .into_inner()
                .map_err(|err| ExportError::Io(err.into_error()))?,
            Sink::Parquet {
                mut writer,
                schema,
                mut columns,
                pending,
            } => {
                if pending > 0 {
                    writer.write(&batch(&schema, &mut columns)?)?;
                }
                writer.into_inner()?
            }
        };
        Ok((self.rows, out))
    }
}

/// A record as a JSON object: the fields `query --json` prints.
fn to_object(record: &Record) -> Result<Map<String, Value>, ExportError> {
    match serde_json::to_value(record).map_err(io::Error::from)? {
        Value::Object(object) => Ok(object),
        _ => Err(io::Error::other("a record is not a JSON object").into()),
    }
}

/// Appends the cells of `fields` of `object` (absent: empty cells) to `row`.
fn csv_cells(
    fields: &[Field],
    object: Option<&Map<String, Value>>,
    trail: &Trail<'_>,
    row: &mut csv::ByteRecord,
) -> Result<(), FieldError> {
    if let Some(object) = object {
        check_keys(fields, object, trail)?;
    }
    for field in fields {
        let trail = trail.child(field.name);
        let value = object.and_then(|object| object.get(field.name));
        let value = value.filter(|value| !value.is_null());
        match (&field.shape, value) {
            (Object(children), None) => csv_cells(children, None, &trail, row)?,
            (Object(children), Some(Value::Object(child))) => {
                csv_cells(children, Some(child), &trail, row)?;
            }
            (_, None) => row.push_field(b""),
            (Text, Some(Value::String(text))) => row.push_field(text.as_bytes()),
            (Int | Long | Time, Some(Value::Number(number))) if number.is_i64() => {
                row.push_field(number.to_string().as_bytes());
            }
            (Flag, Some(Value::Bool(flag))) => row.push_field(flag.to_string().as_bytes()),
            (List(_), Some(list @ Value::Array(_))) => row.push_field(list.to_string().as_bytes()),
            (shape, Some(value)) => return Err(FieldError::wrong(&trail, shape, value)),
        }
    }
    Ok(())
}

/// The Arrow fields of `fields`, each nullable (a record leaves out what it does not have).
fn arrow_fields(fields: &[Field]) -> Fields {
    fields
        .iter()
        .map(|field| ArrowField::new(field.name, data_type(&field.shape), true))
        .collect()
}

fn data_type(shape: &Shape) -> DataType {
    match shape {
        Text => DataType::Utf8,
        Int => DataType::Int32,
        Long => DataType::Int64,
        Flag => DataType::Boolean,
        Time => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        Object(fields) => DataType::Struct(arrow_fields(fields)),
        List(item) => DataType::List(Arc::new(ArrowField::new_list_field(data_type(item), true))),
    }
}

/// The rows gathered so far as one batch (the columns start over empty).
fn batch(schema: &SchemaRef, columns: &mut [Column]) -> Result<RecordBatch, ArrowError> {
    let arrays = columns
        .iter_mut()
        .map(Column::finish)
        .collect::<Result<_, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), arrays)
}

/// Appends `object`'s values of `fields` to their columns (absent: nulls).
fn append_fields(
    fields: &'static [Field],
    columns: &mut [Column],
    object: Option<&Map<String, Value>>,
    trail: &Trail<'_>,
) -> Result<(), FieldError> {
    if let Some(object) = object {
        check_keys(fields, object, trail)?;
    }
    for (field, column) in fields.iter().zip(columns) {
        let value = object.and_then(|object| object.get(field.name));
        column.append(value, &trail.child(field.name))?;
    }
    Ok(())
}

/// One column's values so far.
enum Column {
    Text(StringBuilder),
    Int(Int32Builder),
    Long(Int64Builder),
    Flag(BooleanBuilder),
    Time(TimestampMillisecondBuilder),
    Object {
        fields: &'static [Field],
        children: Vec<Self>,
        valid: NullBufferBuilder,
    },
    List {
        item: &'static Shape,
        child: Box<Self>,
        offsets: Vec<i32>,
        valid: NullBufferBuilder,
    },
}

impl Column {
    fn new(shape: &'static Shape) -> Self {
        match shape {
            Text => Self::Text(StringBuilder::new()),
            Int => Self::Int(Int32Builder::new()),
            Long => Self::Long(Int64Builder::new()),
            Flag => Self::Flag(BooleanBuilder::new()),
            Time => Self::Time(TimestampMillisecondBuilder::new().with_timezone("UTC")),
            Object(fields) => Self::Object {
                fields,
                children: fields.iter().map(|field| Self::new(&field.shape)).collect(),
                valid: NullBufferBuilder::new(BATCH_ROWS),
            },
            List(item) => Self::List {
                item,
                child: Box::new(Self::new(item)),
                offsets: vec![0],
                valid: NullBufferBuilder::new(BATCH_ROWS),
            },
        }
    }

    /// Appends `value` (absent or null: a null).
    fn append(&mut self, value: Option<&Value>, trail: &Trail<'_>) -> Result<(), FieldError> {
        let value = value.filter(|value| !value.is_null());
        let integer = |value: &Value| value.as_i64();
        match (self, value) {
            (Self::Text(builder), None) => builder.append_null(),
            (Self::Text(builder), Some(Value::String(text))) => builder.append_value(text),
            (Self::Int(builder), None) => builder.append_null(),
            (Self::Int(builder), Some(value)) => builder.append_value(
                integer(value)
                    .and_then(|number| i32::try_from(number).ok())
                    .ok_or_else(|| FieldError::wrong(trail, &Int, value))?,
            ),
            (Self::Long(builder), None) => builder.append_null(),
            (Self::Long(builder), Some(value)) => builder.append_value(
                integer(value).ok_or_else(|| FieldError::wrong(trail, &Long, value))?,
            ),
            (Self::Time(builder), None) => builder.append_null(),
            (Self::Time(builder), Some(value)) => builder.append_value(
                integer(value).ok_or_else(|| FieldError::wrong(trail, &Time, value))?,
            ),
            (Self::Flag(builder), None) => builder.append_null(),
            (Self::Flag(builder), Some(Value::Bool(flag))) => builder.append_value(*flag),
            (
                Self::Object {
                    fields,
                    children,
                    valid,
                },
                None,
            ) => {
                append_fields(fields, children, None, trail)?;
                valid.append_null();
            }
            (
                Self::Object {
                    fields,
                    children,
                    valid,
                },
                Some(Value::Object(object)),
            ) => {
                append_fields(fields, children, Some(object), trail)?;
                valid.append_non_null();
            }
            (Self::List { offsets, valid, .. }, None) => {
                offsets.push(*offsets.last().unwrap_or(&0));
                valid.append_null();
            }
            (
                Self::List {
                    child,
                    offsets,
                    valid,
                    ..
                },
                Some(Value::Array(items)),
            ) => {
                for item in items {
                    child.append(Some(item), trail)?;
                }
                let end = offsets.last().unwrap_or(&0)
                    + i32::try_from(items.len()).map_err(|_| {
                        FieldError::new(trail, format!("holds {} items", items.len()))
                    })?;
                offsets.push(end);
                valid.append_non_null();
            }
            (column, Some(value)) => {
                return Err(FieldError::wrong(trail, &column.shape(), value));
            }
        }
        Ok(())
    }

    /// The shape it holds, for errors.
    fn shape(&self) -> Shape {
        match self {
            Self::Text(_) => Text,
            Self::Int(_) => Int,
            Self::Long(_) => Long,
            Self::Flag(_) => Flag,
            Self::Time(_) => Time,
            Self::Object { fields, .. } => Object(fields),
            Self::List { item, .. } => List(item),
        }
    }

    /// The values so far as an array; the column starts over empty.
    fn finish(&mut self) -> Result<ArrayRef, ArrowError> {
        Ok(match self {
            Self::Text(builder) => Arc::new(builder.finish()),
            Self::Int(builder) => Arc::new(builder.finish()),
            Self::Long(builder) => Arc::new(builder.finish()),
            Self::Flag(builder) => Arc::new(builder.finish()),
            Self::Time(builder) => Arc::new(builder.finish()),
            Self::Object {
                fields,
                children,
                valid,
            } => {
                let arrays = children
                    .iter_mut()
                    .map(Self::finish)
                    .collect::<Result<_, _>>()?;
                Arc::new(StructArray::try_new(
                    arrow_fields(fields),
                    arrays,
                    valid.finish(),
                )?)
            }
            Self::List {
                item,
                child,
                offsets,
                valid,
            } => {
                let offsets =
                    OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(offsets, vec![0])));
                Arc::new(ListArray::try_new(
                    Arc::new(ArrowField::new_list_field(data_type(item), true)),
                    offsets,
                    child.finish()?,
                    valid.finish(),
                )?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::{
        ACTION_DENIED, Actor, AgentEvent, BOUNDARY_LOCALHOST, DISPOSITION_BLOCKED, EpochSeal,
        FileDetails, FirewallRule, Gap, Kind, PolicyEvent, Process, RemovedFile,
    };
    use crate::policy::diff::{DiffSummary, ItemCounts};

    /// A flow with every optional field set.
    fn full_flow() -> Record {
        let mut flow = Record::example_flow("deny", ("tcp", 6), 5432);
        flow.src_endpoint.as_mut().unwrap().ip = "198.18.0.7".into();
        flow.action_id = Some(ACTION_DENIED);
        flow.disposition_id = Some(DISPOSITION_BLOCKED);
        flow.connection_info.as_mut().unwrap().boundary_id = Some(BOUNDARY_LOCALHOST);
        flow.actor = Some(Actor {
            process: Process {
                pid: 4242,
                name: "curl".into(),
            },
        });
        flow.firewall_rule = Some(FirewallRule {
            uid: "api-to-db".into(),
            kind: "rule".into(),
        });
        let details = flow.unmapped.flow.as_mut().unwrap();
        details.rule = Some("api-to-db".into());
        details.policy_sha256 = "ab".repeat(32);
        details.interface = Some("eth0".into());
        flow.unmapped.prev = "00".repeat(32);
        flow.unmapped.hash = Some("cd".repeat(32));
        flow
    }

    /// One record of each kind, every optional field set.
    fn every_field() -> Vec<Record> {
        let record = |kind| Record::new(kind, 1_700_000_000_000, "host-a", "m".into());
        let mut gap = record(Kind::Gap);
        gap.unmapped.gap = Some(Gap {
            lost: 2,
            cause: "write-error".into(),
            error: Some("disk full".into()),
        });
        let mut seal = record(Kind::Seal);
        seal.unmapped.file = Some(FileDetails {
            number: 1,
            opened: Some("first".into()),
            records: Some(2),
            first_sequence: Some(1),
            first_time: Some(1_700_000_000_000),
            last_time: Some(1_700_000_000_500),
            flows: Some(1),
            lost: Some(2),
        });
        let mut retention = record(Kind::Retention);
        let removed = |number| RemovedFile {
            number,
            last_sequence: number * 10,
            seal_hash: "ef".repeat(32),
        };
        retention.unmapped.removed = Some(vec![removed(1), removed(2)]);
        let mut epoch = record(Kind::Epoch);
        epoch.unmapped.epoch = Some(EpochSeal {
            index: 3,
            tag: "01".repeat(32),
        });
        let mut agent = record(Kind::Agent);
        agent.unmapped.agent = Some(AgentEvent {
            event: "xdp-attach-failed".into(),
            pid: 77,
            version: "0.1.0".into(),
            recovered: true,
            interface: Some("eth0".into()),
            error: Some("busy".into()),
        });
        let mut policy = record(Kind::Policy);
        let counts = ItemCounts {
            added: 1,
            removed: 2,
            changed: 3,
        };
        policy.unmapped.policy = Some(PolicyEvent {
            outcome: "applied".into(),
            trigger: "sighup".into(),
            generation: 2,
            source_sha256: Some("aa".repeat(32)),
            image_sha256: Some("bb".repeat(32)),
            bundle_version: Some(3),
            signer_key_id: Some("key".into()),
            previous_generation: Some(1),
            diff: Some(DiffSummary {
                segment_pairs: 1,
                verdict_changes: 2,
                opened: 1,
                closed: 1,
                rules: counts,
                segments: counts,
                failsafes: counts,
            }),
            segments: Some(2),
            rules: Some(3),
            error: Some("none".into()),
        });
        let mut records = vec![full_flow(), gap, seal, retention, epoch, agent, policy];
        for record in &mut records {
            record.caption();
        }
        records
    }

    fn export(format: Format, records: &[Record]) -> Result<Vec<u8>, ExportError> {
        let mut exporter = Exporter::new(format, Vec::new())?;
        for record in records {
            exporter.write(record)?;
        }
        Ok(exporter.finish()?.1)
    }

    #[test]
    fn every_field_a_record_can_have_has_a_column_and_every_column_is_used() {
        let records = every_field();
        let parquet = export(Format::Parquet, &records).expect("Parquet");
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&parquet).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let rows: usize = reader.map(|batch| batch.unwrap().num_rows()).sum();
        assert_eq!(rows, records.len());
        let csv = export(Format::Csv, &records).expect("CSV");
        let mut reader = csv::Reader::from_reader(csv.as_slice());
        let header = reader.headers().unwrap().clone();
        assert_eq!(header.iter().collect::<Vec<_>>(), csv_columns());
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), records.len());
        let unused: Vec<&str> = header
            .iter()
            .enumerate()
            .filter(|(index, _)| rows.iter().all(|row| row[*index].is_empty()))
            .map(|(_, column)| column)
            .collect();
        assert!(unused.is_empty(), "columns no record fills: {unused:?}");
    }

    #[test]
    fn a_field_without_a_column_or_of_another_type_is_refused_with_its_path() {
        let record = full_flow();
        let mut extra = to_object(&record).unwrap();
        extra["unmapped"]["flow"]
            .as_object_mut()
            .unwrap()
            .insert("extra".into(), Value::from(1));
        let mut wrong = to_object(&record).unwrap();
        wrong["src_endpoint"]["port"] = Value::from("https");
        let mut big = to_object(&record).unwrap();
        big["actor"]["process"]["pid"] = Value::from(u64::from(u32::MAX));
        for (value, path, problem) in [
            (&extra, "unmapped.flow.extra", "has no column"),
            (
                &wrong,
                "src_endpoint.port",
                "its column takes a 32-bit integer",
            ),
            (
                &big,
                "actor.process.pid",
                "its column takes a 32-bit integer",
            ),
        ] {
            let mut columns: Vec<Column> = RECORD.iter().map(|f| Column::new(&f.shape)).collect();
            let parquet = append_fields(RECORD, &mut columns, Some(value), &Trail::ROOT)
                .expect_err("Parquet refuses it");
            assert_eq!(parquet.path, path);
            assert!(parquet.problem.contains(problem), "{parquet}");
            if path != "actor.process.pid" {
                let csv = csv_cells(
                    RECORD,
                    Some(value),
                    &Trail::ROOT,
                    &mut csv::ByteRecord::new(),
                )
                .expect_err("CSV refuses it");
                assert_eq!(csv.path, path);
            }
        }
        assert!(
            append_fields(
                RECORD,
                &mut RECORD
                    .iter()
                    .map(|f| Column::new(&f.shape))
                    .collect::<Vec<_>>(),
                Some(&to_object(&record).unwrap()),
                &Trail::ROOT
            )
            .is_ok()
        );
    }
}
