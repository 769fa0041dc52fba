//! `enforcer audit tail [-f]`: the newest flow and gap records, then (with `-f`) every new
//! one as the agent writes it, across rotations.

use std::{
    fs::File,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    process::ExitCode,
    time::Duration,
};

use super::{StoreArgs, format_line};
use crate::audit::{
    files::{Records, SegmentFile},
    read::{self, ReadError},
    record::Record,
};

/// How often `-f` looks for new records.
const POLL: Duration = Duration::from_millis(200);

/// Arguments of `enforcer audit tail`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// How many of the newest records to print first.
    #[arg(short = 'n', long, default_value_t = 10)]
    lines: usize,
    /// Keep printing new records as they are written.
    #[arg(short, long)]
    follow: bool,
    /// Print records as stored (JSON Lines, OCSF).
    #[arg(long)]
    json: bool,
}

/// Reportable records of the complete records in `bytes` (from file offset `base` of
/// `file`), read on by `reader`; the offset reading ended at.
fn parse(
    file: &SegmentFile,
    reader: &mut Records,
    bytes: &[u8],
    base: u64,
) -> Result<(Vec<(String, Record)>, u64), ReadError> {
    let mut records = Vec::new();
    let mut damage = None;
    let end = reader.read(bytes, base, |stored| match stored {
        Ok(stored) => {
            if read::is_reportable(&stored.record) {
                records.push((stored.json().into_owned(), stored.record));
            }
            true
        }
        Err(err) => {
            damage = Some(err);
            false
        }
    });
    match damage {
        Some(source) => Err(ReadError::Damaged {
            path: file.path.clone(),
            source,
        }),
        None => Ok((records, end)),
    }
}

/// Where `-f` reads on.
struct Cursor {
    file: SegmentFile,
    offset: u64,
    reader: Records,
}

impl Cursor {
    /// At the start of `file`.
    fn start(file: SegmentFile) -> Self {
        Self {
            reader: Records::new(file.format),
            file,
            offset: 0,
        }
    }
}

fn print(
    out: &mut impl std::io::Write,
    json: bool,
    line: &str,
    record: &Record,
) -> std::io::Result<()> {
    if json {
        writeln!(out, "{line}")
    } else {
        writeln!(out, "{}", format_line(record))
    }
}

/// Prints the newest records, then follows.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let dir = args.store.dir()?;
    let segments = read::segments(&dir)?;
    let mut out = std::io::stdout().lock();
    let mut newest: Vec<(String, Record)> = Vec::new();
    let mut cursor = None;
    for file in segments.iter().rev() {
        let bytes = std::fs::read(&file.path).map_err(|source| ReadError::Io {
            path: file.path.clone(),
            source,
        })?;
        let mut at = Cursor::start(file.clone());
        let (mut records, used) = parse(file, &mut at.reader, &bytes, 0)?;
        if cursor.is_none() {
            at.offset = used;
            cursor = Some(at);
        }
        records.append(&mut newest);
        newest = records;
        if newest.len() >= args.lines {
            break;
        }
    }
    let skip = newest.len().saturating_sub(args.lines);
    for (line, record) in &newest[skip..] {
        print(&mut out, args.json, line, record)?;
    }
    out.flush()?;
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        std::thread::sleep(POLL);
        let Some(current) = &mut cursor else {
            cursor = read::segments(&dir)?.into_iter().next().map(Cursor::start);
            continue;
        };
        // Look for a newer file first, so nothing written before the switch is missed.
        let next = read::segments(&dir)?
            .into_iter()
            .find(|file| file.number > current.file.number);
        let mut handle = File::open(&current.file.path).map_err(|source| ReadError::Io {
            path: current.file.path.clone(),
            source,
        })?;
        handle.seek(SeekFrom::Start(current.offset))?;
        let mut bytes = Vec::new();
        handle.read_to_end(&mut bytes)?;
        let (records, used) = parse(&current.file, &mut current.reader, &bytes, current.offset)?;
        for (line, record) in &records {
            print(&mut out, args.json, line, record)?;
        }
        out.flush()?;
        let complete = used - current.offset == bytes.len() as u64;
        current.offset = used;
        if let Some(file) = next
            && complete
        {
            *current = Cursor::start(file);
        }
    }
}
