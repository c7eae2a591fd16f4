//! SVG charts of one run or a comparison: `makespan.svg` (a bar per policy, with the lower
//! bound), `utilisation.svg` (per worker, slowest to fastest, a line per policy) and
//! `completion.svg` (the distribution of completion times as a CDF, a line per policy).
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

type Plot = Result<(), Box<dyn Error>>;
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
    // Slowest to fastest (stable: equal speeds keep join order), so a policy that favours fast
    // workers shows a rising line.
    let mut rank: Vec<usize> = (0..fleet.len()).collect();
    rank.sort_by(|&a, &b| fleet[a].capacity().total_cmp(&fleet[b].capacity()));
    let mixed = fleet.windows(2).any(|w| w[0].capacity() != w[1].capacity());
    let n = fleet.len().max(2);
    let mut chart = ChartBuilder::on(&root)
        .caption("Utilisation per worker", (FONT, 24))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0..n - 1, 0.0..105.0)?;
    chart
        .configure_mesh()
        .x_desc(if mixed {
            "workers, slowest to fastest"
        } else {
            "workers, in join order"
        })
        .y_desc("work done (% of capacity × makespan)")
        .label_style((FONT, 14))
        .draw()?;
    for (i, run) in runs.iter().enumerate() {
        let span_s = (run.result.makespan_us.max(1) as f64) / 1e6;
        let points = rank.iter().enumerate().map(|(x, &w)| {
            let work = run.result.workers[w].work_s;
            let cap = fleet[w].capacity().max(1e-9);
            (x, (work / (cap * span_s) * 100.0).min(105.0))
        });
        chart
            .draw_series(LineSeries::new(points, color(i).stroke_width(2)))?
            .label(run.report.policy.clone())
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], color(i).stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()?;
    root.present()?;
    Ok(())
}

fn completion(path: &Path, runs: &[Run]) -> Plot {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let right = runs
        .iter()
        .filter_map(|r| r.result.completion_s.last().copied())
        .fold(1e-3, f64::max)
        * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption("Completion time (submission to result), CDF", (FONT, 24))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..right, 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc("completion time (s, virtual)")
        .y_desc("tasks completed within (%)")
        .label_style((FONT, 14))
        .draw()?;
    for (i, run) in runs.iter().enumerate() {
        let c = &run.result.completion_s;
        let total = run.result.tasks.max(1) as f64;
        let step = c.len().div_ceil(CDF_POINTS).max(1);
        // Percent of *all* tasks, so lost tasks show as a curve that never reaches 100%.
        let mut points: Vec<(f64, f64)> = vec![(0.0, 0.0)];
        points.extend(
            c.iter()
                .enumerate()
                .filter(|(k, _)| (k + 1) % step == 0 || k + 1 == c.len())
                .map(|(k, &t)| (t, (k + 1) as f64 / total * 100.0)),
        );
        chart
            .draw_series(LineSeries::new(points, color(i).stroke_width(2)))?
            .label(run.report.policy.clone())
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], color(i).stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()?;
    root.present()?;
    Ok(())
}
