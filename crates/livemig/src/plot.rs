//! Plots (plotters, SVG or PNG by file extension) with a bundled DejaVu Sans font.

use std::error::Error;
use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, bail, Result};
use livemig_policy::report::MigrationReport;
use livemig_sim::bench::ScenarioResult;
use plotters::chart::SeriesAnno;
use plotters::coord::Shift;
use plotters::prelude::*;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

const MIB: f64 = 1024.0 * 1024.0;
const SIZE: (u32, u32) = (960, 640);
const PALETTE: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

/// One per-round quantity to plot.
type Metric = Box<dyn Fn(&livemig_policy::report::RoundRecord) -> f64>;

type DrawResult = std::result::Result<(), Box<dyn Error>>;

fn register_font() {
    REGISTER.call_once(|| {
        // The font is compiled in; registration only fails on a corrupt file.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Renders with `draw` onto `path`, SVG or PNG by extension.
macro_rules! render {
    ($path:expr, $draw:ident, $arg:expr) => {{
        register_font();
        let path: &Path = $path;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let result = match ext {
            "svg" => {
                let root = SVGBackend::new(path, SIZE).into_drawing_area();
                $draw(&root, $arg).and_then(|()| root.present().map_err(Into::into))
            }
            "png" => {
                let root = BitMapBackend::new(path, SIZE).into_drawing_area();
                $draw(&root, $arg).and_then(|()| root.present().map_err(Into::into))
            }
            _ => bail!("plot file {} must end in .svg or .png", path.display()),
        };
        result.map_err(|e| anyhow!("cannot draw {}: {e}", path.display()))
    }};
}

/// Cap, effective bandwidth and dirty rate (MiB/s), and remaining bytes (MiB), per round.
pub fn rounds(path: &Path, report: &MigrationReport) -> Result<()> {
    render!(path, draw_rounds, report)
}

/// Every policy's cap over time on one scenario.
pub fn bench_caps(path: &Path, result: &ScenarioResult) -> Result<()> {
    render!(path, draw_bench, result)
}

fn legend<DB: DrawingBackend>(series: &mut SeriesAnno<'_, DB>, label: &str, color: RGBColor) {
    series
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
}

fn draw_rounds<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, r: &MigrationReport) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(SIZE.1 * 3 / 5);
    let n = r.rounds.len().max(1) as f64;
    let x = 0.5..n + 0.5;
    let rates: [(&str, Metric); 3] = [
        ("cap", Box::new(|x| x.cap_bytes_per_s)),
        ("effective", Box::new(|x| x.effective_bytes_per_s)),
        ("dirty rate", Box::new(|x| x.dirty_rate_bytes_per_s)),
    ];
    let ymax = r
        .rounds
        .iter()
        .flat_map(|x| rates.iter().map(move |(_, f)| f(x) / MIB))
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!("{} — {}", r.policy, r.workload.as_deref().unwrap_or("")),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(x.clone(), 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_desc("round")
        .y_desc("MiB/s")
        .draw()?;
    for (i, (label, f)) in rates.iter().enumerate() {
        let color = PALETTE[i];
        let pts: Vec<(f64, f64)> = r
            .rounds
            .iter()
            .map(|x| (f64::from(x.round), f(x) / MIB))
            .collect();
        let s = chart.draw_series(LineSeries::new(pts, color.stroke_width(2)))?;
        legend(s, label, color);
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    let rmax = r
        .rounds
        .iter()
        .map(|x| x.dirty_bytes / MIB)
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(x, 0.0..rmax)?;
    chart
        .configure_mesh()
        .x_desc("round")
        .y_desc("remaining MiB")
        .draw()?;
    let pts: Vec<(f64, f64)> = r
        .rounds
        .iter()
        .map(|x| (f64::from(x.round), x.dirty_bytes / MIB))
        .collect();
    let s = chart.draw_series(LineSeries::new(pts, PALETTE[3].stroke_width(2)))?;
    legend(s, "remaining", PALETTE[3]);
    let h = r.stop_remaining_bytes / MIB;
    let s = chart.draw_series(LineSeries::new(
        vec![(0.5, h), (n + 0.5, h)],
        BLACK.stroke_width(1),
    ))?;
    s.label("h")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn draw_bench<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, r: &ScenarioResult) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let mut runs: Vec<(String, &MigrationReport)> = r
        .results
        .iter()
        .map(|p| (p.policy.clone(), &p.report))
        .collect();
    if let Some(o) = &r.oracle {
        runs.push(("oracle".into(), &o.report));
    }
    let tmax = runs
        .iter()
        .map(|(_, x)| x.summary.total_time_s)
        .fold(1e-3, f64::max);
    let ymax = runs
        .iter()
        .map(|(_, x)| x.summary.peak_cap_bytes_per_s / MIB)
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("{}: pre-copy cap over time", r.scenario),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..tmax, 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("cap (MiB/s)")
        .draw()?;
    for (i, (name, rep)) in runs.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let mut pts = Vec::new();
        let mut t = 0.0;
        for x in &rep.rounds {
            pts.push((t, x.cap_bytes_per_s / MIB));
            t += x.duration_s;
            pts.push((t, x.cap_bytes_per_s / MIB));
        }
        let s = chart.draw_series(LineSeries::new(pts, color.stroke_width(2)))?;
        legend(s, name, color);
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
