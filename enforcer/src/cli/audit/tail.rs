//! `enforcer audit tail [-f]`: the newest flow and gap records, then (with `-f`) every new
//! one as the agent writes it, across rotations.

use std::{
    fs::File,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    path::Path,
    process::ExitCode,
    time::Duration,
};

use super::{StoreArgs, format_line};
use crate::audit::{
    files::SegmentFile,
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

/// Reportable records of the complete lines in `bytes`; the count of bytes used.
fn parse(
    path: &Path,
    bytes: &[u8],
    first_line: usize,
) -> Result<(Vec<(String, Record)>, usize), ReadError> {
    let used = bytes
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |at| at + 1);
    let mut records = Vec::new();
    for (index, line) in String::from_utf8_lossy(&bytes[..used]).lines().enumerate() {
        let record: Record = serde_json::from_str(line).map_err(|source| ReadError::Corrupt {
            path: path.to_owned(),
            line: first_line + index,
            source,
        })?;
        if read::is_reportable(&record) {
            records.push((line.to_owned(), record));
        }
    }
    Ok((records, used))
}

/// Where `-f` reads on.
struct Cursor {
    file: SegmentFile,
    offset: u64,
    line: usize,
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
        let (mut records, used) = parse(&file.path, &bytes, 1)?;
        if cursor.is_none() {
            cursor = Some(Cursor {
                file: file.clone(),
                offset: used as u64,
                line: bytes[..used].iter().filter(|&&b| b == b'\n').count() + 1,
            });
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
            cursor = read::segments(&dir)?.into_iter().next().map(|file| Cursor {
                file,
                offset: 0,
                line: 1,
            });
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
        let (records, used) = parse(&current.file.path, &bytes, current.line)?;
        for (line, record) in &records {
            print(&mut out, args.json, line, record)?;
        }
        out.flush()?;
        current.offset += used as u64;
        current.line += bytes[..used].iter().filter(|&&b| b == b'\n').count();
        if let Some(file) = next
            && used == bytes.len()
        {
            *current = Cursor {
                file,
                offset: 0,
                line: 1,
            };
        }
    }
}
