//! `enforcer audit export --format ocsf-jsonl|csv|parquet`: what `query` finds, with the
//! same filters, in a file (or on standard output for the text formats) for a SIEM or a
//! data lake. A file is written whole or not at all: it appears only once the export is
//! complete, and an existing one is replaced only with `--force`.

use std::{io::Write, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use atomic_write_file::AtomicWriteFile;

use super::Selection;
use crate::audit::{
    export::{ExportError, Exporter, Format},
    record::Record,
};

/// Arguments of `enforcer audit export`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    selection: Selection,
    /// ocsf-jsonl: one OCSF record per line, as `query --json` prints them. csv: a header of
    /// OCSF field paths (`src_endpoint.ip`, `unmapped.flow.rule`), one row per record.
    /// parquet: one column per field, nested objects as struct columns, `time` a
    /// timestamp (ms), as Amazon Security Lake stores OCSF (which takes one OCSF class
    /// per file: add `--kind flow` for Network Activity).
    #[arg(long, value_parser = Format::WORDS)]
    format: String,
    /// The file to write (needed for parquet); without it, standard output.
    #[arg(short, long, required_if_eq("format", "parquet"))]
    output: Option<PathBuf>,
    /// Replace the output file if it exists.
    #[arg(long, requires = "output")]
    force: bool,
    /// Print what was written (format, file, records) as JSON.
    #[arg(long, requires = "output")]
    json: bool,
}

/// Runs the export.
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let format: Format = args.format.parse().map_err(anyhow::Error::msg)?;
    let Some(path) = &args.output else {
        export(args, format, std::io::stdout())?;
        return Ok(ExitCode::SUCCESS);
    };
    if !args.force && std::fs::symlink_metadata(path).is_ok() {
        anyhow::bail!("{} exists: give --force to replace it", path.display());
    }
    let file =
        AtomicWriteFile::open(path).with_context(|| format!("creating {}", path.display()))?;
    let (records, file) = export(args, format, file)?;
    file.commit()
        .with_context(|| format!("writing {}", path.display()))?;
    if args.json {
        let report = serde_json::json!({
            "format": format.word(),
            "output": path,
            "records": records,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{records} records written to {} ({})",
            path.display(),
            format.word()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Records handed from the reading thread to the writing one at a time.
const CHUNK: usize = 1024;

/// Writes the selected records to `out`: how many, and `out`. The store is read on this
/// thread and the records are written on another, so reading and writing overlap.
fn export<W: Write + Send>(args: &Args, format: Format, out: W) -> anyhow::Result<(u64, W)> {
    let mut exporter = Exporter::new(format, out)?;
    std::thread::scope(|scope| {
        let (send, receive) = std::sync::mpsc::sync_channel::<Vec<Record>>(16);
        let writer = scope.spawn(move || -> Result<(u64, W), ExportError> {
            for chunk in receive {
                for record in &chunk {
                    exporter.write(record)?;
                }
            }
            exporter.finish()
        });
        let mut chunk = Vec::with_capacity(CHUNK);
        // A send fails only when the writer stopped on an error, which `join` returns.
        let scanned = args.selection.scan(|record| {
            chunk.push(record);
            chunk.len() < CHUNK
                || send
                    .send(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)))
                    .is_ok()
        });
        if scanned.is_ok() && !chunk.is_empty() {
            // An error here is the writer's, returned by `join` below.
            let _ = send.send(chunk);
        }
        drop(send);
        let written = writer
            .join()
            .map_err(|_| anyhow::anyhow!("the export's writer panicked"))?;
        scanned?;
        Ok(written?)
    })
}
