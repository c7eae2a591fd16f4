//! SVG charts of one run or a comparison: `makespan.svg` (a bar per policy, with the lower
//! bound), `utilisation.svg` (per worker, slowest to fastest, a bar per policy side by side: the
//! workers are unrelated, so no line joins them) and `completion.svg` (the distribution of
//! completion times as a CDF on a log axis, so short and long tasks both show; a line per
//! policy). Legends sit in a panel right of the plot, where they cover no data; grids are light.
//!
//! Plotters draws with its SVG backend only: text becomes `<text>` elements that the viewer
//! renders, so no font library or system font is needed here.

use super::report::Report;
use super::world::{RunResult, WorkerSpec};
use super::SimError;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::error::Error;
use std::path::{Path, PathBuf};

/// One policy's run, as the charts need it.
pub struct Run<'a> {
    pub report: &'a Report,
    pub result: &'a RunResult,
}

const SIZE: (u32, u32) = (900, 540);
const FONT: &str = "sans-serif";
/// Most points drawn per CDF line: enough for a smooth curve from a million samples.
const CDF_POINTS: usize = 1_000;

fn color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(23, 190, 207),
    ];
    COLORS[i % COLORS.len()]
}

/// Grid lines: light enough to read values by, not to compete with the data.
const GRID_BOLD: RGBColor = RGBColor(215, 215, 215);
const GRID_LIGHT: RGBColor = RGBColor(240, 240, 240);
/// Width of the legend panel right of a chart.
const LEGEND_WIDTH: u32 = 170;

type Plot = Result<(), Box<dyn Error>>;

/// Splits `root` into the plot and a legend panel on its right, and draws the legend there: a
/// swatch and a name per policy. Outside the plot, it can never hide a bar or a line.
fn with_legend<'b>(
    root: &DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    names: &[String],
) -> Result<DrawingArea<SVGBackend<'b>, plotters::coord::Shift>, Box<dyn Error>> {
    let (plot, legend) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);
    for (i, name) in names.iter().enumerate() {
        let y = 70 + 26 * i as i32;
        legend.draw(&Rectangle::new([(8, y), (26, y + 14)], color(i).filled()))?;
        legend.draw(&Text::new(name.clone(), (34, y), (FONT, 14)))?;
    }
    Ok(plot)
}

/// `0.25 s`, `3 s`, `120 s`: tick labels that read at a glance on a log axis.
fn seconds_label(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0} s")
    } else if v >= 1.0 {
        format!("{v:.1} s")
    } else {
        format!("{v:.2} s")
    }
}
type Draw<'a> = &'a dyn Fn(&Path) -> Plot;

/// Writes the three charts into `dir` (created if missing) and returns their paths.
pub fn write_all(dir: &Path, fleet: &[WorkerSpec], runs: &[Run]) -> Result<Vec<PathBuf>, SimError> {
    std::fs::create_dir_all(dir).map_err(|e| SimError::Io {
        path: dir.display().to_string(),
        error: e.to_string(),
    })?;
    let charts: [(&str, Draw); 3] = [
        ("makespan.svg", &|p| makespan(p, runs)),
        ("utilisation.svg", &|p| utilisation(p, fleet, runs)),
        ("completion.svg", &|p| completion(p, runs)),
    ];
    let mut written = Vec::new();
    for (name, draw) in charts {
        let path = dir.join(name);
        draw(&path).map_err(|e| SimError::Io {
            path: path.display().to_string(),
            error: e.to_string(),
        })?;
        written.push(path);
    }
    Ok(written)
}

fn makespan(path: &Path, runs: &[Run]) -> Plot {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let bound = runs.first().map_or(0.0, |r| r.report.lower_bound_s);
    let top = runs
        .iter()
        .map(|r| r.report.makespan_s)
        .fold(bound, f64::max)
        .max(1e-3)
        * 1.15;
    let names: Vec<String> = runs.iter().map(|r| r.report.policy.clone()).collect();
    let last = runs.len().saturating_sub(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Makespan per policy (line: lower bound, {bound:.2} s)"),
            (FONT, 22),
        )
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0..last).into_segmented(), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(GRID_BOLD)
        .light_line_style(GRID_LIGHT)
        .x_labels(runs.len().max(1))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                names.get(*i).cloned().unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        })
        .y_desc("makespan (s, virtual)")
        .label_style((FONT, 14))
        .draw()?;
    for (i, run) in runs.iter().enumerate() {
        let m = run.report.makespan_s;
        chart.draw_series(
            Histogram::vertical(&chart)
                .margin(40)
                .style(color(i).filled())
                .data([(i, m)]),
        )?;
        let style = TextStyle::from((FONT, 14).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        chart.draw_series(std::iter::once(Text::new(
            format!("{m:.2} s"),
            (SegmentValue::CenterOf(i), m + top * 0.01),
            style,
        )))?;
    }
    chart.draw_series(LineSeries::new(
        [(SegmentValue::Exact(0), bound), (SegmentValue::Last, bound)],
        BLACK.stroke_width(2),
    ))?;
    root.present()?;
    Ok(())
}

