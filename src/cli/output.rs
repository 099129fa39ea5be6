//! Printing results: aligned tables for people, protobuf JSON for programs.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::client::Output;

/// Prints `value` as pretty protobuf JSON.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
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
        println!("{}", padded.join("  ").trim_end());
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
        println!("{:<width$} {value}", format!("{key}:"));
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
