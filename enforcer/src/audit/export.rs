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
    Array, ArrayRef, ListArray, RecordBatch, StructArray,
    builder::{
        BooleanBuilder, Int32Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
    },
    cast::AsArray as _,
    types::{Int32Type, Int64Type, TimestampMillisecondType},
};
use arrow_buffer::{NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_schema::{
    ArrowError, DataType, Field as ArrowField, Fields, Schema, SchemaRef, TimeUnit,
};
use parquet::{
    arrow::ArrowWriter, basic::Compression, errors::ParquetError,
    file::properties::WriterProperties,
};
use serde_json::Value;

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
    /// An object whose keys are data, not fields (a seal's summary: segment names and
    /// their counts): its JSON text in a string column.
    Json,
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

use Shape::{Flag, Int, Json, List, Long, Object, Text, Time};

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
    field("fold", Text),
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
    field("summary", Json),
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
    field("count", Long),
    field("start_time", Time),
    field("end_time", Time),
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

    /// A value of another type than its column's.
    fn wrong(trail: &Trail<'_>, shape: &Shape, found: impl std::fmt::Display) -> Self {
        let expected = match shape {
            Text => "a string",
            Int => "a 32-bit integer",
            Long => "a 64-bit integer",
            Flag => "true or false",
            Time => "milliseconds since the epoch (64-bit)",
            Object(_) => "an object",
            List(_) => "an array",
            Json => "an object (kept as its JSON text)",
        };
        Self::new(trail, format!("holds {found}, its column takes {expected}"))
    }
}

impl serde::ser::Error for FieldError {
    fn custom<T: std::fmt::Display>(message: T) -> Self {
        Self {
            path: String::new(),
            problem: message.to_string(),
        }
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
    #[error("building the columns: {0}")]
    Arrow(#[from] ArrowError),
}

/// Rows gathered in columns before they are written (a Parquet batch, CSV rows).
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
        columns: Column,
        pending: usize,
    },
    Parquet {
        writer: ArrowWriter<W>,
        schema: SchemaRef,
        columns: Column,
        pending: usize,
    },
}

impl<W: Write + Send> Exporter<W> {
    /// Starts an export to `out` (the CSV header is written now).
    pub fn new(format: Format, out: W) -> Result<Self, ExportError> {
        let columns = Column::new(&RECORD_SHAPE);
        let sink = match format {
            Format::OcsfJsonl => Sink::Jsonl(io::BufWriter::with_capacity(1 << 20, out)),
            Format::Csv => {
                let mut writer = csv::WriterBuilder::new()
                    .buffer_capacity(1 << 20)
                    .from_writer(out);
                writer.write_record(csv_columns())?;
                Sink::Csv {
                    writer,
                    columns,
                    pending: 0,
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
                    columns,
                    pending: 0,
                }
            }
        };
        Ok(Self { sink, rows: 0 })
    }

