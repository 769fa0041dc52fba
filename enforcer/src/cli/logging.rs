//! Where the log goes and how it looks: text (the default) or one JSON object per line
//! (`--log-format json`), on standard error, filtered by `ENFORCER_LOG` (default `info`).
//! Under systemd (`JOURNAL_STREAM` set, as for a service whose standard error is the
//! journal) every line starts with its syslog priority (`<3>` for an error, `<4>` a
//! warning, `<6>` info, `<7>` debug), which journald takes as the entry's priority and
//! strips, so `journalctl -p err` finds a refused policy.

use std::io::IsTerminal as _;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// The log's format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `target`).
    Json,
}

/// The syslog priority of a tracing level.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// A format that starts each line with the event's syslog priority, for journald.
struct WithPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Starts logging to standard error in `format`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("ENFORCER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!journald && std::io::stderr().is_terminal());
    match (format, journald) {
        (LogFormat::Text, false) => builder.init(),
        (LogFormat::Text, true) => builder
            .event_format(WithPriority(tracing_subscriber::fmt::format()))
            .init(),
        (LogFormat::Json, false) => builder.json().init(),
        (LogFormat::Json, true) => builder
            .json()
            .event_format(WithPriority(tracing_subscriber::fmt::format().json()))
            .init(),
    }
}
