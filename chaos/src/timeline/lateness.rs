//! The fire-lateness panel: one dot per webhook delivery, at its arrival
//! time and its lateness.
//!
//! The y axis is "symlog" ([`LatenessScale`]): close to linear below
//! [`SYMLOG_LINEAR_MS`] and logarithmic above, so that the usual tens of ms
//! and the seconds-long spikes of a failover are both readable. It reaches up
//! to the latest delivery but at least `max(1.5 × p99, 100 ms)`, and never
//! beyond ±[`LATENESS_CAP_MS`]; deliveries beyond are clamped on the edge in
//! red. Dashed lines mark p50 and p99. At most [`MAX_POINTS`] dots are drawn
//! (every k-th delivery when there are more), and a note says so.

use std::collections::BTreeSet;

use svg::{Document, Node};

use super::draw::{dot, line, rect, text};
use super::layout::{text_width, Layout};
use super::text::draw_dot_legend;
use super::{CLAMPED_COLOUR, GRID_COLOUR, MUTED_COLOUR, PLOT_LEFT, PLOT_RIGHT, POINT_COLOUR};
use crate::history::Delivery;
use crate::report::Report;

/// Below about this many ms the lateness axis is close to linear, above it
/// close to logarithmic (a "symlog" scale), so that both the usual few tens
/// of ms and the seconds-long spikes of a failover are readable.
const SYMLOG_LINEAR_MS: f64 = 10.0;
/// The lateness axis never reaches beyond ±1000 s; deliveries beyond are
/// drawn clamped on the edge, in red.
const LATENESS_CAP_MS: i64 = 1_000_000;
/// Tick labels on the lateness axis closer than this are left out, px.
const MIN_TICK_GAP: f64 = 11.0;
/// Most lateness dots drawn, in-range and clamped together.
pub(super) const MAX_POINTS: usize = 5000;
/// Of [`MAX_POINTS`], how many may be clamped (out-of-range) dots.
const MAX_CLAMPED_POINTS: usize = 500;
/// Radius of a delivery's dot, px.
const POINT_RADIUS: f64 = 1.8;

/// The y range of the lateness panel, ms, from `low` (0 unless some delivery
/// came early) to `high`, on a symlog scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LatenessScale {
    /// The bottom of the axis (0, or negative for early deliveries).
    low: i64,
    /// The top of the axis.
    high: i64,
}

impl LatenessScale {
    /// Up to the latest delivery, but at least `max(1.5 × p99, 100)` ms; down
    /// to the earliest (negative) one; both rounded out to 1, 2 or 5 × 10ⁿ and
    /// capped at ±[`LATENESS_CAP_MS`].
    fn new(report: &Report, deliveries: &[Delivery]) -> LatenessScale {
        let p99 = report.lateness_ms[1].max(0);
        let least_high = (p99 as f64 * 1.5).clamp(100.0, LATENESS_CAP_MS as f64) as i64;
        let highest = deliveries.iter().map(|d| d.lateness_ms).max().unwrap_or(0);
        let lowest = deliveries.iter().map(|d| d.lateness_ms).min().unwrap_or(0);
        let high = nice_step(highest.clamp(least_high, LATENESS_CAP_MS));
        let low = if lowest < 0 {
            -nice_step(lowest.saturating_neg().clamp(10, LATENESS_CAP_MS))
        } else {
            0
        };
        LatenessScale { low, high }
    }

    fn contains(&self, lateness_ms: i64) -> bool {
        (self.low..=self.high).contains(&lateness_ms)
    }

    /// Where a lateness sits from the bottom (0.0) to the top (1.0) of the
    /// panel; values outside the range sit on the edge.
    fn fraction(&self, lateness_ms: i64) -> f64 {
        let (bottom, top) = (symlog(self.low), symlog(self.high));
        (symlog(lateness_ms.clamp(self.low, self.high)) - bottom) / (top - bottom).max(f64::EPSILON)
    }

    /// The ticks, most important first: 0, powers of ten from 10 ms on both
    /// sides, then the two ends.
    fn ticks(&self) -> Vec<i64> {
        let mut ticks = vec![0];
        let mut decade: i64 = 10;
        while decade <= LATENESS_CAP_MS {
            ticks.extend([decade, -decade].into_iter().filter(|&v| self.contains(v)));
            decade *= 10;
        }
        ticks.extend([self.high, self.low]);
        let mut seen = BTreeSet::new();
        ticks.retain(|&v| seen.insert(v));
        ticks
    }
}

