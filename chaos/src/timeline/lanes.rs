//! Everything drawn against the time axis above the lateness panel: the
//! axis itself and its grid, the fault bands and their labels, one lane per
//! node coloured by role, the marks of the nodes each fault hit, and the
//! violation markers.
//!
//! A lane is built from the role samples the harness took by polling each
//! node: a sample's role holds until that node's next sample, equal
//! consecutive roles merge into one [`Segment`], and a leader in a new term
//! starts a new one. Every segment, band and mark carries a hover title with
//! its times, nodes and details.

use svg::node::element::{Polygon, Rectangle};
use svg::{Document, Node};

use super::draw::{line, rect, text, titled};
use super::layout::{
    fault_end_ms, fault_label_extent, text_width, tick_step_ms, ticks_ms, Layout, FAULT_ROW_HEIGHT,
    LANE_HEIGHT,
};
use super::{
    seconds, DOWN_FILL, FAULT_FILL, GRID_COLOUR, MUTED_COLOUR, PLOT_LEFT, PLOT_RIGHT, VIOLATION_COLOUR,
};
use crate::history::{Fault, Role, RoleSample};
use crate::report::Report;

/// Colour of the fault labels and of the line at each fault's start.
const FAULT_TEXT: &str = "#7a5c00";
/// Colour of the time axes.
const AXIS_COLOUR: &str = "#444";
/// Violation markers drawn at most (one per run time a violation names).
const MAX_VIOLATION_MARKERS: usize = 200;

// ---------------------------------------------------------------------------
// Time axis

/// Vertical grid lines at every tick, through the lanes and the panel.
pub(super) fn draw_time_grid(doc: &mut Document, layout: &Layout) {
    for t in ticks_ms(layout.span_ms) {
        let x = layout.x(t);
        for (top, bottom) in [
            (layout.lanes_top, layout.lanes_bottom),
            (layout.panel_top, layout.panel_bottom),
        ] {
            doc.append(
                line(x, top, x, bottom)
                    .set("stroke", GRID_COLOUR)
                    .set("stroke-width", 1),
            );
        }
    }
}

/// The axis line, tick marks, labels in seconds and the caption, at `y`.
pub(super) fn draw_time_axis(doc: &mut Document, layout: &Layout, y: f64) {
    let stroke = |l: svg::node::element::Line| l.set("stroke", AXIS_COLOUR).set("stroke-width", 1);
    doc.append(stroke(line(PLOT_LEFT, y, PLOT_RIGHT, y)));
    let step = tick_step_ms(layout.span_ms);
    for t in ticks_ms(layout.span_ms) {
        let x = layout.x(t);
        doc.append(stroke(line(x, y, x, y + 4.0)));
        doc.append(
            text(x, y + 15.0, &format_seconds(t, step))
                .set("font-size", 10)
                .set("text-anchor", "middle"),
        );
    }
    doc.append(
        text(PLOT_RIGHT, y + 28.0, "time since start of run (s)")
            .set("font-size", 10)
            .set("text-anchor", "end")
            .set("fill", MUTED_COLOUR),
    );
}

/// A tick label: whole seconds, or tenths when the ticks are closer than 1 s.
fn format_seconds(t_ms: u64, step_ms: u64) -> String {
    if step_ms >= 1000 {
        format!("{}", t_ms / 1000)
    } else {
        format!("{:.1}", t_ms as f64 / 1000.0)
    }
}

// ---------------------------------------------------------------------------
// Faults

/// Translucent bands behind the lanes and the panel, with staggered labels.
pub(super) fn draw_fault_bands(doc: &mut Document, layout: &Layout, faults: &[Fault]) {
    for (fault, &row) in faults.iter().zip(&layout.fault_rows) {
        let x0 = layout.x(fault.start_ms);
        let x1 = layout.x(fault_end_ms(fault, layout.span_ms)).max(x0 + 2.0);
        let label_top = layout.fault_labels_top + row as f64 * FAULT_ROW_HEIGHT;
        let tip = fault_tooltip(fault, layout.span_ms);
        for (top, bottom) in [
            (label_top, layout.lanes_bottom),
            (layout.panel_top, layout.panel_bottom),
        ] {
            let band = rect(x0, top, x1 - x0, bottom - top)
                .set("fill", FAULT_FILL)
                .set("fill-opacity", 0.28);
            doc.append(titled(band, &tip));
        }
        doc.append(
            line(x0, label_top, x0, layout.lanes_bottom)
                .set("stroke", FAULT_TEXT)
                .set("stroke-width", 0.8),
        );
        let (label_x, _) = fault_label_extent(fault, layout.span_ms);
        doc.append(
            text(label_x, label_top + FAULT_ROW_HEIGHT - 3.0, fault.kind.name())
                .set("font-size", 10)
                .set("fill", FAULT_TEXT)
                .set("font-weight", "bold"),
        );
    }
}

