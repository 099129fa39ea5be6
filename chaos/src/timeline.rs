//! The timeline picture of a chaos run: one self-contained SVG, the thing a
//! person looks at first after a run.
//!
//! Everything shares one horizontal time axis, in seconds since the run
//! started (`t_ms / 1000`), from 0 to the latest time seen anywhere in the
//! history. From top to bottom the picture shows:
//!
//! 1. **Header** — the title `kairos-chaos seed N — K nodes — V violations`
//!    (the violation count in red when it is not zero), a grey line with the
//!    run's vital numbers, and a legend of the colours used below.
//! 2. **Fault labels** — each injected fault's kind name, at the fault's start,
//!    staggered over up to four rows so that labels of nearby faults do not
//!    overlap.
//! 3. **Node lanes** — one horizontal bar per node (sorted by id, labelled
//!    `node N` on the left) coloured by the role the harness saw when polling
//!    it: each sample's role holds until that node's next sample, equal
//!    consecutive roles are merged, and a new leader term starts a new piece
//!    (its term is printed on it when there is room). Each fault is a
//!    translucent yellow band behind the lanes from injection to heal; the
//!    nodes a fault hit get a dark outlined mark on their lane. Violations that
//!    name a run time (`t=12345ms`) are red dashed lines with a red marker.
//! 4. **Fire-lateness panel** — one dot per webhook delivery (x = arrival time,
//!    y = lateness in ms). The y axis is "symlog": close to linear below
//!    10 ms and logarithmic above, so the usual tens of ms and the
//!    seconds-long spikes of a failover are both readable. It reaches up to
//!    the latest delivery but at least `max(1.5 × p99, 100 ms)`, and never
//!    beyond ±1000 s; deliveries beyond are clamped on the edge in red.
//!    Dashed lines mark p50 and p99. At most 5000 dots are drawn (every k-th
//!    delivery when there are more). The fault bands continue through the
//!    panel so that lateness spikes line up with their causes.
//! 5. **Footer** — lateness p50 / p99 / max, fault counts by kind and the first
//!    few violations.
//!
//! The width is fixed (1200 px); the height grows with the number of nodes and
//! fault-label rows. Every element of the lanes and bands carries a `<title>`
//! so that a browser shows details (times, nodes, fault detail) on hover. An
//! empty history still renders a valid SVG saying "no data".

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::history::{Delivery, Fault, History, Role, RoleSample};
use crate::report::Report;

/// Width of the whole picture, px.
const WIDTH: f64 = 1200.0;
/// Where the time axis starts (room for the lane labels on its left), px.
const PLOT_LEFT: f64 = 80.0;
/// Where the time axis ends, px.
const PLOT_RIGHT: f64 = 1170.0;
/// Title, subtitle and legend.
const HEADER_HEIGHT: f64 = 86.0;
const FAULT_ROW_HEIGHT: f64 = 14.0;
const MAX_FAULT_ROWS: usize = 4;
const LANE_HEIGHT: f64 = 22.0;
const LANE_PITCH: f64 = 30.0;
/// Tick labels and axis caption under the lanes and under the panel.
const AXIS_HEIGHT: f64 = 34.0;
const PANEL_TITLE_HEIGHT: f64 = 22.0;
const PANEL_HEIGHT: f64 = 170.0;
const FOOTER_LINE_HEIGHT: f64 = 17.0;
/// Most lateness dots drawn, in-range and clamped together.
const MAX_POINTS: usize = 5000;
/// Of [`MAX_POINTS`], how many may be clamped (out-of-range) dots.
const MAX_CLAMPED_POINTS: usize = 500;
const MAX_VIOLATION_LINES: usize = 3;
const MAX_FAULT_COUNT_LINES: usize = 2;
const MAX_VIOLATION_MARKERS: usize = 200;
/// Characters per footer line before it wraps.
const FOOTER_CHARS: usize = 170;

const FONT: &str = "DejaVu Sans, Helvetica, Arial, sans-serif";
const TEXT_COLOUR: &str = "#222";
const MUTED_COLOUR: &str = "#666";
const GRID_COLOUR: &str = "#e4e4e4";
const FAULT_FILL: &str = "#fdd835";
const FAULT_TEXT: &str = "#7a5c00";
const VIOLATION_COLOUR: &str = "#c62828";
const POINT_COLOUR: &str = "#2c5d8f";
const CLAMPED_COLOUR: &str = "#d32f2f";
/// The `fill` of a down node: a grey hatch pattern defined in `<defs>`.
const DOWN_FILL: &str = "url(#down-hatch)";

