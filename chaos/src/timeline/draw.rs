//! The few shapes the timeline is drawn with, as [`svg`] elements.
//!
//! Every coordinate is rounded to a tenth of a pixel (finer is invisible and
//! only makes the file larger). Every piece of text, whether drawn or a hover
//! title, goes through [`clean`]: the [`svg`] crate escapes markup, and XML
//! also forbids most control characters, which a fault's detail or a
//! violation's message could carry.

use svg::node::element::{Circle, Line, Rectangle, Text, Title};
use svg::Node;

/// A coordinate rounded to 0.1 px.
pub(super) fn px(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// A rectangle; the caller sets its paint.
pub(super) fn rect(x: f64, y: f64, width: f64, height: f64) -> Rectangle {
    Rectangle::new()
        .set("x", px(x))
        .set("y", px(y))
        .set("width", px(width))
        .set("height", px(height))
}

/// A line; the caller sets its stroke.
pub(super) fn line(x1: f64, y1: f64, x2: f64, y2: f64) -> Line {
    Line::new()
        .set("x1", px(x1))
        .set("y1", px(y1))
        .set("x2", px(x2))
        .set("y2", px(y2))
}

/// A text anchored at `(x, y)` (its baseline's start, unless `text-anchor` says otherwise).
pub(super) fn text(x: f64, y: f64, content: &str) -> Text {
    Text::new(clean(content)).set("x", px(x)).set("y", px(y))
}

/// A filled dot of radius `r`.
pub(super) fn dot(cx: f64, cy: f64, r: f64, colour: &str) -> Circle {
    Circle::new()
        .set("cx", px(cx))
        .set("cy", px(cy))
        .set("r", r)
        .set("fill", colour)
}

/// `element` with a hover title (a `<title>` child, which browsers show as a tooltip).
pub(super) fn titled<T: Node>(mut element: T, title: &str) -> T {
    element.append(Title::new(clean(title)));
    element
}

/// `text` with tabs and line breaks as spaces and other control characters
/// dropped, which XML does not allow.
pub(super) fn clean(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            '\t' | '\n' | '\r' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_drops_control_characters_and_keeps_markup_for_the_crate_to_escape() {
        assert_eq!(clean("a<b>&\"c'\u{1}\td"), "a<b>&\"c' d");
        let markup = titled(rect(0.04, 1.25, 2.0, 3.0), "a<b>&\u{1}").to_string();
        assert!(markup.contains("<title>a&lt;b&gt;&amp;</title>"), "{markup}");
        assert!(
            markup.contains(r#"x="0""#) && markup.contains(r#"y="1.3""#),
            "{markup}"
        );
    }
}
