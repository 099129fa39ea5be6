//! Where everything goes: the bands of the picture from top to bottom, the
//! time axis, and the rows of the fault labels.
//!
//! The layout is computed once from the history and the report, before
//! anything is drawn; the drawing modules only read it. The width is fixed;
//! the height follows from the number of lanes, of fault-label rows and of
//! footer lines.

use std::collections::BTreeSet;

use super::text::{fault_count_lines, violation_lines, MAX_FAULT_COUNT_LINES};
use super::{PLOT_LEFT, PLOT_RIGHT};
use crate::history::{Fault, History, RoleSample};
use crate::report::Report;

/// Title, subtitle and legend.
pub(super) const HEADER_HEIGHT: f64 = 86.0;
/// Height of one row of fault labels.
pub(super) const FAULT_ROW_HEIGHT: f64 = 14.0;
/// Fault labels are staggered over at most this many rows.
const MAX_FAULT_ROWS: usize = 4;
/// Height of a node's lane.
pub(super) const LANE_HEIGHT: f64 = 22.0;
/// Distance between the tops of two lanes.
const LANE_PITCH: f64 = 30.0;
/// Tick labels and axis caption under the lanes and under the panel.
const AXIS_HEIGHT: f64 = 34.0;
/// Room for the lateness panel's title and legend above it.
const PANEL_TITLE_HEIGHT: f64 = 22.0;
/// Height of the lateness panel's plot area.
const PANEL_HEIGHT: f64 = 170.0;
/// Distance between two footer lines.
pub(super) const FOOTER_LINE_HEIGHT: f64 = 17.0;

/// Where everything goes, computed once from the history.
pub(super) struct Layout {
    /// The time axis runs from 0 to `span_ms`.
    pub(super) span_ms: u64,
    /// Node ids, sorted: one lane each.
    pub(super) nodes: Vec<u64>,
    /// The label row of each fault, index-aligned with `history.faults`.
    pub(super) fault_rows: Vec<usize>,
    /// Top of the first row of fault labels.
    pub(super) fault_labels_top: f64,
    /// Top of the first lane.
    pub(super) lanes_top: f64,
    /// Bottom of the last lane, where the first time axis runs.
    pub(super) lanes_bottom: f64,
    /// Top of the lateness panel's plot area.
    pub(super) panel_top: f64,
    /// Bottom of the lateness panel, where the second time axis runs.
    pub(super) panel_bottom: f64,
    /// Baseline of the first footer line.
    pub(super) footer_top: f64,
    /// Height of the whole picture.
    pub(super) height: f64,
}

impl Layout {
    pub(super) fn new(history: &History, report: &Report) -> Layout {
        let span_ms = max_time_ms(history).max(1000);
        let nodes = node_ids(&history.roles);
        let fault_rows = assign_fault_label_rows(&history.faults, span_ms);
        let row_count = fault_rows.iter().max().map_or(0, |row| row + 1);
        let fault_labels_top = HEADER_HEIGHT;
        let lanes_top = fault_labels_top + row_count as f64 * FAULT_ROW_HEIGHT + 4.0;
        let lanes_bottom = lanes_top + nodes.len().max(1) as f64 * LANE_PITCH;
        let panel_top = lanes_bottom + AXIS_HEIGHT + PANEL_TITLE_HEIGHT;
        let panel_bottom = panel_top + PANEL_HEIGHT;
        let footer_top = if history_is_empty(history) {
            lanes_top + 70.0
        } else {
            panel_bottom + AXIS_HEIGHT + 14.0
        };
        let height = footer_top + footer_line_count(history, report) as f64 * FOOTER_LINE_HEIGHT + 10.0;
        Layout {
            span_ms,
            nodes,
            fault_rows,
            fault_labels_top,
            lanes_top,
            lanes_bottom,
            panel_top,
            panel_bottom,
            footer_top,
            height,
        }
    }

    /// The x coordinate of a run time.
    pub(super) fn x(&self, t_ms: u64) -> f64 {
        time_x(t_ms, self.span_ms)
    }

    /// The top of the lane of the `index`-th node.
    pub(super) fn lane_y(&self, index: usize) -> f64 {
        self.lanes_top + index as f64 * LANE_PITCH + (LANE_PITCH - LANE_HEIGHT) / 2.0
    }

    /// The lane of `node`, if it has one.
    pub(super) fn lane_index(&self, node: u64) -> Option<usize> {
        self.nodes.binary_search(&node).ok()
    }
}

/// The x coordinate of `t_ms` on an axis from 0 to `span_ms`.
fn time_x(t_ms: u64, span_ms: u64) -> f64 {
    PLOT_LEFT + (t_ms.min(span_ms) as f64 / span_ms as f64) * (PLOT_RIGHT - PLOT_LEFT)
}