    /// Writes one record.
    pub fn write(&mut self, record: &Record) -> Result<(), ExportError> {
        match &mut self.sink {
            Sink::Jsonl(out) => write_json_line(out, record)?,
            Sink::Csv {
                writer,
                columns,
                pending,
            } => {
                append(columns, record, record.sequence())?;
                *pending += 1;
                if *pending == BATCH_ROWS {
                    write_csv_rows(writer, &columns.finish_fields()?)?;
                    *pending = 0;
                }
            }
            Sink::Parquet {
                writer,
                schema,
                columns,
                pending,
            } => {
                append(columns, record, record.sequence())?;
                *pending += 1;
                if *pending == BATCH_ROWS {
                    let batch = RecordBatch::try_new(Arc::clone(schema), columns.finish_fields()?)?;
                    writer.write(&batch)?;
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
            Sink::Csv {
                mut writer,
                mut columns,
                pending,
            } => {
                if pending > 0 {
                    write_csv_rows(&mut writer, &columns.finish_fields()?)?;
                }
                writer
                    .into_inner()
                    .map_err(|err| ExportError::Io(err.into_error()))?
            }
            Sink::Parquet {
                mut writer,
                schema,
                mut columns,
                pending,
            } => {
                if pending > 0 {
                    writer.write(&RecordBatch::try_new(schema, columns.finish_fields()?)?)?;
                }
                writer.into_inner()?
            }
        };
        Ok((self.rows, out))
    }
}

/// The whole record as one object.
static RECORD_SHAPE: Shape = Object(RECORD);

/// Appends `value`, which serializes as a record does, to the record's columns; an error
/// names the record by `sequence`.
fn append(
    columns: &mut Column,
    value: &impl serde::Serialize,
    sequence: u64,
) -> Result<(), ExportError> {
    value
        .serialize(IntoColumn {
            column: columns,
            trail: Trail::ROOT,
        })
        .map_err(|source| ExportError::Field { sequence, source })
}

/// Writes the rows of `arrays` (the record's top-level columns) as CSV: each leaf column
/// (objects flattened) one cell.
fn write_csv_rows<W: Write>(
    writer: &mut csv::Writer<W>,
    arrays: &[ArrayRef],
) -> Result<(), ExportError> {
    fn leaves<'a>(array: &'a ArrayRef, out: &mut Vec<&'a dyn Array>) {
        match array.as_struct_opt() {
            Some(object) => object.columns().iter().for_each(|child| leaves(child, out)),
            None => out.push(array.as_ref()),
        }
    }
    let mut cells = Vec::new();
    arrays.iter().for_each(|array| leaves(array, &mut cells));
    let rows = arrays.first().map_or(0, |array| array.len());
    let mut row = csv::ByteRecord::new();
    let mut text = String::new();
    for index in 0..rows {
        row.clear();
        for cell in &cells {
            text.clear();
            write_cell(*cell, index, &mut text);
            row.push_field(text.as_bytes());
        }
        writer.write_byte_record(&row)?;
    }
    Ok(())
}

/// One CSV cell: empty for a null, a string as itself, a number or a boolean as JSON
/// writes it, an array as its JSON.
fn write_cell(array: &dyn Array, index: usize, out: &mut String) {
    use std::fmt::Write as _;
    if array.is_null(index) {
        return;
    }
    // Writing to a String cannot fail.
    let _ = match array.data_type() {
        DataType::Utf8 => {
            out.push_str(array.as_string::<i32>().value(index));
            Ok(())
        }
        DataType::Int32 => write!(out, "{}", array.as_primitive::<Int32Type>().value(index)),
        DataType::Int64 => write!(out, "{}", array.as_primitive::<Int64Type>().value(index)),
        DataType::Timestamp(..) => write!(
            out,
            "{}",
            array
                .as_primitive::<TimestampMillisecondType>()
                .value(index)
        ),
        DataType::Boolean => write!(out, "{}", array.as_boolean().value(index)),
        _ => write!(out, "{}", json_of(array, index)),
    };
}

/// A value of a column as JSON: an object without its null fields, a list as an array.
fn json_of(array: &dyn Array, index: usize) -> Value {
    if array.is_null(index) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Struct(fields) => Value::Object(
            fields
                .iter()
                .zip(array.as_struct().columns())
                .filter(|(_, column)| !column.is_null(index))
                .map(|(field, column)| (field.name().clone(), json_of(column.as_ref(), index)))
                .collect(),
        ),
        DataType::List(_) => {
            let items = array.as_list::<i32>().value(index);
            Value::Array(
                (0..items.len())
                    .map(|item| json_of(items.as_ref(), item))
                    .collect(),
            )
        }
        DataType::Utf8 => Value::from(array.as_string::<i32>().value(index)),
        DataType::Boolean => Value::from(array.as_boolean().value(index)),
        _ => {
            let mut text = String::new();
            write_cell(array, index, &mut text);
            text.parse().map_or(Value::Null, Value::Number)
        }
    }
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
        Json => DataType::Utf8,
    }
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
            Text | Json => Self::Text(StringBuilder::new()),
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

    /// Appends a null (an object: null in each of its fields too).
    fn append_null(&mut self) {
        match self {
            Self::Text(builder) => builder.append_null(),
            Self::Int(builder) => builder.append_null(),
            Self::Long(builder) => builder.append_null(),
            Self::Flag(builder) => builder.append_null(),
            Self::Time(builder) => builder.append_null(),
            Self::Object {
                children, valid, ..
            } => {
                children.iter_mut().for_each(Self::append_null);
                valid.append_null();
            }
            Self::List { offsets, valid, .. } => {
                offsets.push(*offsets.last().unwrap_or(&0));
                valid.append_null();
            }
        }
    }

    /// Appends an integer to an integer or time column.
    fn append_integer(&mut self, number: i128, trail: &Trail<'_>) -> Result<(), FieldError> {
        match self {
            Self::Int(builder) => builder.append_value(
                i32::try_from(number).map_err(|_| FieldError::wrong(trail, &Int, number))?,
            ),
            Self::Long(builder) => builder.append_value(
                i64::try_from(number).map_err(|_| FieldError::wrong(trail, &Long, number))?,
            ),
            Self::Time(builder) => builder.append_value(
                i64::try_from(number).map_err(|_| FieldError::wrong(trail, &Time, number))?,
            ),
            other => return Err(FieldError::wrong(trail, &other.shape(), number)),
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

    /// An object's fields as arrays (the record's top-level columns); the columns start
    /// over empty.
    fn finish_fields(&mut self) -> Result<Vec<ArrayRef>, ArrowError> {
        match self {
            Self::Object {
                children, valid, ..
            } => {
                valid.finish();
                children.iter_mut().map(Self::finish).collect()
            }
            _ => Ok(vec![self.finish()?]),
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

/// A serde serializer that appends one value to one column, so a record goes into the
/// columns without an intermediate JSON tree. A type its column does not take, or an
/// object key without a column, is a [`FieldError`] naming the field.
struct IntoColumn<'c, 't> {
    column: &'c mut Column,
    trail: Trail<'t>,
}

impl IntoColumn<'_, '_> {
    fn wrong(self, found: impl std::fmt::Display) -> FieldError {
        FieldError::wrong(&self.trail, &self.column.shape(), found)
    }
}

/// Fills one object column field by field; fields never given are nulls.
struct IntoObject<'c, 't> {
    fields: &'static [Field],
    children: &'c mut [Column],
    valid: &'c mut NullBufferBuilder,
    given: u64,
    trail: Trail<'t>,
    /// A map's key waiting for its value.
    key: Option<String>,
}

impl IntoObject<'_, '_> {
    fn field(
        &mut self,
        key: &str,
        value: &(impl serde::Serialize + ?Sized),
    ) -> Result<(), FieldError> {
        let Some(index) = self.fields.iter().position(|field| field.name == key) else {
            return Err(FieldError::new(
                &self.trail.child(key),
                "has no column in the export (enforcer's export columns lack it)".to_owned(),
            ));
        };
        self.given |= 1 << index;
        if let (Json, Column::Text(builder)) =
            (&self.fields[index].shape, &mut self.children[index])
        {
            let text = serde_json::to_string(value).map_err(|err| {
                FieldError::new(&self.trail.child(key), format!("cannot be written: {err}"))
            })?;
            builder.append_value(text);
            return Ok(());
        }
        value.serialize(IntoColumn {
            column: &mut self.children[index],
            trail: self.trail.child(self.fields[index].name),
        })
    }

    fn end(self) -> Result<(), FieldError> {
        for (index, child) in self.children.iter_mut().enumerate() {
            if self.given & (1 << index) == 0 {
                child.append_null();
            }
        }
        self.valid.append_non_null();
        Ok(())
    }
}

/// Fills one list column item by item.
struct IntoList<'c, 't> {
    child: &'c mut Column,
    offsets: &'c mut Vec<i32>,
    valid: &'c mut NullBufferBuilder,
    items: i32,
    trail: Trail<'t>,
}

impl serde::ser::SerializeSeq for IntoList<'_, '_> {
    type Ok = ();
    type Error = FieldError;

    fn serialize_element<T: serde::Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> Result<(), FieldError> {
        self.items += 1;
        value.serialize(IntoColumn {
            column: &mut *self.child,
            trail: self.trail,
        })
    }

    fn end(self) -> Result<(), FieldError> {
        let start = *self.offsets.last().unwrap_or(&0);
        self.offsets.push(start + self.items);
        self.valid.append_non_null();
        Ok(())
    }
}

impl serde::ser::SerializeStruct for IntoObject<'_, '_> {
    type Ok = ();
    type Error = FieldError;

    fn serialize_field<T: serde::Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), FieldError> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), FieldError> {
        Self::end(self)
    }
}

impl serde::ser::SerializeMap for IntoObject<'_, '_> {
    type Ok = ();
    type Error = FieldError;

    fn serialize_key<T: serde::Serialize + ?Sized>(&mut self, key: &T) -> Result<(), FieldError> {
        match serde_json::to_value(key) {
            Ok(Value::String(key)) => {
                self.key = Some(key);
                Ok(())
            }
            _ => Err(FieldError::new(
                &self.trail,
                "has a key that is not a string".to_owned(),
            )),
        }
    }

    fn serialize_value<T: serde::Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> Result<(), FieldError> {
        let key = self.key.take().unwrap_or_default();
        self.field(&key, value)
    }

    fn end(self) -> Result<(), FieldError> {
        Self::end(self)
    }
}

impl<'c, 't> serde::Serializer for IntoColumn<'c, 't> {
    type Ok = ();
    type Error = FieldError;
    type SerializeSeq = IntoList<'c, 't>;
    type SerializeTuple = serde::ser::Impossible<(), FieldError>;
    type SerializeTupleStruct = serde::ser::Impossible<(), FieldError>;
    type SerializeTupleVariant = serde::ser::Impossible<(), FieldError>;
    type SerializeMap = IntoObject<'c, 't>;
    type SerializeStruct = IntoObject<'c, 't>;
    type SerializeStructVariant = serde::ser::Impossible<(), FieldError>;

    fn serialize_bool(self, value: bool) -> Result<(), FieldError> {
        match self.column {
            Column::Flag(builder) => {
                builder.append_value(value);
                Ok(())
            }
            _ => Err(self.wrong(value)),
        }
    }

    fn serialize_i8(self, value: i8) -> Result<(), FieldError> {
        self.serialize_i64(value.into())
    }

    fn serialize_i16(self, value: i16) -> Result<(), FieldError> {
        self.serialize_i64(value.into())
    }

    fn serialize_i32(self, value: i32) -> Result<(), FieldError> {
        self.serialize_i64(value.into())
    }

    fn serialize_i64(self, value: i64) -> Result<(), FieldError> {
        self.column.append_integer(value.into(), &self.trail)
    }

    fn serialize_u8(self, value: u8) -> Result<(), FieldError> {
        self.serialize_i64(value.into())
    }

    fn serialize_u16(self, value: u16) -> Result<(), FieldError> {
        self.serialize_i64(value.into())
    }

    fn serialize_u32(self, value: u32) -> Result<(), FieldError> {
        self.serialize_i64(value.into())
    }

    fn serialize_u64(self, value: u64) -> Result<(), FieldError> {
        self.column.append_integer(value.into(), &self.trail)
    }

    fn serialize_f32(self, value: f32) -> Result<(), FieldError> {
        Err(self.wrong(value))
    }

    fn serialize_f64(self, value: f64) -> Result<(), FieldError> {
        Err(self.wrong(value))
    }

    fn serialize_char(self, value: char) -> Result<(), FieldError> {
        self.serialize_str(value.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(self, value: &str) -> Result<(), FieldError> {
        match self.column {
            Column::Text(builder) => {
                builder.append_value(value);
                Ok(())
            }
            _ => Err(self.wrong(format_args!("{value:?}"))),
        }
    }

    fn serialize_bytes(self, _: &[u8]) -> Result<(), FieldError> {
        Err(self.wrong("bytes"))
    }

    fn serialize_none(self) -> Result<(), FieldError> {
        self.column.append_null();
        Ok(())
    }

    fn serialize_some<T: serde::Serialize + ?Sized>(self, value: &T) -> Result<(), FieldError> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), FieldError> {
        self.serialize_none()
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), FieldError> {
        self.serialize_none()
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), FieldError> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: serde::Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), FieldError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: serde::Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: &T,
    ) -> Result<(), FieldError> {
        Err(self.wrong(format_args!("a {variant} variant")))
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<IntoList<'c, 't>, FieldError> {
        let Self { column, trail } = self;
        match column {
            Column::List {
                child,
                offsets,
                valid,
                ..
            } => Ok(IntoList {
                child,
                offsets,
                valid,
                items: 0,
                trail,
            }),
            other => Err(FieldError::wrong(&trail, &other.shape(), "an array")),
        }
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, FieldError> {
        Err(self.wrong("a tuple"))
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, FieldError> {
        Err(self.wrong("a tuple"))
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, FieldError> {
        Err(self.wrong("a tuple"))
    }

    fn serialize_map(self, _: Option<usize>) -> Result<IntoObject<'c, 't>, FieldError> {
        let Self { column, trail } = self;
        match column {
            Column::Object {
                fields,
                children,
                valid,
            } => Ok(IntoObject {
                fields,
                children,
                valid,
                given: 0,
                trail,
                key: None,
            }),
            other => Err(FieldError::wrong(&trail, &other.shape(), "an object")),
        }
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<IntoObject<'c, 't>, FieldError> {
        self.serialize_map(None)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, FieldError> {
        Err(self.wrong(format_args!("a {variant} variant")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::{
        ACTION_DENIED, Actor, AgentEvent, BOUNDARY_LOCALHOST, DISPOSITION_BLOCKED, EpochSeal,
        FileDetails, FileSummary, FirewallRule, Gap, Kind, PolicyEvent, Process, RemovedFile,
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
        flow.count = Some(12);
        flow.start_time = Some(flow.time - 900);
        flow.end_time = Some(flow.time);
        let details = flow.unmapped.flow.as_mut().unwrap();
        details.fold = Some("source".into());
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
            summary: Some(FileSummary::default()),
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
        let as_json = || serde_json::to_value(&record).unwrap();
        let mut extra = as_json();
        extra["unmapped"]["flow"]
            .as_object_mut()
            .unwrap()
            .insert("extra".into(), Value::from(1));
        let mut wrong = as_json();
        wrong["src_endpoint"]["port"] = Value::from("https");
        let mut big = as_json();
        big["actor"]["process"]["pid"] = Value::from(u64::from(u32::MAX));
        let mut list = as_json();
        list["metadata"]["profiles"] = Value::from("host");
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
            (&list, "metadata.profiles", "its column takes an array"),
        ] {
            let refused = append(&mut Column::new(&RECORD_SHAPE), value, 7)
                .expect_err("the columns refuse it");
            let ExportError::Field {
                sequence: 7,
                source,
            } = &refused
            else {
                panic!("{refused}");
            };
            assert_eq!(source.path, path);
            assert!(source.problem.contains(problem), "{refused}");
        }
        // The record itself, as a record and as its JSON, fits.
        append(&mut Column::new(&RECORD_SHAPE), &record, 1).unwrap();
        append(&mut Column::new(&RECORD_SHAPE), &as_json(), 1).unwrap();
    }
}
