//! Line plots as hand-written SVG: axes, one polyline per target, a legend.

use std::fmt::Write as _;

/// One line of a plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    /// (x, y) points; x > 0 (the x axis is logarithmic).
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Where the x ticks go and how they read (e.g. `(65536, "64k")`).
    pub x_ticks: Vec<(f64, String)>,
    pub series: Vec<Series>,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 75.0;
const RIGHT: f64 = 25.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 55.0;
const Y_TICKS: usize = 5;

/// A fixed colour per well-known target, so every plot reads the same.
fn colour(label: &str, index: usize) -> &'static str {
    const OTHERS: [&str; 5] = ["#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"];
    match label {
        "plain" => "#555555",
        "fuse-export" => "#1f77b4",
        "qsd" => "#d62728",
        _ => OTHERS[index % OTHERS.len()],
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The smallest "round" step (1, 2, 2.5, 5 × 10^k) that covers `max` in
/// `ticks` steps.
fn nice_step(max: f64, ticks: usize) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / ticks as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|factor| factor * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// `950`, `12k`, `1.5M`: tick labels that fit.
pub fn tick_label(value: f64) -> String {
    let abs = value.abs();
    let (scaled, suffix) = if abs >= 1e6 {
        (value / 1e6, "M")
    } else if abs >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    let text = format!("{scaled:.1}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{suffix}")
}

pub fn render(plot: &Plot) -> String {
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let log_positions: Vec<f64> = plot
        .x_ticks
        .iter()
        .map(|(x, _)| x.log2())
        .chain(
            plot.series
                .iter()
                .flat_map(|s| s.points.iter().map(|(x, _)| x.log2())),
        )
        .filter(|x| x.is_finite())
        .collect();
    let x_min = log_positions.iter().copied().fold(f64::INFINITY, f64::min);
    let x_max = log_positions
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let x_pos = |x: f64| {
        if x_max.partial_cmp(&x_min) != Some(std::cmp::Ordering::Greater) {
            LEFT + plot_width / 2.0
        } else {
            LEFT + (x.log2() - x_min) / (x_max - x_min) * plot_width
        }
    };
    let y_data_max = plot
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|(_, y)| *y))
        .filter(|y| y.is_finite())
        .fold(0.0, f64::max);
    let step = nice_step(y_data_max, Y_TICKS);
    let y_top = (y_data_max / step).ceil().max(1.0) * step;
    let y_pos = |y: f64| TOP + plot_height - y / y_top * plot_height;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(&plot.title)
    );

    // Grid and y ticks.
    let mut value = 0.0;
    while value <= y_top + step / 2.0 {
        let y = y_pos(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/>"##,
            LEFT + plot_width
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            tick_label(value)
        );
        value += step;
    }
    // x ticks.
    for (x, label) in &plot.x_ticks {
        let px = x_pos(*x);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#f0f0f0"/>"##,
            TOP + plot_height
        );
        let _ = writeln!(
            svg,
            r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            TOP + plot_height + 18.0,
            escape(label)
        );
    }
    // Axes and their labels.
    let _ = writeln!(
        svg,
        r#"<path d="M{LEFT} {TOP} V{:.1} H{:.1}" fill="none" stroke="black"/>"#,
        TOP + plot_height,
        LEFT + plot_width
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + plot_width / 2.0,
        HEIGHT - 12.0,
        escape(&plot.x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        TOP + plot_height / 2.0,
        TOP + plot_height / 2.0,
        escape(&plot.y_label)
    );

    // Lines, markers and the legend (a row under the title).
    let mut legend_x = LEFT;
    for (index, series) in plot.series.iter().enumerate() {
        let colour = colour(&series.label, index);
        let dash = if series.label == "plain" {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let mut points: Vec<(f64, f64)> = series
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && *x > 0.0 && y.is_finite())
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let coordinates: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", x_pos(*x), y_pos(*y)))
            .collect();
        if coordinates.len() > 1 {
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#,
                coordinates.join(" ")
            );
        }
        for (x, y) in &points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{colour}"><title>{}: {}</title></circle>"#,
                x_pos(*x),
                y_pos(*y),
                escape(&series.label),
                tick_label(*y)
            );
        }
        let _ = writeln!(
            svg,
            r#"<line x1="{legend_x:.1}" y1="45" x2="{:.1}" y2="45" stroke="{colour}" stroke-width="2"{dash}/>"#,
            legend_x + 22.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="49">{}</text>"#,
            legend_x + 27.0,
            escape(&series.label)
        );
        legend_x += 40.0 + 7.0 * series.label.chars().count() as f64;
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_labels_are_round() {
        assert_eq!(nice_step(100.0, 5), 20.0);
        assert_eq!(nice_step(61_000.0, 5), 20_000.0);
        assert_eq!(nice_step(0.0, 5), 1.0);
        assert_eq!(tick_label(0.0), "0");
        assert_eq!(tick_label(12_000.0), "12k");
        assert_eq!(tick_label(1_500_000.0), "1.5M");
        assert_eq!(tick_label(2.5), "2.5");
    }

    #[test]
    fn renders_lines_legend_and_escapes() {
        let plot = Plot {
            title: "IOPS <4k>".into(),
            x_label: "queue depth".into(),
            y_label: "IOPS".into(),
            x_ticks: vec![(1.0, "1".into()), (32.0, "32".into())],
            series: vec![
                Series {
                    label: "plain".into(),
                    points: vec![(1.0, 10_000.0), (32.0, 60_000.0)],
                },
                Series {
                    label: "qsd".into(),
                    points: vec![(1.0, 5_000.0)],
                },
            ],
        };
        let svg = render(&plot);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("IOPS &lt;4k&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains(">qsd</text>"));
        // Empty plots still render.
        let empty = render(&Plot {
            series: Vec::new(),
            x_ticks: Vec::new(),
            ..plot
        });
        assert!(empty.contains("</svg>"));
    }
}