fn utilisation(path: &Path, fleet: &[WorkerSpec], runs: &[Run]) -> Plot {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let names: Vec<String> = runs.iter().map(|r| r.report.policy.clone()).collect();
    let plot = with_legend(&root, &names)?;
    // Slowest to fastest (stable: equal speeds keep join order), so a policy that favours fast
    // workers shows taller bars on the right.
    let mut rank: Vec<usize> = (0..fleet.len()).collect();
    rank.sort_by(|&a, &b| fleet[a].capacity().total_cmp(&fleet[b].capacity()));
    let mixed = fleet.windows(2).any(|w| w[0].capacity() != w[1].capacity());
    let n = fleet.len().max(1);
    // Worker k sits at x = k; its bars share [k - 0.4, k + 0.4], one per policy.
    let mut chart = ChartBuilder::on(&plot)
        .caption("Utilisation per worker", (FONT, 24))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..105.0)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(GRID_BOLD)
        .light_line_style(GRID_LIGHT)
        .x_labels(n.min(12))
        .x_label_formatter(&|x| {
            // Only whole ranks name a worker.
            if (x - x.round()).abs() < 1e-6 && *x >= 0.0 {
                format!("{}", x.round() as usize + 1)
            } else {
                String::new()
            }
        })
        .x_desc(if mixed {
            "workers, slowest to fastest"
        } else {
            "workers, in join order"
        })
        .y_desc("work done (% of capacity × makespan)")
        .label_style((FONT, 14))
        .draw()?;
    let k = runs.len().max(1) as f64;
    let width = 0.8 / k;
    for (i, run) in runs.iter().enumerate() {
        let span_s = (run.result.makespan_us.max(1) as f64) / 1e6;
        let bars = rank.iter().enumerate().map(|(x, &w)| {
            let work = run.result.workers[w].work_s;
            let cap = fleet[w].capacity().max(1e-9);
            let pct = (work / (cap * span_s) * 100.0).min(105.0);
            let left = x as f64 - 0.4 + width * i as f64;
            Rectangle::new([(left, 0.0), (left + width, pct)], color(i).filled())
        });
        chart.draw_series(bars)?;
    }
    root.present()?;
    Ok(())
}

fn completion(path: &Path, runs: &[Run]) -> Plot {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let names: Vec<String> = runs.iter().map(|r| r.report.policy.clone()).collect();
    let plot = with_legend(&root, &names)?;
    // A log axis from just below the fastest completion to just past the slowest: tasks of
    // 0.1 s and of 10 s both get room, instead of the short ones crowding the left edge.
    let right = runs
        .iter()
        .filter_map(|r| r.result.completion_s.last().copied())
        .fold(1e-3, f64::max)
        * 1.2;
    let left = runs
        .iter()
        .filter_map(|r| r.result.completion_s.iter().copied().find(|&t| t > 0.0))
        .fold(right, f64::min)
        .max(1e-3)
        / 1.2;
    let left = left.min(right / 10.0);
    let mut chart = ChartBuilder::on(&plot)
        .caption("Completion time (submission to result), CDF", (FONT, 24))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((left..right).log_scale(), 0.0..100.0)?;
    chart
        .configure_mesh()
        .bold_line_style(GRID_BOLD)
        .light_line_style(GRID_LIGHT)
        .x_label_formatter(&|v| seconds_label(*v))
        .x_desc("completion time (s, virtual, log scale)")
        .y_desc("tasks completed within (%)")
        .label_style((FONT, 14))
        .draw()?;
    for (i, run) in runs.iter().enumerate() {
        let c = &run.result.completion_s;
        let total = run.result.tasks.max(1) as f64;
        let step = c.len().div_ceil(CDF_POINTS).max(1);
        // Percent of *all* tasks, so lost tasks show as a curve that never reaches 100%.
        let mut points: Vec<(f64, f64)> = vec![(left, 0.0)];
        points.extend(
            c.iter()
                .enumerate()
                .filter(|(k, _)| (k + 1) % step == 0 || k + 1 == c.len())
                .map(|(k, &t)| (t.max(left), (k + 1) as f64 / total * 100.0)),
        );
        chart.draw_series(LineSeries::new(points, color(i).stroke_width(2)))?;
    }
    root.present()?;
    Ok(())
}