/// A dark outlined mark on the lane of every node a fault hit.
pub(super) fn draw_fault_marks(doc: &mut Document, layout: &Layout, faults: &[Fault]) {
    for fault in faults {
        let x0 = layout.x(fault.start_ms);
        let x1 = layout.x(fault_end_ms(fault, layout.span_ms)).max(x0 + 2.0);
        let tip = fault_tooltip(fault, layout.span_ms);
        for index in fault.nodes.iter().filter_map(|&node| layout.lane_index(node)) {
            let y = layout.lane_y(index);
            let mark = fault_mark(rect(x0, y - 1.5, x1 - x0, LANE_HEIGHT + 3.0));
            doc.append(titled(mark, &tip));
        }
    }
}

/// The paint of a "node hit by the fault" mark (also its legend swatch).
pub(super) fn fault_mark(shape: Rectangle) -> Rectangle {
    shape
        .set("fill", "#000")
        .set("fill-opacity", 0.12)
        .set("stroke", "#000")
        .set("stroke-width", 1.5)
}

/// `kind start–end s, nodes [..] detail`
fn fault_tooltip(fault: &Fault, span_ms: u64) -> String {
    let nodes: Vec<String> = fault.nodes.iter().map(|n| n.to_string()).collect();
    format!(
        "{} {}\u{2013}{} s, nodes [{}] {}",
        fault.kind.name(),
        seconds(fault.start_ms),
        seconds(fault_end_ms(fault, span_ms)),
        nodes.join(", "),
        fault.detail
    )
}

// ---------------------------------------------------------------------------
// Node lanes

/// A stretch of time over which a node kept one role (and, for a leader, one
/// term).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    /// When the first sample of the stretch was taken.
    start_ms: u64,
    /// When the next different sample was taken (or the end of the axis).
    end_ms: u64,
    /// The role held throughout.
    role: Role,
    /// The term of the first sample (the only one, for a leader).
    term: u64,
}

/// One lane per node, or a note that no roles were sampled.
pub(super) fn draw_lanes(doc: &mut Document, layout: &Layout, roles: &[RoleSample]) {
    if layout.nodes.is_empty() {
        doc.append(
            text(
                PLOT_LEFT + 8.0,
                layout.lane_y(0) + 15.0,
                "no role samples recorded",
            )
            .set("font-size", 12)
            .set("fill", MUTED_COLOUR),
        );
    }
    for (index, &node) in layout.nodes.iter().enumerate() {
        let samples = samples_of_node(roles, node);
        let segments = role_segments(&samples, layout.span_ms);
        draw_lane(doc, layout, index, node, &segments);
    }
}

fn draw_lane(doc: &mut Document, layout: &Layout, index: usize, node: u64, segments: &[Segment]) {
    let y = layout.lane_y(index);
    doc.append(rect(PLOT_LEFT, y, PLOT_RIGHT - PLOT_LEFT, LANE_HEIGHT).set("fill", "#f3f3f3"));
    for segment in segments {
        draw_segment(doc, layout, y, node, segment);
    }
    doc.append(
        text(PLOT_LEFT - 8.0, y + 15.0, &format!("node {node}"))
            .set("font-size", 12)
            .set("text-anchor", "end")
            .set("font-weight", "bold"),
    );
}

fn draw_segment(doc: &mut Document, layout: &Layout, y: f64, node: u64, segment: &Segment) {
    let x0 = layout.x(segment.start_ms);
    let width = (layout.x(segment.end_ms) - x0).max(1.0);
    let tip = format!(
        "node {node}: {} (term {}) {}\u{2013}{} s",
        role_name(segment.role),
        segment.term,
        seconds(segment.start_ms),
        seconds(segment.end_ms)
    );
    let mut piece = rect(x0, y, width, LANE_HEIGHT).set("fill", role_fill(segment.role));
    if segment.role == Role::Leader {
        piece = piece.set("stroke", "#fff").set("stroke-width", 0.6);
    }
    doc.append(titled(piece, &tip));
    if segment.role == Role::Leader {
        draw_term_label(doc, x0, y, width, segment.term);
    }
}

/// "term N" at the start of a leader segment, or "TN" if that does not fit,
/// or nothing.
fn draw_term_label(doc: &mut Document, x: f64, y: f64, width: f64, term: u64) {
    let fits = |label: &str| width >= text_width(label, 10.0) + 6.0;
    let label = [format!("term {term}"), format!("T{term}")]
        .into_iter()
        .find(|label| fits(label));
    if let Some(label) = label {
        doc.append(
            text(x + 3.0, y + 15.0, &label)
                .set("font-size", 10)
                .set("fill", "#fff")
                .set("font-weight", "bold"),
        );
    }
}

