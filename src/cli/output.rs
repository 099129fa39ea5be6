//! Printing results: aligned tables for people, protobuf JSON for programs.
//!
//! Every line of a client command's output goes through [`outln!`], not
//! `println!`: `println!` panics (exit 101, a panic message on stderr) when
//! stdout's reader has gone, as in `kairos job list | head -1`. [`outln!`]
//! ends the process quietly with status 0 then, as a program whose reader
//! stopped reading has nothing left to do. The process keeps ignoring SIGPIPE
//! (Rust's default): restoring the default action would make the reader's
//! exit quiet too, but would also kill the CLI on a write to a gRPC socket the
//! server reset (h2 writes with `writev`, which raises SIGPIPE), where it should
//! report the error or try the next endpoint; and `kairos agent` and
//! `kairos dev` must not die on a closed socket at all.

use std::fmt;
use std::io::{self, Write};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::client::Output;

/// `println!` for command output: see [`write_line`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::write_line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Writes `line` and a newline to stdout. When stdout's reader has gone, ends
/// the process with status 0 and says nothing; any other write error (a full
/// disk) ends it with one line on stderr and status 1.
pub fn write_line(line: fmt::Arguments<'_>) {
    let written = writeln!(io::stdout().lock(), "{line}");
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            let _ = writeln!(io::stderr(), "error: writing to stdout: {e}");
            std::process::exit(1);
        }
    }
}

/// `println!` for a long-running supervisor (`kairos dev`): see [`write_line_lossy`].
macro_rules! progressln {
    ($($arg:tt)*) => {
        $crate::cli::output::write_line_lossy(format_args!($($arg)*))
    };
}
pub(crate) use progressln;

/// Writes `line` and a newline to stdout and ignores a failure: `kairos dev`
/// keeps its nodes running (and stops them cleanly on Ctrl-C / SIGTERM) when
/// the terminal or pipe it prints to has gone, instead of panicking as
/// `println!` would or exiting as [`write_line`] does, both of which would
/// leave the nodes unstopped.
pub fn write_line_lossy(line: fmt::Arguments<'_>) {
    let _ = writeln!(io::stdout().lock(), "{line}");
}

/// Writes a notice (not a result) to stderr; a closed stderr loses it
/// instead of panicking as `eprintln!` would.
pub fn errln(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

/// Prints `value` as pretty protobuf JSON.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints rows as a table with a header, columns padded to the widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        outln!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// Prints `pairs` as aligned `key: value` lines.
pub fn fields(pairs: &[(&str, String)]) {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (key, value) in pairs {
        outln!("{:<width$} {value}", format!("{key}:"));
    }
}

/// Prints in the chosen format: JSON of `value`, or the table printer.
pub fn print<T: Serialize>(output: Output, value: &T, as_table: impl FnOnce(&T)) -> anyhow::Result<()> {
    match output {
        Output::Json => json(value),
        Output::Table => {
            as_table(value);
            Ok(())
        }
    }
}

/// A protobuf timestamp as RFC 3339 in UTC at `precision`, or `-` when unset.
pub fn timestamp(t: &Option<crate::proto::Timestamp>, precision: SecondsFormat) -> String {
    t.as_ref()
        .and_then(|t| DateTime::<Utc>::from_timestamp_millis(crate::api::convert::timestamp_ms(t)))
        .map_or_else(|| "-".into(), |t| t.to_rfc3339_opts(precision, true))
}