/// Renders the whole timeline of a run as an SVG document.
pub fn render_svg(history: &History, report: &Report) -> String {
    let layout = Layout::new(history, report);
    let mut svg = Svg::default();
    open_document(&mut svg, layout.height);
    draw_header(&mut svg, history, report, layout.nodes.len());
    if history_is_empty(history) {
        draw_no_data(&mut svg, layout.lanes_top + 30.0);
    } else {
        draw_time_grid(&mut svg, &layout);
        draw_fault_bands(&mut svg, &layout, &history.faults);
        draw_lanes(&mut svg, &layout, &history.roles);
        draw_fault_marks(&mut svg, &layout, &history.faults);
        draw_violation_markers(&mut svg, &layout, report);
        draw_time_axis(&mut svg, &layout, layout.lanes_bottom);
        draw_lateness_panel(&mut svg, &layout, &history.deliveries, report);
        draw_time_axis(&mut svg, &layout, layout.panel_bottom);
    }
    draw_footer(&mut svg, layout.footer_top, history, report);
    svg.raw("</svg>\n");
    svg.out
}

// ---------------------------------------------------------------------------
// Layout

/// Where everything goes, computed once from the history.
struct Layout {
    /// The time axis runs from 0 to `span_ms`.
    span_ms: u64,
    /// Node ids, sorted: one lane each.
    nodes: Vec<u64>,
    /// The label row of each fault, index-aligned with `history.faults`.
    fault_rows: Vec<usize>,
    fault_labels_top: f64,
    lanes_top: f64,
    lanes_bottom: f64,
    panel_top: f64,
    panel_bottom: f64,
    footer_top: f64,
    height: f64,
}