/// Sign-preserving log scale, linear near 0.
fn symlog(lateness_ms: i64) -> f64 {
    let magnitude = (1.0 + (lateness_ms as f64).abs() / SYMLOG_LINEAR_MS).log10();
    if lateness_ms < 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// The smallest 1, 2 or 5 × 10ⁿ that is at least `at_least` (and at least 1).
fn nice_step(at_least: i64) -> i64 {
    let mut magnitude: i64 = 1;
    loop {
        for factor in [1, 2, 5] {
            let step = magnitude.saturating_mul(factor);
            if step >= at_least {
                return step;
            }
        }
        match magnitude.checked_mul(10) {
            Some(next) => magnitude = next,
            None => return i64::MAX,
        }
    }
}

/// The panel: heading, frame, ticks, percentile lines, dots and notes.
pub(super) fn draw_lateness_panel(
    doc: &mut Document,
    layout: &Layout,
    deliveries: &[Delivery],
    report: &Report,
) {
    let scale = LatenessScale::new(report, deliveries);
    draw_panel_heading(doc, layout);
    doc.append(
        rect(
            PLOT_LEFT,
            layout.panel_top,
            PLOT_RIGHT - PLOT_LEFT,
            layout.panel_bottom - layout.panel_top,
        )
        .set("fill", "none")
        .set("stroke", GRID_COLOUR),
    );
    draw_lateness_ticks(doc, layout, &scale);
    draw_percentile_lines(doc, layout, &scale, report);
    if deliveries.is_empty() {
        doc.append(
            text(
                PLOT_LEFT + 8.0,
                layout.panel_top + 20.0,
                "no webhook deliveries recorded",
            )
            .set("font-size", 12)
            .set("fill", MUTED_COLOUR),
        );
        return;
    }
    let (inside, outside): (Vec<&Delivery>, Vec<&Delivery>) =
        deliveries.iter().partition(|d| scale.contains(d.lateness_ms));
    let inside = every_kth(&inside, MAX_POINTS - MAX_CLAMPED_POINTS.min(outside.len()));
    let outside_drawn = every_kth(&outside, MAX_CLAMPED_POINTS);
    draw_points(doc, layout, &scale, &inside, POINT_COLOUR);
    draw_points(doc, layout, &scale, &outside_drawn, CLAMPED_COLOUR);
    draw_panel_note(
        doc,
        layout,
        deliveries,
        outside.len(),
        inside.len() + outside_drawn.len(),
    );
}

/// The panel's title and the legend of its dots.
fn draw_panel_heading(doc: &mut Document, layout: &Layout) {
    let title = "fire lateness (ms, log scale)";
    let y = layout.panel_top - 8.0;
    doc.append(text(PLOT_LEFT - 60.0, y, title).set("font-weight", "bold"));
    draw_dot_legend(doc, PLOT_LEFT - 60.0 + text_width(title, 12.0) + 24.0, y);
}

fn lateness_y(layout: &Layout, scale: &LatenessScale, lateness_ms: i64) -> f64 {
    layout.panel_bottom - scale.fraction(lateness_ms) * (layout.panel_bottom - layout.panel_top)
}

/// Grid lines and labels, leaving out labels that would overlap.
fn draw_lateness_ticks(doc: &mut Document, layout: &Layout, scale: &LatenessScale) {
    let mut drawn: Vec<f64> = Vec::new();
    for value in scale.ticks() {
        let y = lateness_y(layout, scale, value);
        if drawn.iter().any(|&other| (other - y).abs() < MIN_TICK_GAP) {
            continue;
        }
        drawn.push(y);
        let stroke = if value == 0 { "#999" } else { GRID_COLOUR };
        doc.append(
            line(PLOT_LEFT, y, PLOT_RIGHT, y)
                .set("stroke", stroke)
                .set("stroke-width", 1),
        );
        doc.append(
            text(PLOT_LEFT - 6.0, y + 3.5, &format!("{value} ms"))
                .set("font-size", 10)
                .set("text-anchor", "end"),
        );
    }
}

fn draw_percentile_lines(doc: &mut Document, layout: &Layout, scale: &LatenessScale, report: &Report) {
    // p50 labelled under its line and p99 over it, so that close lines keep
    // readable labels.
    for (name, value, label_dy) in [
        ("p50", report.lateness_ms[0], 9.0),
        ("p99", report.lateness_ms[1], -2.0),
    ] {
        if !scale.contains(value) || value == 0 {
            continue;
        }
        let y = lateness_y(layout, scale, value);
        doc.append(
            line(PLOT_LEFT, y, PLOT_RIGHT, y)
                .set("stroke", "#555")
                .set("stroke-width", 1)
                .set("stroke-dasharray", "6 4"),
        );
        doc.append(
            text(PLOT_RIGHT + 3.0, y + label_dy, name)
                .set("font-size", 10)
                .set("fill", MUTED_COLOUR),
        );
    }
}

/// Every k-th item, with k chosen so that at most `max` are kept.
fn every_kth<'a>(items: &[&'a Delivery], max: usize) -> Vec<&'a Delivery> {
    if max == 0 {
        return Vec::new();
    }
    let k = items.len().div_ceil(max).max(1);
    items.iter().step_by(k).copied().collect()
}

