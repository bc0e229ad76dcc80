//! The SVG plots (plotters): one line per target through the medians, and
//! each point's min–max spread over the repetitions as an error bar.

use plotters::coord::combinators::BindKeyPoints as _;
use plotters::prelude::*;

use super::plan::{Engine, KIB, Metric, Pattern, Workload, size_short};
use super::results::{LabResults, Summary};

/// One line of a plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    /// (x, spread of y); x > 0 (the x axis is logarithmic).
    pub points: Vec<(f64, Summary)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plot {
    pub file: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Block sizes (`4k`, `1M`) rather than counts on the x axis.
    pub x_is_size: bool,
    pub series: Vec<Series>,
}

/// Medians and spreads for the matrix's io_uring fio jobs of `pattern`, as
/// one series per target: MiB/s against block size `by_size`, else IOPS of
/// the 4k jobs against queue depth.
fn matrix_series(results: &LabResults, pattern: Pattern, by_size: bool) -> Vec<Series> {
    let metric = if by_size {
        Metric::MibPerSec
    } else {
        Metric::Iops
    };
    let mut series: Vec<Series> = Vec::new();
    for (group_index, group) in results.plan.groups.iter().enumerate() {
        let job = match group.workload {
            Workload::Fio(job) if group.name == "matrix" => job,
            _ => continue,
        };
        if job.pattern != pattern
            || job.engine != Engine::IoUring
            || !(by_size || job.block_size == 4 * KIB)
        {
            continue;
        }
        let x = if by_size {
            job.block_size as f64
        } else {
            f64::from(job.iodepth)
        };
        for (target_index, target) in group.targets.iter().enumerate() {
            let case = results.case(group_index, target_index);
            let Some(y) = case.summary(|m, _| m.value(metric)) else {
                continue;
            };
            let label = target.label();
            match series.iter_mut().find(|s| s.label == label) {
                Some(existing) => existing.points.push((x, y)),
                None => series.push(Series {
                    label,
                    points: vec![(x, y)],
                }),
            }
        }
    }
    series
}

/// Throughput against block size and IOPS against queue depth.
pub fn plots(results: &LabResults) -> Vec<Plot> {
    let sequential = ", O_DIRECT, io_uring QD16";
    let plots = [
        (
            Pattern::SeqRead,
            "throughput-seq-read.svg",
            "Sequential read",
            sequential,
        ),
        (
            Pattern::SeqWrite,
            "throughput-seq-write.svg",
            "Sequential write",
            sequential,
        ),
        (
            Pattern::RandRead,
            "iops-randread.svg",
            "4k random read",
            ", O_DIRECT, io_uring",
        ),
        (
            Pattern::RandWrite,
            "iops-randwrite.svg",
            "4k random write",
            ", O_DIRECT, io_uring",
        ),
    ];
    let plots = plots.map(|(pattern, file, what, how)| {
        let x_is_size = matches!(pattern, Pattern::SeqRead | Pattern::SeqWrite);
        let (x_label, y_label) = if x_is_size {
            ("block size", "MiB/s")
        } else {
            ("queue depth", "IOPS")
        };
        Plot {
            file: file.into(),
            title: format!("{what}{how}"),
            x_label: x_label.into(),
            y_label: y_label.into(),
            x_is_size,
            series: matrix_series(results, pattern, x_is_size),
        }
    });
    plots
        .into_iter()
        .filter(|plot| !plot.series.is_empty())
        .collect()
}

/// A fixed colour per well-known target, so every plot reads the same.
fn colour(label: &str, index: usize) -> RGBColor {
    const OTHERS: [RGBColor; 5] = [
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x8c, 0x56, 0x4b),
        RGBColor(0x17, 0xbe, 0xcf),
    ];
    match label {
        "plain" => RGBColor(0x55, 0x55, 0x55),
        "fuse-export" => RGBColor(0x1f, 0x77, 0xb4),
        "qsd" => RGBColor(0xd6, 0x27, 0x28),
        _ => OTHERS[index % OTHERS.len()],
    }
}

/// The plot as an SVG document.
pub fn render(plot: &Plot) -> Result<String, String> {
    let mut svg = String::new();
    draw(
        plot,
        SVGBackend::with_string(&mut svg, (720, 440)).into_drawing_area(),
    )
    .map_err(|err| format!("cannot draw {}: {err}", plot.file))?;
    Ok(svg)
}