impl Layout {
    fn new(history: &History, report: &Report) -> Layout {
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
    fn x(&self, t_ms: u64) -> f64 {
        PLOT_LEFT + (t_ms.min(self.span_ms) as f64 / self.span_ms as f64) * (PLOT_RIGHT - PLOT_LEFT)
    }

    /// The top of the lane of the `index`-th node.
    fn lane_y(&self, index: usize) -> f64 {
        self.lanes_top + index as f64 * LANE_PITCH + (LANE_PITCH - LANE_HEIGHT) / 2.0
    }

    fn lane_index(&self, node: u64) -> Option<usize> {
        self.nodes.binary_search(&node).ok()
    }
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

fn history_is_empty(history: &History) -> bool {
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
fn fault_end_ms(fault: &Fault, span_ms: u64) -> u64 {
    if fault.end_ms < fault.start_ms {
        span_ms
    } else {
        fault.end_ms
    }
}

/// The x extent of a fault's label, kept inside the plot.
fn fault_label_extent(fault: &Fault, span_ms: u64) -> (f64, f64) {
    let x = PLOT_LEFT + (fault.start_ms.min(span_ms) as f64 / span_ms as f64) * (PLOT_RIGHT - PLOT_LEFT);
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
fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size * 0.6
}

// ---------------------------------------------------------------------------
// Document, header, footer

fn open_document(svg: &mut Svg, height: f64) {
    svg.raw(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {WIDTH:.0} {height:.0}\" font-family=\"{FONT}\" font-size=\"12\" fill=\"{TEXT_COLOUR}\">\n"
    ));
    svg.raw(
        "<defs><pattern id=\"down-hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" \
         patternTransform=\"rotate(45)\"><rect width=\"6\" height=\"6\" fill=\"#cfcfcf\"/>\
         <rect width=\"3\" height=\"6\" fill=\"#999\"/></pattern></defs>\n",
    );
    svg.rect(0.0, 0.0, WIDTH, height, "fill=\"#fff\"");
}

fn draw_header(svg: &mut Svg, history: &History, report: &Report, lane_count: usize) {
    draw_title(svg, report, lane_count);
    svg.text(
        PLOT_LEFT - 60.0,
        46.0,
        &format!("font-size=\"11\" fill=\"{MUTED_COLOUR}\""),
        &subtitle(history, report),
    );
    draw_legend(svg, 68.0);
}

fn draw_title(svg: &mut Svg, report: &Report, lane_count: usize) {
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
    svg.raw(&format!(
        "<text x=\"{:.1}\" y=\"26\" font-size=\"18\" font-weight=\"bold\">kairos-chaos seed {} \u{2014} {} nodes \
         \u{2014} <tspan fill=\"{colour}\">{violations} violations</tspan></text>\n",
        PLOT_LEFT - 60.0,
        report.seed,
        nodes,
    ));
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

fn draw_legend(svg: &mut Svg, y: f64) {
    let mut x = PLOT_LEFT - 60.0;
    for role in [
        Role::Leader,
        Role::Follower,
        Role::Candidate,
        Role::Learner,
        Role::Down,
    ] {
        x = legend_item(
            svg,
            x,
            y,
            &format!("fill=\"{}\"", role_fill(role)),
            role_name(role),
        );
    }
    x += 16.0;
    x = legend_item(
        svg,
        x,
        y,
        &format!("fill=\"{FAULT_FILL}\" fill-opacity=\"0.35\""),
        "fault (injected \u{2192} healed)",
    );
    x = legend_item(svg, x, y, &fault_mark_attrs(), "node hit by the fault");
    legend_item(
        svg,
        x,
        y,
        &format!("fill=\"{VIOLATION_COLOUR}\""),
        "violation (at its run time)",
    );
}

/// One swatch and its caption; returns where the next item starts.
fn legend_item(svg: &mut Svg, x: f64, y: f64, swatch_attrs: &str, caption: &str) -> f64 {
    svg.rect(x, y - 10.0, 14.0, 12.0, swatch_attrs);
    svg.text(x + 18.0, y, "font-size=\"11\"", caption);
    x + 18.0 + text_width(caption, 11.0) + 12.0
}

fn legend_dot(svg: &mut Svg, x: f64, y: f64, colour: &str, caption: &str) -> f64 {
    svg.raw(&format!(
        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>\n",
        x + 4.0,
        y - 4.0
    ));
    svg.text(x + 11.0, y, "font-size=\"11\"", caption);
    x + 11.0 + text_width(caption, 11.0) + 12.0
}

fn draw_no_data(svg: &mut Svg, y: f64) {
    svg.text(
        WIDTH / 2.0,
        y,
        &format!("font-size=\"20\" text-anchor=\"middle\" fill=\"{MUTED_COLOUR}\""),
        "no data: the history is empty",
    );
}

fn draw_footer(svg: &mut Svg, top: f64, history: &History, report: &Report) {
    let mut y = top;
    let [p50, p99, max] = report.lateness_ms;
    let lateness = format!(
        "fire lateness: p50 {p50} ms  \u{00b7}  p99 {p99} ms  \u{00b7}  max {max} ms  ({} deliveries)",
        history.deliveries.len()
    );
    svg.text(PLOT_LEFT - 60.0, y, "", &lateness);
    for line in fault_count_lines(history, report)
        .into_iter()
        .take(MAX_FAULT_COUNT_LINES)
    {
        y += FOOTER_LINE_HEIGHT;
        svg.text(PLOT_LEFT - 60.0, y, "", &line);
    }
    for line in violation_lines(report) {
        y += FOOTER_LINE_HEIGHT;
        svg.text(
            PLOT_LEFT - 60.0,
            y,
            &format!("fill=\"{VIOLATION_COLOUR}\""),
            &line,
        );
    }
}

/// "faults: N — kind n, kind n, ...", wrapped at [`FOOTER_CHARS`].
fn fault_count_lines(history: &History, report: &Report) -> Vec<String> {
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
fn violation_lines(report: &Report) -> Vec<String> {
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

// ---------------------------------------------------------------------------
// Time axis

/// Vertical grid lines at every tick, through the lanes and the panel.
fn draw_time_grid(svg: &mut Svg, layout: &Layout) {
    let attrs = format!("stroke=\"{GRID_COLOUR}\" stroke-width=\"1\"");
    for t in ticks_ms(layout.span_ms) {
        let x = layout.x(t);
        svg.line(x, layout.lanes_top, x, layout.lanes_bottom, &attrs);
        svg.line(x, layout.panel_top, x, layout.panel_bottom, &attrs);
    }
}

/// The axis line, tick marks, labels in seconds and the caption, at `y`.
fn draw_time_axis(svg: &mut Svg, layout: &Layout, y: f64) {
    svg.line(PLOT_LEFT, y, PLOT_RIGHT, y, "stroke=\"#444\" stroke-width=\"1\"");
    let step = tick_step_ms(layout.span_ms);
    for t in ticks_ms(layout.span_ms) {
        let x = layout.x(t);
        svg.line(x, y, x, y + 4.0, "stroke=\"#444\" stroke-width=\"1\"");
        svg.text(
            x,
            y + 15.0,
            "font-size=\"10\" text-anchor=\"middle\"",
            &format_seconds(t, step),
        );
    }
    svg.text(
        PLOT_RIGHT,
        y + 28.0,
        &format!("font-size=\"10\" text-anchor=\"end\" fill=\"{MUTED_COLOUR}\""),
        "time since start of run (s)",
    );
}

/// A round tick interval giving at most 15 ticks over `span_ms`.
fn tick_step_ms(span_ms: u64) -> u64 {
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

fn ticks_ms(span_ms: u64) -> Vec<u64> {
    let step = tick_step_ms(span_ms);
    (0..=span_ms / step).map(|i| i * step).collect()
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
fn draw_fault_bands(svg: &mut Svg, layout: &Layout, faults: &[Fault]) {
    for (fault, &row) in faults.iter().zip(&layout.fault_rows) {
        let x0 = layout.x(fault.start_ms);
        let x1 = layout.x(fault_end_ms(fault, layout.span_ms)).max(x0 + 2.0);
        let label_top = layout.fault_labels_top + row as f64 * FAULT_ROW_HEIGHT;
        let tip = fault_tooltip(fault, layout.span_ms);
        let band = format!("fill=\"{FAULT_FILL}\" fill-opacity=\"0.28\"");
        svg.rect_titled(
            x0,
            label_top,
            x1 - x0,
            layout.lanes_bottom - label_top,
            &band,
            &tip,
        );
        svg.rect_titled(
            x0,
            layout.panel_top,
            x1 - x0,
            layout.panel_bottom - layout.panel_top,
            &band,
            &tip,
        );
        svg.line(
            x0,
            label_top,
            x0,
            layout.lanes_bottom,
            &format!("stroke=\"{FAULT_TEXT}\" stroke-width=\"0.8\""),
        );
        let (label_x, _) = fault_label_extent(fault, layout.span_ms);
        let label_attrs = format!("font-size=\"10\" fill=\"{FAULT_TEXT}\" font-weight=\"bold\"");
        svg.text(
            label_x,
            label_top + FAULT_ROW_HEIGHT - 3.0,
            &label_attrs,
            fault.kind.name(),
        );
    }
}

/// A dark outlined mark on the lane of every node a fault hit.
fn draw_fault_marks(svg: &mut Svg, layout: &Layout, faults: &[Fault]) {
    for fault in faults {
        let x0 = layout.x(fault.start_ms);
        let x1 = layout.x(fault_end_ms(fault, layout.span_ms)).max(x0 + 2.0);
        let tip = fault_tooltip(fault, layout.span_ms);
        for index in fault.nodes.iter().filter_map(|&node| layout.lane_index(node)) {
            let y = layout.lane_y(index);
            svg.rect_titled(x0, y - 1.5, x1 - x0, LANE_HEIGHT + 3.0, &fault_mark_attrs(), &tip);
        }
    }
}

fn fault_mark_attrs() -> String {
    "fill=\"#000\" fill-opacity=\"0.12\" stroke=\"#000\" stroke-width=\"1.5\"".to_string()
}

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

fn seconds(t_ms: u64) -> String {
    format!("{:.1}", t_ms as f64 / 1000.0)
}

// ---------------------------------------------------------------------------
// Node lanes

/// A stretch of time over which a node kept one role (and, for a leader, one
/// term).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    start_ms: u64,
    end_ms: u64,
    role: Role,
    term: u64,
}

fn draw_lanes(svg: &mut Svg, layout: &Layout, roles: &[RoleSample]) {
    if layout.nodes.is_empty() {
        let attrs = format!("font-size=\"12\" fill=\"{MUTED_COLOUR}\"");
        svg.text(
            PLOT_LEFT + 8.0,
            layout.lane_y(0) + 15.0,
            &attrs,
            "no role samples recorded",
        );
    }
    for (index, &node) in layout.nodes.iter().enumerate() {
        let samples = samples_of_node(roles, node);
        let segments = role_segments(&samples, layout.span_ms);
        draw_lane(svg, layout, index, node, &segments);
    }
}

fn draw_lane(svg: &mut Svg, layout: &Layout, index: usize, node: u64, segments: &[Segment]) {
    let y = layout.lane_y(index);
    svg.rect(
        PLOT_LEFT,
        y,
        PLOT_RIGHT - PLOT_LEFT,
        LANE_HEIGHT,
        "fill=\"#f3f3f3\"",
    );
    for segment in segments {
        draw_segment(svg, layout, y, node, segment);
    }
    svg.text(
        PLOT_LEFT - 8.0,
        y + 15.0,
        "font-size=\"12\" text-anchor=\"end\" font-weight=\"bold\"",
        &format!("node {node}"),
    );
}

fn draw_segment(svg: &mut Svg, layout: &Layout, y: f64, node: u64, segment: &Segment) {
    let x0 = layout.x(segment.start_ms);
    let width = (layout.x(segment.end_ms) - x0).max(1.0);
    let tip = format!(
        "node {node}: {} (term {}) {}\u{2013}{} s",
        role_name(segment.role),
        segment.term,
        seconds(segment.start_ms),
        seconds(segment.end_ms)
    );
    let mut attrs = format!("fill=\"{}\"", role_fill(segment.role));
    if segment.role == Role::Leader {
        attrs.push_str(" stroke=\"#fff\" stroke-width=\"0.6\"");
    }
    svg.rect_titled(x0, y, width, LANE_HEIGHT, &attrs, &tip);
    if segment.role == Role::Leader {
        draw_term_label(svg, x0, y, width, segment.term);
    }
}

/// "term N" at the start of a leader segment, or "TN" if that does not fit,
/// or nothing.
fn draw_term_label(svg: &mut Svg, x: f64, y: f64, width: f64, term: u64) {
    let fits = |label: &str| width >= text_width(label, 10.0) + 6.0;
    let label = [format!("term {term}"), format!("T{term}")]
        .into_iter()
        .find(|label| fits(label));
    if let Some(label) = label {
        svg.text(
            x + 3.0,
            y + 15.0,
            "font-size=\"10\" fill=\"#fff\" font-weight=\"bold\"",
            &label,
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

fn role_fill(role: Role) -> &'static str {
    match role {
        Role::Leader => "#d95f02",
        Role::Follower => "#b4b1d8",
        Role::Candidate => "#e7298a",
        Role::Learner => "#66a61e",
        Role::Down => DOWN_FILL,
    }
}

fn role_name(role: Role) -> &'static str {
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

/// Red dashed lines at the run times (`t=12345ms`) violations name.
fn draw_violation_markers(svg: &mut Svg, layout: &Layout, report: &Report) {
    let marked = report.violations.iter().flat_map(|v| {
        v.times
            .iter()
            .filter_map(|t| parse_run_time(t))
            .map(move |t_ms| (t_ms, v.invariant.as_str()))
    });
    let line_attrs = format!("stroke=\"{VIOLATION_COLOUR}\" stroke-width=\"1.5\" stroke-dasharray=\"4 3\"");
    for (t_ms, invariant) in marked.take(MAX_VIOLATION_MARKERS) {
        let x = layout.x(t_ms);
        svg.line(x, layout.lanes_top, x, layout.panel_bottom, &line_attrs);
        let top = layout.lanes_top;
        svg.raw(&format!(
            "<polygon points=\"{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}\" fill=\"{VIOLATION_COLOUR}\"><title>{}</title></polygon>\n",
            x - 5.0,
            top - 8.0,
            x + 5.0,
            top - 8.0,
            x,
            top,
            xml_escape(&format!("violation of {invariant} at {} s", seconds(t_ms))),
        ));
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

// ---------------------------------------------------------------------------
// Fire-lateness panel

/// Below about this many ms the lateness axis is close to linear, above it
/// close to logarithmic (a "symlog" scale), so that both the usual few tens
/// of ms and the seconds-long spikes of a failover are readable.
const SYMLOG_LINEAR_MS: f64 = 10.0;
/// The lateness axis never reaches beyond ±1000 s; deliveries beyond are
/// drawn clamped on the edge, in red.
const LATENESS_CAP_MS: i64 = 1_000_000;
/// Tick labels on the lateness axis closer than this are left out, px.
const MIN_TICK_GAP: f64 = 11.0;

/// The y range of the lateness panel, ms, from `low` (0 unless some delivery
/// came early) to `high`, on a symlog scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LatenessScale {
    low: i64,
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

fn draw_lateness_panel(svg: &mut Svg, layout: &Layout, deliveries: &[Delivery], report: &Report) {
    let scale = LatenessScale::new(report, deliveries);
    draw_panel_heading(svg, layout);
    let frame = format!("fill=\"none\" stroke=\"{GRID_COLOUR}\"");
    svg.rect(
        PLOT_LEFT,
        layout.panel_top,
        PLOT_RIGHT - PLOT_LEFT,
        layout.panel_bottom - layout.panel_top,
        &frame,
    );
    draw_lateness_ticks(svg, layout, &scale);
    draw_percentile_lines(svg, layout, &scale, report);
    if deliveries.is_empty() {
        let attrs = format!("font-size=\"12\" fill=\"{MUTED_COLOUR}\"");
        svg.text(
            PLOT_LEFT + 8.0,
            layout.panel_top + 20.0,
            &attrs,
            "no webhook deliveries recorded",
        );
        return;
    }
    let (inside, outside): (Vec<&Delivery>, Vec<&Delivery>) =
        deliveries.iter().partition(|d| scale.contains(d.lateness_ms));
    let inside = every_kth(&inside, MAX_POINTS - MAX_CLAMPED_POINTS.min(outside.len()));
    let outside_drawn = every_kth(&outside, MAX_CLAMPED_POINTS);
    draw_points(svg, layout, &scale, &inside, POINT_COLOUR);
    draw_points(svg, layout, &scale, &outside_drawn, CLAMPED_COLOUR);
    draw_panel_note(
        svg,
        layout,
        deliveries,
        outside.len(),
        inside.len() + outside_drawn.len(),
    );
}

/// The panel's title and the legend of its dots.
fn draw_panel_heading(svg: &mut Svg, layout: &Layout) {
    let title = "fire lateness (ms, log scale)";
    let y = layout.panel_top - 8.0;
    svg.text(PLOT_LEFT - 60.0, y, "font-weight=\"bold\"", title);
    let x = PLOT_LEFT - 60.0 + text_width(title, 12.0) + 24.0;
    let x = legend_dot(svg, x, y, POINT_COLOUR, "delivery (arrival time, lateness)");
    legend_dot(svg, x, y, CLAMPED_COLOUR, "beyond the axis, clamped");
}

fn lateness_y(layout: &Layout, scale: &LatenessScale, lateness_ms: i64) -> f64 {
    layout.panel_bottom - scale.fraction(lateness_ms) * (layout.panel_bottom - layout.panel_top)
}

/// Grid lines and labels, leaving out labels that would overlap.
fn draw_lateness_ticks(svg: &mut Svg, layout: &Layout, scale: &LatenessScale) {
    let mut drawn: Vec<f64> = Vec::new();
    for value in scale.ticks() {
        let y = lateness_y(layout, scale, value);
        if drawn.iter().any(|&other| (other - y).abs() < MIN_TICK_GAP) {
            continue;
        }
        drawn.push(y);
        let stroke = if value == 0 { "#999" } else { GRID_COLOUR };
        svg.line(
            PLOT_LEFT,
            y,
            PLOT_RIGHT,
            y,
            &format!("stroke=\"{stroke}\" stroke-width=\"1\""),
        );
        svg.text(
            PLOT_LEFT - 6.0,
            y + 3.5,
            "font-size=\"10\" text-anchor=\"end\"",
            &format!("{value} ms"),
        );
    }
}

fn draw_percentile_lines(svg: &mut Svg, layout: &Layout, scale: &LatenessScale, report: &Report) {
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
        svg.line(
            PLOT_LEFT,
            y,
            PLOT_RIGHT,
            y,
            "stroke=\"#555\" stroke-width=\"1\" stroke-dasharray=\"6 4\"",
        );
        let attrs = format!("font-size=\"10\" fill=\"{MUTED_COLOUR}\"");
        svg.text(PLOT_RIGHT + 3.0, y + label_dy, &attrs, name);
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

fn draw_points(svg: &mut Svg, layout: &Layout, scale: &LatenessScale, points: &[&Delivery], colour: &str) {
    for delivery in points {
        let x = layout.x(delivery.t_ms);
        let y = lateness_y(layout, scale, delivery.lateness_ms);
        svg.raw(&format!(
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"1.8\" fill=\"{colour}\" fill-opacity=\"0.65\"/>\n"
        ));
    }
}

/// A note above the panel's right corner on clamping and sampling.
fn draw_panel_note(svg: &mut Svg, layout: &Layout, deliveries: &[Delivery], clamped: usize, drawn: usize) {
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
    let attrs = format!("font-size=\"10\" text-anchor=\"end\" fill=\"{CLAMPED_COLOUR}\"");
    svg.text(
        PLOT_RIGHT,
        layout.panel_top - 8.0,
        &attrs,
        &notes.join("  \u{00b7}  "),
    );
}

// ---------------------------------------------------------------------------
// SVG building

/// The document being built.
#[derive(Default)]
struct Svg {
    out: String,
}

impl Svg {
    /// Appends markup as is.
    fn raw(&mut self, markup: &str) {
        self.out.push_str(markup);
    }

    /// A rectangle; `attrs` must already be valid markup.
    fn rect(&mut self, x: f64, y: f64, width: f64, height: f64, attrs: &str) {
        let _ = writeln!(
            self.out,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{height:.1}\" {attrs}/>"
        );
    }

    /// A rectangle with a hover tooltip (escaped here).
    fn rect_titled(&mut self, x: f64, y: f64, width: f64, height: f64, attrs: &str, title: &str) {
        let _ = writeln!(
            self.out,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{height:.1}\" {attrs}><title>{}</title></rect>",
            xml_escape(title)
        );
    }

    fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, attrs: &str) {
        let _ = writeln!(
            self.out,
            "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" {attrs}/>"
        );
    }

    /// A text element; the text is escaped here, `attrs` must already be valid.
    fn text(&mut self, x: f64, y: f64, attrs: &str, text: &str) {
        let _ = writeln!(
            self.out,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" {attrs}>{}</text>",
            xml_escape(text)
        );
    }
}

/// Escapes text for XML content and attribute values, and drops control
/// characters XML does not allow.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{FaultKind, Op, OpKind, Outcome};
    use crate::report::Violation;

    /// The dots in the lateness panel's legend.
    const LEGEND_DOTS: usize = 2;

    /// Checks that `svg` is one well-formed element tree: every tag closed in
    /// order, attribute values quoted, and every `&` an entity.
    fn assert_well_formed(svg: &str) {
        let mut stack: Vec<String> = Vec::new();
        let mut roots = 0;
        let mut rest = svg;
        while let Some(open) = rest.find('<') {
            assert_text_ok(&rest[..open]);
            let close = rest[open..].find('>').expect("unterminated tag") + open;
            let tag = &rest[open + 1..close];
            assert!(!tag.contains('<'), "'<' inside tag: {tag}");
            assert_quotes_balanced(tag);
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(
                    stack.pop().as_deref(),
                    Some(name.trim()),
                    "mismatched close tag </{name}>"
                );
            } else {
                let name: String = tag
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != '/')
                    .collect();
                assert!(!name.is_empty(), "empty tag name");
                if stack.is_empty() {
                    roots += 1;
                }
                if !tag.ends_with('/') {
                    stack.push(name);
                }
            }
            rest = &rest[close + 1..];
        }
        assert_text_ok(rest);
        assert!(stack.is_empty(), "unclosed tags: {stack:?}");
        assert_eq!(roots, 1, "expected exactly one root element");
    }

    fn assert_text_ok(text: &str) {
        assert!(!text.contains('>'), "raw '>' in text: {text}");
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..];
            let known = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"];
            assert!(
                known.iter().any(|e| entity.starts_with(e)),
                "bare '&' in text: {text}"
            );
        }
    }

    fn assert_quotes_balanced(tag: &str) {
        assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes in <{tag}>");
        for (i, _) in tag.match_indices('&') {
            let entity = &tag[i..];
            let known = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"];
            assert!(
                known.iter().any(|e| entity.starts_with(e)),
                "bare '&' in tag: {tag}"
            );
        }
    }

    fn sample(t_ms: u64, node: u64, role: Role, term: u64) -> RoleSample {
        RoleSample {
            t_ms,
            node,
            role,
            term,
        }
    }

    fn delivery(i: u64, lateness_ms: i64) -> Delivery {
        Delivery {
            key: format!("job-{i}:2026-01-01T00:00:{:02}Z", i % 60),
            job_id: format!("job-{}", i % 7),
            run_id: i,
            attempt: 1,
            nominal_unix_ms: 1_767_225_600_000 + i as i64 * 1000,
            t_ms: i * 600,
            lateness_ms,
        }
    }

    /// Three nodes over a minute: node 1 leads, is killed, node 2 takes over.
    fn synthetic_history() -> History {
        let mut roles = Vec::new();
        for t in (0..=60_000).step_by(1000) {
            let (r1, r2) = match t {
                0..=19_000 => (Role::Leader, Role::Follower),
                20_000..=29_000 => (Role::Down, Role::Candidate),
                30_000..=40_000 => (Role::Follower, Role::Leader),
                _ => (Role::Follower, Role::Leader),
            };
            let term2 = if t > 40_000 { 4 } else { 3 };
            roles.push(sample(t, 1, r1, if r1 == Role::Leader { 2 } else { 3 }));
            roles.push(sample(t, 2, r2, term2));
            let r3 = if (45_000..50_000).contains(&t) {
                Role::Learner
            } else {
                Role::Follower
            };
            roles.push(sample(t, 3, r3, term2));
        }
        let faults = vec![
            Fault {
                kind: FaultKind::KillLeader,
                nodes: vec![1],
                start_ms: 20_000,
                end_ms: 30_000,
                detail: "kill -9 <pid 123> & restart".to_string(),
            },
            Fault {
                kind: FaultKind::SlowLinks,
                nodes: vec![],
                start_ms: 22_000,
                end_ms: 45_000,
                detail: "delay 120 ms".to_string(),
            },
        ];
        let deliveries = (0..100)
            .map(|i| delivery(i, if i == 40 { 5_000 } else { 20 + (i as i64 % 30) }))
            .collect();
        let ops = vec![Op {
            seq: 0,
            kind: OpKind::Create,
            job_id: "job-1".to_string(),
            node: 1,
            start_ms: 100,
            end_ms: 150,
            outcome: Outcome::Ok,
            version: Some(1),
            run_id: None,
            paused: None,
        }];
        History {
            ops,
            deliveries,
            faults,
            roles,
        }
    }

    fn synthetic_report(history: &History) -> Report {
        let mut report = Report {
            seed: 424242,
            runtime: "process".to_string(),
            nodes: 3,
            ..Report::default()
        };
        report.count(history);
        report.violations.push(
            Violation::new("no_double_fire", "job \"job-3\" fired twice <at once> & more").time("t=25000ms"),
        );
        report
    }

    #[test]
    fn empty_history_renders_valid_svg_saying_no_data() {
        let svg = render_svg(&History::default(), &Report::default());
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("no data"));
        assert!(svg.contains("kairos-chaos seed 0"));
        assert_well_formed(&svg);
    }

    #[test]
    fn synthetic_history_shows_nodes_faults_seed_and_violation() {
        let history = synthetic_history();
        let report = synthetic_report(&history);
        let svg = render_svg(&history, &report);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("seed 424242"));
        assert!(svg.contains("1 violations"));
        assert!(svg.contains(VIOLATION_COLOUR));
        for node in ["node 1", "node 2", "node 3"] {
            assert!(svg.contains(&format!(">{node}<")), "missing lane label {node}");
        }
        assert!(svg.contains(">kill_leader<"));
        assert!(svg.contains(">slow_links<"));
        assert!(svg.contains("&lt;pid 123&gt; &amp; restart"));
        assert!(svg.contains("&quot;job-3&quot;"));
        assert!(svg.contains(">term 3<"), "leader term label missing");
        assert_eq!(
            svg.matches("<circle").count(),
            100 + LEGEND_DOTS,
            "one dot per delivery"
        );
        assert_well_formed(&svg);
    }

    #[test]
    fn history_without_roles_or_deliveries_still_renders() {
        let history = History {
            faults: vec![Fault {
                kind: FaultKind::FullRestart,
                nodes: vec![9],
                start_ms: 5,
                end_ms: 0,
                detail: String::new(),
            }],
            ..History::default()
        };
        let svg = render_svg(&history, &Report::default());
        assert!(svg.contains("no role samples recorded"));
        assert!(svg.contains("no webhook deliveries recorded"));
        assert!(svg.contains(">full_restart<"));
        assert!(
            svg.contains("faults: 1 \u{2014} full_restart 1"),
            "counted from the history"
        );
        assert_well_formed(&svg);
    }

    #[test]
    fn many_deliveries_are_sampled_to_at_most_5000_points() {
        let history = History {
            deliveries: (0..12_345)
                .map(|i| delivery(i, if i % 1000 == 0 { 5_000_000 } else { 10 }))
                .collect(),
            roles: vec![sample(0, 1, Role::Leader, 1)],
            ..History::default()
        };
        let mut report = Report::default();
        report.count(&history);
        let svg = render_svg(&history, &report);
        let points = svg.matches("<circle").count() - LEGEND_DOTS;
        assert!(points <= MAX_POINTS, "{points} points drawn");
        assert!(points > MAX_POINTS / 3, "{points} points drawn");
        assert!(
            svg.contains(&format!("fill=\"{CLAMPED_COLOUR}\" fill-opacity")),
            "clamped points drawn"
        );
        assert_well_formed(&svg);
    }

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
        };
        let faults = [fault(0), fault(500), fault(1000), fault(60_000)];
        let rows = assign_fault_label_rows(&faults, 100_000);
        assert_eq!(rows, vec![0, 1, 2, 0]);
    }

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
    fn xml_escape_escapes_markup_and_drops_control_characters() {
        assert_eq!(xml_escape("a<b>&\"c'\u{1}"), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(parse_run_time("t=12345ms"), Some(12_345));
        assert_eq!(parse_run_time("2026-01-01T00:00:00Z"), None);
    }
}