/// The latest time anything in the history happened, ms (0 if nothing did).
fn max_time_ms(history: &History) -> u64 {
    let ops = history.ops.iter().map(|op| op.end_ms.max(op.start_ms));
    let deliveries = history.deliveries.iter().map(|d| d.t_ms);
    let faults = history.faults.iter().map(|f| f.end_ms.max(f.start_ms));
    let roles = history.roles.iter().map(|r| r.t_ms);
    ops.chain(deliveries)
        .chain(faults)
        .chain(roles)
        .max()
        .unwrap_or(0)
}

/// Whether the history holds nothing at all to draw.
pub(super) fn history_is_empty(history: &History) -> bool {
    history.ops.is_empty()
        && history.deliveries.is_empty()
        && history.faults.is_empty()
        && history.roles.is_empty()
}

fn node_ids(roles: &[RoleSample]) -> Vec<u64> {
    roles
        .iter()
        .map(|r| r.node)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Lines the footer uses: lateness, fault counts and violations.
fn footer_line_count(history: &History, report: &Report) -> usize {
    1 + fault_count_lines(history, report)
        .len()
        .min(MAX_FAULT_COUNT_LINES)
        + violation_lines(report).len()
}

/// A fault's end for drawing: never before its start (an unhealed fault
/// recorded with `end_ms` 0 runs to the end of the axis).
pub(super) fn fault_end_ms(fault: &Fault, span_ms: u64) -> u64 {
    if fault.end_ms < fault.start_ms {
        span_ms
    } else {
        fault.end_ms
    }
}

/// The x extent of a fault's label, kept inside the plot.
pub(super) fn fault_label_extent(fault: &Fault, span_ms: u64) -> (f64, f64) {
    let x = time_x(fault.start_ms, span_ms);
    let width = text_width(fault.kind.name(), 10.0) + 6.0;
    let start = (x + 2.0).min(PLOT_RIGHT - width).max(PLOT_LEFT);
    (start, start + width)
}

/// Puts each fault's label in the first row where it does not overlap the
/// previous label; when every row is taken, in the row that frees up first.
fn assign_fault_label_rows(faults: &[Fault], span_ms: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..faults.len()).collect();
    order.sort_by_key(|&i| faults[i].start_ms);
    let mut row_ends: Vec<f64> = Vec::new();
    let mut rows = vec![0; faults.len()];
    for i in order {
        let (start, end) = fault_label_extent(&faults[i], span_ms);
        let row = match row_ends.iter().position(|&row_end| row_end <= start) {
            Some(free) => free,
            None if row_ends.len() < MAX_FAULT_ROWS => {
                row_ends.push(f64::MIN);
                row_ends.len() - 1
            }
            None => least_busy_row(&row_ends),
        };
        row_ends[row] = end;
        rows[i] = row;
    }
    rows
}

fn least_busy_row(row_ends: &[f64]) -> usize {
    let mut best = 0;
    for (row, &end) in row_ends.iter().enumerate() {
        if end < row_ends[best] {
            best = row;
        }
    }
    best
}

/// A rough width of `text` in a sans-serif font of `size` px.
pub(super) fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size * 0.6
}

/// A round tick interval giving at most 15 ticks over `span_ms`.
pub(super) fn tick_step_ms(span_ms: u64) -> u64 {
    const STEPS: [u64; 16] = [
        100, 200, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000,
        900_000, 1_800_000, 3_600_000,
    ];
    let fits = |step: u64| span_ms / step <= 14;
    STEPS.iter().copied().find(|&step| fits(step)).unwrap_or_else(|| {
        let hours = span_ms.div_ceil(3_600_000 * 14).max(1);
        hours * 3_600_000
    })
}

/// The tick times, from 0, one [`tick_step_ms`] apart.
pub(super) fn ticks_ms(span_ms: u64) -> Vec<u64> {
    let step = tick_step_ms(span_ms);
    (0..=span_ms / step).map(|i| i * step).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::FaultKind;

    #[test]
    fn tick_step_gives_a_readable_number_of_ticks() {
        for span_s in [1, 7, 16, 30, 60, 90, 120, 300, 600, 1800, 3600, 7200, 86_400] {
            let span_ms = span_s * 1000;
            let ticks = ticks_ms(span_ms).len();
            assert!((5..=15).contains(&ticks), "{ticks} ticks over {span_s} s");
        }
        assert_eq!(tick_step_ms(300_000), 30_000);
        assert_eq!(tick_step_ms(120_000), 10_000);
    }

    #[test]
    fn fault_labels_of_overlapping_faults_get_different_rows() {
        let fault = |start_ms| Fault {
            kind: FaultKind::PartitionMinority,
            nodes: vec![],
            start_ms,
            end_ms: start_ms + 1000,
            detail: String::new(),
            leadership: None,
            misbehaviour: None,
        };
        let faults = [fault(0), fault(500), fault(1000), fault(60_000)];
        let rows = assign_fault_label_rows(&faults, 100_000);
        assert_eq!(rows, vec![0, 1, 2, 0]);
    }
}