fn draw_points(
    doc: &mut Document,
    layout: &Layout,
    scale: &LatenessScale,
    points: &[&Delivery],
    colour: &str,
) {
    for delivery in points {
        let x = layout.x(delivery.t_ms);
        let y = lateness_y(layout, scale, delivery.lateness_ms);
        doc.append(dot(x, y, POINT_RADIUS, colour).set("fill-opacity", 0.65));
    }
}

/// A note above the panel's right corner on clamping and sampling.
fn draw_panel_note(
    doc: &mut Document,
    layout: &Layout,
    deliveries: &[Delivery],
    clamped: usize,
    drawn: usize,
) {
    let mut notes = Vec::new();
    if clamped > 0 {
        let worst = deliveries.iter().map(|d| d.lateness_ms).max().unwrap_or(0);
        notes.push(format!(
            "{clamped} beyond \u{00b1}{LATENESS_CAP_MS} ms (max {worst} ms)"
        ));
    }
    if drawn < deliveries.len() {
        notes.push(format!(
            "{drawn} of {} deliveries drawn (every k-th)",
            deliveries.len()
        ));
    }
    if notes.is_empty() {
        return;
    }
    doc.append(
        text(PLOT_RIGHT, layout.panel_top - 8.0, &notes.join("  \u{00b7}  "))
            .set("font-size", 10)
            .set("text-anchor", "end")
            .set("fill", CLAMPED_COLOUR),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::tests::delivery;

    #[test]
    fn lateness_scale_spans_the_deliveries_but_at_least_one_and_a_half_p99() {
        let mut report = Report::default();
        assert_eq!(
            LatenessScale::new(&report, &[]),
            LatenessScale { low: 0, high: 100 }
        );
        report.lateness_ms = [40, 400, 9_000];
        assert_eq!(
            LatenessScale::new(&report, &[delivery(1, 30)]),
            LatenessScale { low: 0, high: 1000 }
        );
        let scale = LatenessScale::new(&report, &[delivery(1, -30), delivery(2, 9_000)]);
        assert_eq!(
            scale,
            LatenessScale {
                low: -50,
                high: 10_000
            }
        );
        assert_eq!(scale.fraction(-50), 0.0);
        assert_eq!(scale.fraction(10_000), 1.0);
        assert_eq!(scale.fraction(99_999), 1.0);
        assert!(scale.fraction(0) < scale.fraction(10) && scale.fraction(10) < scale.fraction(100));
        assert_eq!(scale.ticks(), vec![0, 10, -10, 100, 1000, 10_000, -50]);
        let extreme = Report {
            lateness_ms: [i64::MAX, i64::MAX, i64::MAX],
            ..Report::default()
        };
        let scale = LatenessScale::new(&extreme, &[delivery(1, i64::MIN), delivery(2, i64::MAX)]);
        assert_eq!(
            scale,
            LatenessScale {
                low: -LATENESS_CAP_MS,
                high: LATENESS_CAP_MS
            }
        );
        assert!(!scale.contains(i64::MAX));
    }

    #[test]
    fn every_kth_keeps_at_most_max() {
        let deliveries: Vec<Delivery> = (0..10).map(|i| delivery(i, 10)).collect();
        let refs: Vec<&Delivery> = deliveries.iter().collect();
        assert_eq!(every_kth(&refs, 3).len(), 3);
        assert_eq!(every_kth(&refs, 20).len(), 10);
        assert!(every_kth(&refs, 0).is_empty());
    }
}
