//! The words around the plots: the header (title, the run's vital numbers,
//! the legend of colours) and the footer (lateness percentiles, fault counts,
//! the first violations).
//!
//! Footer lines are wrapped or cut at [`FOOTER_CHARS`] characters, so that a
//! long violation message cannot run off the picture; report.json has them
//! whole.

use std::collections::BTreeMap;

use svg::node::element::{Rectangle, TSpan};
use svg::{Document, Node};

use super::draw::{dot, rect, text};
use super::lanes::{fault_mark, role_fill, role_name};
use super::layout::{text_width, FOOTER_LINE_HEIGHT};
use super::{
    CLAMPED_COLOUR, FAULT_FILL, MUTED_COLOUR, PLOT_LEFT, POINT_COLOUR, TEXT_COLOUR, VIOLATION_COLOUR, WIDTH,
};
use crate::history::{History, Role};
use crate::report::Report;

/// Left edge of the header and footer text.
const TEXT_LEFT: f64 = PLOT_LEFT - 60.0;
/// Violations named in the footer; the rest are counted.
const MAX_VIOLATION_LINES: usize = 3;
/// Footer lines the fault counts may take.
pub(super) const MAX_FAULT_COUNT_LINES: usize = 2;
/// Characters per footer line before it wraps.
const FOOTER_CHARS: usize = 170;

/// Title, subtitle and legend.
pub(super) fn draw_header(doc: &mut Document, history: &History, report: &Report, lane_count: usize) {
    draw_title(doc, report, lane_count);
    doc.append(
        text(TEXT_LEFT, 46.0, &subtitle(history, report))
            .set("font-size", 11)
            .set("fill", MUTED_COLOUR),
    );
    draw_legend(doc, 68.0);
}

/// `kairos-chaos seed N — K nodes — V violations`, the count red when not zero.
fn draw_title(doc: &mut Document, report: &Report, lane_count: usize) {
    let nodes = if report.nodes > 0 {
        report.nodes
    } else {
        lane_count as u64
    };
    let violations = report.violations.len();
    let colour = if violations > 0 {
        VIOLATION_COLOUR
    } else {
        TEXT_COLOUR
    };
    let lead = format!(
        "kairos-chaos seed {} \u{2014} {nodes} nodes \u{2014} ",
        report.seed
    );
    doc.append(
        text(TEXT_LEFT, 26.0, &lead)
            .set("font-size", 18)
            .set("font-weight", "bold")
            .add(TSpan::new(format!("{violations} violations")).set("fill", colour)),
    );
}

/// The grey line under the title: runtime, durations and counts.
fn subtitle(history: &History, report: &Report) -> String {
    let mut parts = Vec::new();
    if !report.runtime.is_empty() {
        parts.push(format!("runtime {}", report.runtime));
    }
    if !report.started_at.is_empty() {
        parts.push(format!("started {}", report.started_at));
    }
    if report.fault_phase_ms > 0 {
        parts.push(format!("fault phase {} s", report.fault_phase_ms / 1000));
    }
    if report.total_ms > 0 {
        parts.push(format!("total {} s", report.total_ms / 1000));
    }
    parts.push(format!("{} client ops", history.ops.len()));
    parts.push(format!("{} webhook deliveries", history.deliveries.len()));
    parts.push(format!("{} faults", history.faults.len()));
    parts.join("  \u{00b7}  ")
}

/// The roles' colours, then the fault band, the fault mark and the violation marker.
fn draw_legend(doc: &mut Document, y: f64) {
    let mut x = TEXT_LEFT;
    for role in [
        Role::Leader,
        Role::Follower,
        Role::Candidate,
        Role::Learner,
        Role::Down,
    ] {
        x = legend_item(doc, x, y, |r| r.set("fill", role_fill(role)), role_name(role));
    }
    x += 16.0;
    x = legend_item(
        doc,
        x,
        y,
        |r| r.set("fill", FAULT_FILL).set("fill-opacity", 0.35),
        "fault (injected \u{2192} healed)",
    );
    x = legend_item(doc, x, y, fault_mark, "node hit by the fault");
    legend_item(
        doc,
        x,
        y,
        |r| r.set("fill", VIOLATION_COLOUR),
        "violation (at its run time)",
    );
}

/// One swatch, painted by `paint`, and its caption; returns where the next item starts.
fn legend_item(
    doc: &mut Document,
    x: f64,
    y: f64,
    paint: impl FnOnce(Rectangle) -> Rectangle,
    caption: &str,
) -> f64 {
    doc.append(paint(rect(x, y - 10.0, 14.0, 12.0)));
    doc.append(text(x + 18.0, y, caption).set("font-size", 11));
    x + 18.0 + text_width(caption, 11.0) + 12.0
}

