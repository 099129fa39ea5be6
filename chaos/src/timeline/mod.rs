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
//!
//! The document is built with the [`svg`] crate, which escapes text and
//! attribute values. [`layout`] computes where everything goes; [`text`]
//! draws the header and footer, [`lanes`] everything against the time axis
//! above the panel (axis, fault bands, lanes, violation markers), and
//! [`lateness`] the panel; [`draw`] holds the few shapes they share.
//!
//! # IMPLEMENTATION CAVEATS
//!
//! - Text widths are estimated from the character count (no font metrics),
//!   so a label can overlap its neighbour in a font much wider than
//!   DejaVu Sans.
//! - At most 5000 dots, 200 violation markers and 3 violation lines are
//!   drawn; report.json and history.json hold everything.

mod draw;
mod lanes;
mod lateness;
mod layout;
mod text;

use svg::node::element::{Definitions, Pattern};
use svg::{Document, Node};

use crate::history::History;
use crate::report::Report;
use draw::rect;
use layout::{history_is_empty, Layout};

/// Width of the whole picture, px.
const WIDTH: f64 = 1200.0;
/// Where the time axis starts (room for the lane labels on its left), px.
const PLOT_LEFT: f64 = 80.0;
/// Where the time axis ends, px.
const PLOT_RIGHT: f64 = 1170.0;

/// Font of every text (the file names no web font).
const FONT: &str = "DejaVu Sans, Helvetica, Arial, sans-serif";
/// Colour of ordinary text.
const TEXT_COLOUR: &str = "#222";
/// Colour of secondary text (subtitle, captions, notes).
const MUTED_COLOUR: &str = "#666";
/// Colour of grid lines and the panel's frame.
const GRID_COLOUR: &str = "#e4e4e4";
/// Fill of the fault bands (translucent).
const FAULT_FILL: &str = "#fdd835";
/// Colour of everything that shows a violation.
const VIOLATION_COLOUR: &str = "#c62828";
/// Colour of a delivery's dot within the lateness axis.
const POINT_COLOUR: &str = "#2c5d8f";
/// Colour of a delivery's dot clamped on the lateness axis's edge.
const CLAMPED_COLOUR: &str = "#d32f2f";
/// Id of the grey hatch pattern a down node is filled with.
const DOWN_HATCH_ID: &str = "down-hatch";
/// The `fill` of a down node: the hatch pattern defined in `<defs>`.
const DOWN_FILL: &str = "url(#down-hatch)";

/// Renders the whole timeline of a run as an SVG document.
pub fn render_svg(history: &History, report: &Report) -> String {
    let layout = Layout::new(history, report);
    let mut doc = open_document(layout.height);
    text::draw_header(&mut doc, history, report, layout.nodes.len());
    if history_is_empty(history) {
        text::draw_no_data(&mut doc, layout.lanes_top + 30.0);
    } else {
        lanes::draw_time_grid(&mut doc, &layout);
        lanes::draw_fault_bands(&mut doc, &layout, &history.faults);
        lanes::draw_lanes(&mut doc, &layout, &history.roles);
        lanes::draw_fault_marks(&mut doc, &layout, &history.faults);
        lanes::draw_violation_markers(&mut doc, &layout, report);
        lanes::draw_time_axis(&mut doc, &layout, layout.lanes_bottom);
        lateness::draw_lateness_panel(&mut doc, &layout, &history.deliveries, report);
        lanes::draw_time_axis(&mut doc, &layout, layout.panel_bottom);
    }
    text::draw_footer(&mut doc, layout.footer_top, history, report);
    format!("{doc}\n")
}

/// The root element with the default font and colour, the hatch pattern of
/// down nodes, and a white background.
fn open_document(height: f64) -> Document {
    let height = height.round();
    let hatch = Pattern::new()
        .set("id", DOWN_HATCH_ID)
        .set("width", 6)
        .set("height", 6)
        .set("patternUnits", "userSpaceOnUse")
        .set("patternTransform", "rotate(45)")
        .add(rect(0.0, 0.0, 6.0, 6.0).set("fill", "#cfcfcf"))
        .add(rect(0.0, 0.0, 3.0, 6.0).set("fill", "#999"));
    let mut doc = Document::new()
        .set("width", WIDTH)
        .set("height", height)
        .set("viewBox", (0.0, 0.0, WIDTH, height))
        .set("font-family", FONT)
        .set("font-size", 12)
        .set("fill", TEXT_COLOUR)
        .add(Definitions::new().add(hatch));
    doc.append(rect(0.0, 0.0, WIDTH, height).set("fill", "#fff"));
    doc
}