/// The samples of one node, in time order.
fn samples_of_node(roles: &[RoleSample], node: u64) -> Vec<&RoleSample> {
    let mut samples: Vec<&RoleSample> = roles.iter().filter(|r| r.node == node).collect();
    samples.sort_by_key(|r| r.t_ms);
    samples
}

/// Turns time-ordered samples into segments: each sample's role holds until
/// the next sample (the last one until `end_ms`); equal consecutive roles are
/// merged, except that a leader in a new term starts a new segment.
fn role_segments(samples: &[&RoleSample], end_ms: u64) -> Vec<Segment> {
    let mut segments: Vec<Segment> = Vec::new();
    for (i, sample) in samples.iter().enumerate() {
        let until = samples
            .get(i + 1)
            .map_or(end_ms, |next| next.t_ms)
            .max(sample.t_ms);
        match segments.last_mut() {
            Some(last) if continues(last, sample) => last.end_ms = until,
            _ => segments.push(Segment {
                start_ms: sample.t_ms,
                end_ms: until,
                role: sample.role,
                term: sample.term,
            }),
        }
    }
    segments
}

fn continues(segment: &Segment, sample: &RoleSample) -> bool {
    segment.role == sample.role && (sample.role != Role::Leader || segment.term == sample.term)
}

/// The fill of a role's lane segment and legend swatch.
pub(super) fn role_fill(role: Role) -> &'static str {
    match role {
        Role::Leader => "#d95f02",
        Role::Follower => "#b4b1d8",
        Role::Candidate => "#e7298a",
        Role::Learner => "#66a61e",
        Role::Down => DOWN_FILL,
    }
}

/// A role as the legend and the hover titles name it.
pub(super) fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::Learner => "learner",
        Role::Down => "down / no answer",
    }
}

// ---------------------------------------------------------------------------
// Violations

/// Red dashed lines at the run times (`t=12345ms`) violations name, from the
/// lanes down through the panel, each with a titled marker above the lanes.
pub(super) fn draw_violation_markers(doc: &mut Document, layout: &Layout, report: &Report) {
    let marked = report.violations.iter().flat_map(|v| {
        v.times
            .iter()
            .filter_map(|t| parse_run_time(t))
            .map(move |t_ms| (t_ms, v.invariant.as_str()))
    });
    for (t_ms, invariant) in marked.take(MAX_VIOLATION_MARKERS) {
        let x = layout.x(t_ms);
        doc.append(
            line(x, layout.lanes_top, x, layout.panel_bottom)
                .set("stroke", VIOLATION_COLOUR)
                .set("stroke-width", 1.5)
                .set("stroke-dasharray", "4 3"),
        );
        let top = layout.lanes_top;
        let points = format!(
            "{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}",
            x - 5.0,
            top - 8.0,
            x + 5.0,
            top - 8.0,
            x,
            top
        );
        let marker = Polygon::new().set("points", points).set("fill", VIOLATION_COLOUR);
        let tip = format!("violation of {invariant} at {} s", seconds(t_ms));
        doc.append(titled(marker, &tip));
    }
}

/// Reads a run time written as `t=12345ms`.
fn parse_run_time(text: &str) -> Option<u64> {
    text.trim()
        .strip_prefix("t=")?
        .strip_suffix("ms")?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::tests::sample;

    #[test]
    fn equal_consecutive_roles_merge_and_new_leader_terms_split() {
        let samples = [
            sample(0, 1, Role::Follower, 1),
            sample(10, 1, Role::Follower, 1),
            sample(20, 1, Role::Leader, 2),
            sample(30, 1, Role::Leader, 2),
            sample(40, 1, Role::Leader, 5),
        ];
        let refs: Vec<&RoleSample> = samples.iter().collect();
        let segments = role_segments(&refs, 100);
        let summary: Vec<(u64, u64, Role, u64)> = segments
            .iter()
            .map(|s| (s.start_ms, s.end_ms, s.role, s.term))
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, 20, Role::Follower, 1),
                (20, 40, Role::Leader, 2),
                (40, 100, Role::Leader, 5)
            ]
        );
        assert!(role_segments(&[], 100).is_empty());
    }

    #[test]
    fn run_times_are_read_from_violation_times() {
        assert_eq!(parse_run_time("t=12345ms"), Some(12_345));
        assert_eq!(parse_run_time(" t= 7ms "), Some(7));
        assert_eq!(parse_run_time("2026-01-01T00:00:00Z"), None);
    }
}