fn draw(
    plot: &Plot,
    root: DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
) -> Result<(), Box<dyn std::error::Error>> {
    root.fill(&WHITE)?;
    let mut xs: Vec<f64> = plot
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|(x, _)| *x))
        .filter(|x| x.is_finite() && *x > 0.0)
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let (x_min, x_max) = match (xs.first(), xs.last()) {
        (Some(&min), Some(&max)) => (min, max),
        _ => (1.0, 2.0),
    };
    let y_max = plot
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|(_, y)| y.max))
        .filter(|y| y.is_finite())
        .fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(&plot.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            // A margin on both sides so the outer error bars show.
            (x_min / 1.3..x_max * 1.3).log_scale().with_key_points(xs),
            0.0..(y_max * 1.1).max(1.0),
        )?;
    let x_is_size = plot.x_is_size;
    // One style for every tick of an axis: `5k`, `12.5k` or `800`.
    let thousands = y_max >= 1e4;
    chart
        .configure_mesh()
        .x_desc(&plot.x_label)
        .y_desc(&plot.y_label)
        .x_label_formatter(&|x| {
            if x_is_size {
                size_short(x.round() as u64)
            } else {
                format!("{x:.0}")
            }
        })
        .y_label_formatter(&|y| {
            if thousands && *y != 0.0 {
                let text = format!("{:.1}", y / 1e3);
                format!("{}k", text.trim_end_matches('0').trim_end_matches('.'))
            } else {
                format!("{y:.0}")
            }
        })
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(WHITE)
        .draw()?;
    let count = plot.series.len();
    for (index, series) in plot.series.iter().enumerate() {
        let colour = colour(&series.label, index);
        // Side by side around the true x, so bars at the same x stay apart.
        let shift = 1.04f64.powf(index as f64 - (count as f64 - 1.0) / 2.0);
        let mut points: Vec<(f64, Summary)> = series
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && *x > 0.0 && y.median.is_finite())
            .map(|(x, y)| (x * shift, *y))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let line = colour.stroke_width(2);
        let medians = points.iter().map(|(x, y)| (*x, y.median));
        let drawn = if series.label == "plain" {
            chart.draw_series(DashedLineSeries::new(medians, 8, 5, line))?
        } else {
            chart.draw_series(LineSeries::new(medians, line))?
        };
        drawn
            .label(&series.label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 22, y)], line));
        chart.draw_series(points.iter().map(|(x, y)| {
            ErrorBar::new_vertical(*x, y.min, y.median, y.max, colour.filled(), 8)
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    root.present()?;
    Ok(())
}

/// For tests: a plot of made-up numbers.
#[cfg(test)]
fn example() -> Plot {
    let point = |x: f64, median: f64| {
        let summary = Summary::of([median * 0.9, median, median * 1.05]).unwrap();
        (x, summary)
    };
    Plot {
        file: "example.svg".into(),
        title: "Sequential <read>".into(),
        x_label: "block size".into(),
        y_label: "MiB/s".into(),
        x_is_size: true,
        series: vec![
            Series {
                label: "plain".into(),
                points: vec![point(4096.0, 400.0), point(1048576.0, 1800.0)],
            },
            Series {
                label: "fuse-export".into(),
                points: vec![point(4096.0, 300.0), point(1048576.0, 1700.0)],
            },
            Series {
                label: "qsd".into(),
                points: vec![point(65536.0, 900.0)],
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_lines_error_bars_legend_and_escapes() {
        let svg = render(&example()).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("Sequential &lt;read&gt;"), "{svg}");
        for text in [
            "plain",
            "fuse-export",
            "qsd",
            "4k",
            "64k",
            "1M",
            "block size",
            "1800",
        ] {
            assert!(
                svg.contains(&format!(">\n{text}\n</text>")),
                "{text} missing"
            );
        }
        // A median marker per point.
        assert_eq!(svg.matches("<circle").count(), 5);
        let empty = Plot {
            series: Vec::new(),
            ..example()
        };
        assert!(render(&empty).unwrap().contains("</svg>"));
    }
}