/// A run time in seconds with one decimal, as the hover titles show it.
fn seconds(t_ms: u64) -> String {
    format!("{:.1}", t_ms as f64 / 1000.0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::history::{Delivery, Fault, FaultKind, Op, OpKind, Outcome, Role, RoleSample};
    use crate::report::Violation;

    /// The dots in the lateness panel's legend.
    const LEGEND_DOTS: usize = 2;

    /// Parses `svg` as XML (so it is well-formed: tags closed in order,
    /// attributes quoted, entities valid) and gives the text of every
    /// element named `tag`, whitespace collapsed.
    fn texts_of(svg: &str, tag: &str) -> Vec<String> {
        let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("not well-formed XML: {e}"));
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        doc.descendants()
            .filter(|n| n.tag_name().name() == tag)
            .map(|n| {
                let text: String = n
                    .descendants()
                    .filter(|d| d.is_text())
                    .filter_map(|d| d.text())
                    .collect();
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            })
            .collect()
    }

    /// A role sample, for the timeline's and the checkers' tests.
    pub(crate) fn sample(t_ms: u64, node: u64, role: Role, term: u64) -> RoleSample {
        RoleSample {
            t_ms,
            node,
            role,
            term,
        }
    }

    pub(in crate::timeline) fn delivery(i: u64, lateness_ms: i64) -> Delivery {
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
                leadership: None,
                misbehaviour: None,
            },
            Fault {
                kind: FaultKind::SlowLinks,
                nodes: vec![],
                start_ms: 22_000,
                end_ms: 45_000,
                detail: "delay 120 ms".to_string(),
                leadership: None,
                misbehaviour: None,
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
            trace_id: String::new(),
            event_id: String::new(),
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
        let texts = texts_of(&svg, "text");
        assert!(
            texts.contains(&"no data: the history is empty".to_string()),
            "{texts:?}"
        );
        assert!(
            texts.iter().any(|t| t.starts_with("kairos-chaos seed 0 ")),
            "{texts:?}"
        );
    }

    #[test]
    fn synthetic_history_shows_nodes_faults_seed_and_violation() {
        let history = synthetic_history();
        let report = synthetic_report(&history);
        let svg = render_svg(&history, &report);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        let texts = texts_of(&svg, "text");
        let has_text = |wanted: &str| texts.iter().any(|t| t == wanted);
        assert!(
            has_text("kairos-chaos seed 424242 \u{2014} 3 nodes \u{2014} 1 violations"),
            "{texts:?}"
        );
        assert!(svg.contains(VIOLATION_COLOUR));
        for node in ["node 1", "node 2", "node 3"] {
            assert!(has_text(node), "missing lane label {node}");
        }
        assert!(has_text("kill_leader"));
        assert!(has_text("slow_links"));
        assert!(has_text("term 3"), "leader term label missing");
        // Markup in a message is escaped, and reads back as written.
        assert!(svg.contains("&lt;pid 123&gt; &amp; restart"));
        assert!(has_text(
            "VIOLATION [no_double_fire] job \"job-3\" fired twice <at once> & more"
        ));
        assert_eq!(
            svg.matches("<circle").count(),
            100 + LEGEND_DOTS,
            "one dot per delivery"
        );
    }

    #[test]
    fn hover_titles_name_roles_terms_faults_and_violations() {
        let history = synthetic_history();
        let report = synthetic_report(&history);
        let titles = texts_of(&render_svg(&history, &report), "title");
        let has_title = |wanted: &str| titles.iter().any(|t| t == wanted);
        assert!(
            has_title("node 1: leader (term 2) 0.0\u{2013}20.0 s"),
            "{titles:?}"
        );
        assert!(
            has_title("node 1: down / no answer (term 3) 20.0\u{2013}30.0 s"),
            "{titles:?}"
        );
        assert!(
            has_title("node 2: leader (term 4) 41.0\u{2013}60.0 s"),
            "{titles:?}"
        );
        assert!(
            has_title("node 3: learner (term 4) 45.0\u{2013}50.0 s"),
            "{titles:?}"
        );
        let kill = "kill_leader 20.0\u{2013}30.0 s, nodes [1] kill -9 <pid 123> & restart";
        // The band behind the lanes, the band behind the panel, node 1's mark.
        assert_eq!(titles.iter().filter(|t| *t == kill).count(), 3, "{titles:?}");
        assert!(
            has_title("slow_links 22.0\u{2013}45.0 s, nodes [] delay 120 ms"),
            "{titles:?}"
        );
        assert!(has_title("violation of no_double_fire at 25.0 s"), "{titles:?}");
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
                leadership: None,
                misbehaviour: None,
            }],
            ..History::default()
        };
        let svg = render_svg(&history, &Report::default());
        let texts = texts_of(&svg, "text");
        let has_text = |wanted: &str| texts.iter().any(|t| t == wanted);
        assert!(has_text("no role samples recorded"));
        assert!(has_text("no webhook deliveries recorded"));
        assert!(has_text("full_restart"));
        assert!(
            has_text("faults: 1 \u{2014} full_restart 1"),
            "counted from the history"
        );
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
        texts_of(&svg, "text");
        let points = svg.matches("<circle").count() - LEGEND_DOTS;
        assert!(points <= lateness::MAX_POINTS, "{points} points drawn");
        assert!(points > lateness::MAX_POINTS / 3, "{points} points drawn");
        assert!(
            svg.contains(&format!("fill=\"{CLAMPED_COLOUR}\" fill-opacity")),
            "clamped points drawn"
        );
    }
}