/// The lateness panel's legend: its two kinds of dots.
pub(super) fn draw_dot_legend(doc: &mut Document, x: f64, y: f64) {
    let x = legend_dot(doc, x, y, POINT_COLOUR, "delivery (arrival time, lateness)");
    legend_dot(doc, x, y, CLAMPED_COLOUR, "beyond the axis, clamped");
}

/// One dot and its caption; returns where the next item starts.
fn legend_dot(doc: &mut Document, x: f64, y: f64, colour: &str, caption: &str) -> f64 {
    doc.append(dot(x + 4.0, y - 4.0, 3.0, colour));
    doc.append(text(x + 11.0, y, caption).set("font-size", 11));
    x + 11.0 + text_width(caption, 11.0) + 12.0
}

/// What an empty history shows instead of lanes and panel.
pub(super) fn draw_no_data(doc: &mut Document, y: f64) {
    doc.append(
        text(WIDTH / 2.0, y, "no data: the history is empty")
            .set("font-size", 20)
            .set("text-anchor", "middle")
            .set("fill", MUTED_COLOUR),
    );
}

/// Lateness, fault counts and the first violations, one line each from `top` down.
pub(super) fn draw_footer(doc: &mut Document, top: f64, history: &History, report: &Report) {
    let mut y = top;
    let [p50, p99, max] = report.lateness_ms;
    let lateness = format!(
        "fire lateness: p50 {p50} ms  \u{00b7}  p99 {p99} ms  \u{00b7}  max {max} ms  ({} deliveries)",
        history.deliveries.len()
    );
    doc.append(text(TEXT_LEFT, y, &lateness));
    for line in fault_count_lines(history, report)
        .into_iter()
        .take(MAX_FAULT_COUNT_LINES)
    {
        y += FOOTER_LINE_HEIGHT;
        doc.append(text(TEXT_LEFT, y, &line));
    }
    for line in violation_lines(report) {
        y += FOOTER_LINE_HEIGHT;
        doc.append(text(TEXT_LEFT, y, &line).set("fill", VIOLATION_COLOUR));
    }
}

/// "faults: N — kind n, kind n, ...", wrapped at [`FOOTER_CHARS`].
pub(super) fn fault_count_lines(history: &History, report: &Report) -> Vec<String> {
    let counts = fault_counts(history, report);
    let total: u64 = counts.values().sum();
    let items: Vec<String> = counts.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
    let head = if items.is_empty() {
        format!("faults: {total}")
    } else {
        format!("faults: {total} \u{2014} ")
    };
    wrap_items(&head, &items, FOOTER_CHARS)
}

/// The report's fault counts by kind, or, if it has none, the history's.
fn fault_counts(history: &History, report: &Report) -> BTreeMap<String, u64> {
    if !report.faults_by_kind.is_empty() {
        return report.faults_by_kind.clone();
    }
    let mut counts = BTreeMap::new();
    for fault in &history.faults {
        *counts.entry(fault.kind.name().to_string()).or_default() += 1;
    }
    counts
}

/// Joins `items` with ", " after `head`, starting a new line when one would
/// grow past `max_chars`.
fn wrap_items(head: &str, items: &[String], max_chars: usize) -> Vec<String> {
    let mut lines = vec![head.to_string()];
    let mut first_on_line = true;
    for item in items {
        let current = lines.len() - 1;
        let separator = if first_on_line { "" } else { ", " };
        if !first_on_line
            && lines[current].chars().count() + separator.len() + item.chars().count() > max_chars
        {
            lines[current].push(',');
            lines.push(item.clone());
        } else {
            lines[current].push_str(separator);
            lines[current].push_str(item);
        }
        first_on_line = false;
    }
    lines
}

/// The first violations, one line each, and how many more there are.
pub(super) fn violation_lines(report: &Report) -> Vec<String> {
    let mut lines: Vec<String> = report
        .violations
        .iter()
        .take(MAX_VIOLATION_LINES)
        .map(|v| {
            truncate_chars(
                &format!("VIOLATION [{}] {}", v.invariant, v.message),
                FOOTER_CHARS,
            )
        })
        .collect();
    if report.violations.len() > MAX_VIOLATION_LINES {
        lines.push(format!(
            "\u{2026} and {} more violations (see report.json)",
            report.violations.len() - MAX_VIOLATION_LINES
        ));
    }
    lines
}

fn truncate_chars(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    cut.push('\u{2026}');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_footer_lines_wrap_or_are_cut() {
        let items: Vec<String> = (0..40).map(|i| format!("kind_{i} {i}")).collect();
        let lines = wrap_items("faults: 40 \u{2014} ", &items, 60);
        assert!(lines.len() > 1);
        assert!(lines.iter().all(|l| l.chars().count() <= 61), "{lines:?}");
        assert_eq!(lines.join(" ").matches("kind_").count(), 40);
        assert_eq!(truncate_chars("abcdef", 4), "abc\u{2026}");
        assert_eq!(truncate_chars("abc", 4), "abc");
    }
}
