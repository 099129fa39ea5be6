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
    for line in table_lines(header, rows) {
        outln!("{line}");
    }
}

/// The lines [`table`] prints: the header, then each row, every column
/// padded to its widest cell (counted in characters), two spaces apart,
/// without trailing blanks.
pub fn table_lines(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    std::iter::once(line(&header))
        .chain(rows.iter().map(|row| line(row)))
        .collect()
}

/// Prints `pairs` as aligned `key: value` lines.
pub fn fields(pairs: &[(&str, String)]) {
    for line in field_lines(pairs) {
        outln!("{line}");
    }
}

/// The lines [`fields`] prints: `key:` padded to the longest key, a space,
/// the value (as it is: a value of several lines goes on unindented).
pub fn field_lines(pairs: &[(&str, String)]) -> Vec<String> {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    pairs
        .iter()
        .map(|(key, value)| format!("{:<width$} {value}", format!("{key}:")))
        .collect()
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

/// How long before `now` the protobuf time `t` was, for people: `42s ago`
/// (under two minutes), `17m ago` (under two hours), `5h ago` (under two
/// days), else `3d ago`, each rounded down. `-` when unset. A time more
/// than a second after `now` (the clocks of this machine and the node
/// disagree) has no honest age: it is shown as RFC 3339 instead; one less
/// than a second ahead counts as `0s ago`.
pub fn age(t: &Option<crate::proto::Timestamp>, now: DateTime<Utc>) -> String {
    let Some(at) = t.as_ref() else {
        return "-".into();
    };
    let elapsed_ms = now.timestamp_millis() - crate::api::convert::timestamp_ms(at);
    if elapsed_ms < -1000 {
        return timestamp(t, SecondsFormat::Secs);
    }
    let seconds = elapsed_ms.max(0) / 1000;
    match seconds {
        s if s < 120 => format!("{s}s ago"),
        s if s < 120 * 60 => format!("{}m ago", s / 60),
        s if s < 48 * 3600 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_pads_each_column_to_its_widest_cell_and_trims_the_end() {
        let rows = vec![
            vec!["a".to_string(), "longer cell".to_string(), "".to_string()],
            vec!["ü-wide".to_string(), "x".to_string(), "z".to_string()],
        ];
        assert_eq!(
            table_lines(&["ID", "TEXT", "LAST"], &rows),
            [
                "ID      TEXT         LAST",
                "a       longer cell",
                "ü-wide  x            z",
            ]
        );
        assert_eq!(table_lines(&["ONLY", "HEADER"], &[]), ["ONLY  HEADER"]);
    }

    #[test]
    fn fields_align_their_values_after_the_longest_key() {
        let pairs = [("run", "7".to_string()), ("not before", "-".to_string())];
        assert_eq!(field_lines(&pairs), ["run:        7", "not before: -"]);
    }

    fn at_ms(ms: i64) -> Option<crate::proto::Timestamp> {
        Some(crate::api::convert::ms_timestamp(ms))
    }

    #[test]
    fn an_age_is_rounded_down_to_seconds_minutes_hours_or_days() {
        let now = DateTime::<Utc>::from_timestamp_millis(1_800_000_000_000).expect("in range");
        let before = |ms: i64| age(&at_ms(now.timestamp_millis() - ms), now);
        assert_eq!(before(0), "0s ago");
        assert_eq!(before(2_999), "2s ago");
        assert_eq!(before(119_999), "119s ago");
        assert_eq!(before(120_000), "2m ago");
        assert_eq!(before(119 * 60_000 + 59_999), "119m ago");
        assert_eq!(before(2 * 3_600_000), "2h ago");
        assert_eq!(before(47 * 3_600_000), "47h ago");
        assert_eq!(before(48 * 3_600_000), "2d ago");
        assert_eq!(age(&None, now), "-");
    }

    #[test]
    fn a_time_ahead_of_the_local_clock_shows_as_itself() {
        let now = DateTime::<Utc>::from_timestamp_millis(1_800_000_000_000).expect("in range");
        // Within a second: the clocks roughly agree.
        assert_eq!(age(&at_ms(now.timestamp_millis() + 900), now), "0s ago");
        assert_eq!(
            age(&at_ms(now.timestamp_millis() + 5_000), now),
            "2027-01-15T08:00:05Z"
        );
    }
}
