//! Plots and raw data files of the PostgreSQL benchmarks (`routing_e2e`, `failover`),
//! shared by including this file with `#[path]` (also from `tests/bench_plots.rs`, which
//! renders both kinds from synthetic data).
//!
//! PNG through plotters' bitmap backend. Text is drawn with ab_glyph from the DejaVu Sans
//! file committed beside the benches (`benches/fonts/`, its license there), compiled in
//! with `include_bytes!`: no system font library at build or run time.
//!
//! - `latency_cdf`: one line per path; x = latency in us (log scale), y = fraction of
//!   queries at or below x.
//! - `failover_timeline`: acknowledged writes per bucket (10 ms in the bench) around the
//!   kill, stacked by the node that acknowledged them, with vertical markers (kill,
//!   first write acknowledged by the new master, ...).
//!
//! Where files go: `results_dir()`, `$BENCH_RESULTS_DIR` if set, else `bench-results/`
//! at the workspace root (git-ignored).

#![allow(dead_code)] // each bench uses part of it

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// DejaVu Sans (Bitstream Vera license, benches/fonts/LICENSE).
static FONT: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

pub const WIDTH: u32 = 1200;
pub const HEIGHT: u32 = 720;

/// Line colours, in order (Okabe-Ito: distinguishable with common colour blindness).
pub const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),   // blue
    RGBColor(213, 94, 0),    // vermillion
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(230, 159, 0),   // orange
    RGBColor(86, 180, 233),  // sky blue
];

fn register_font() -> Result<(), String> {
    static ONCE: Once = Once::new();
    let mut ok = true;
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            ok &= plotters::style::register_font(FAMILY, style, FONT).is_ok();
        }
    });
    if ok {
        Ok(())
    } else {
        Err("the committed DejaVu Sans font did not load".into())
    }
}

/// `$BENCH_RESULTS_DIR`, else `<workspace root>/bench-results`.
pub fn results_dir() -> PathBuf {
    match std::env::var_os("BENCH_RESULTS_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results"),
    }
}

/// `results_dir()/<name>`, created, with the files of a previous run that start with
/// `prefix` removed (a smaller run must not leave a larger run's plots beside its own).
pub fn fresh_dir(name: &str, prefix: &str) -> Result<PathBuf, String> {
    let dir = results_dir().join(name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    for e in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let e = e.map_err(|e| e.to_string())?;
        let stale = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(prefix));
        if stale && e.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::remove_file(e.path())
                .map_err(|err| format!("{}: {err}", e.path().display()))?;
        }
    }
    Ok(dir)
}

pub fn write_file(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// Latency CDF
// ---------------------------------------------------------------------------

/// One line of a CDF plot: points (latency us, fraction of queries <= it), rising.
pub struct CdfLine {
    /// The path's name (the CSV's first column).
    pub name: String,
    /// The legend's text.
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// The CDF of raw samples (any unit): one point per distinct value.
pub fn cdf_of_samples(samples: &[f64]) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len() as f64;
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (i, x) in v.iter().enumerate() {
        let f = (i + 1) as f64 / n;
        match out.last_mut() {
            Some(last) if last.0 == *x => last.1 = f,
            _ => out.push((*x, f)),
        }
    }
    out
}

/// The CDF lines as CSV: `path,latency_us,fraction_at_or_below`.
pub fn cdf_csv(lines: &[CdfLine]) -> String {
    let mut s = String::from("path,latency_us,fraction_at_or_below\n");
    for l in lines {
        for (x, y) in &l.points {
            let _ = writeln!(s, "{},{x:.3},{y:.6}", l.name);
        }
    }
    s
}

/// Rounded log-scale tick labels: 20, 50, 100, 1k, 2.5k, ..., 1M
fn us_label(v: f64) -> String {
    if v >= 1e6 {
        let m = v / 1e6;
        if (m - m.round()).abs() < 1e-6 {
            format!("{m:.0}M")
        } else {
            format!("{m:.1}M")
        }
    } else if v >= 1000.0 {
        let k = v / 1000.0;
        if (k - k.round()).abs() < 1e-6 {
            format!("{k:.0}k")
        } else {
            format!("{k:.1}k")
        }
    } else if v >= 10.0 || (v - v.round()).abs() < 1e-6 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// 1, 2, 5, 10, 20, 50, ... within [lo, hi]: labelled ticks of a log axis.
fn ticks_125(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if v >= lo * 0.999 && v <= hi * 1.001 {
                out.push(v);
            }
        }
        decade *= 10.0;
    }
    out
}

/// Writes a latency CDF (PNG) of `lines` to `path`.
pub fn latency_cdf(path: &Path, title: &str, lines: &[CdfLine]) -> Result<(), String> {
    register_font()?;
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    draw_cdf(&root, title, lines).map_err(|e| format!("plot {}: {e}", path.display()))?;
    root.present()
        .map_err(|e| format!("write {}: {e}", path.display()))
}

fn draw_cdf(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    lines: &[CdfLine],
) -> Result<(), Box<dyn std::error::Error>> {
    root.fill(&WHITE)?;
    let xs = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let (mut lo, mut hi) = xs.fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    if !(lo.is_finite() && lo > 0.0 && hi > lo) {
        (lo, hi) = (1.0, 1000.0);
    }
    // Out to the next 1-2-5 value either side.
    let steps = ticks_125(10f64.powf(lo.log10().floor() - 1.0), hi * 10.0);
    let lo = steps
        .iter()
        .rev()
        .find(|&&v| v <= lo * 0.95)
        .copied()
        .unwrap_or(lo);
    let hi = steps
        .iter()
        .find(|&&v| v >= hi * 1.05)
        .copied()
        .unwrap_or(hi);
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FAMILY, 26))
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (lo..hi).log_scale().with_key_points(ticks_125(lo, hi)),
            0.0..1.0,
        )?;
    chart
        .configure_mesh()
        .x_desc("latency (µs, log scale)")
        .y_desc("fraction of queries ≤ latency")
        .axis_desc_style((FAMILY, 20))
        .label_style((FAMILY, 16))
        .x_label_formatter(&|v| us_label(*v))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .y_labels(11)
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for (i, l) in lines.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                l.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(l.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
    }
    // p50 and p99 guides.
    for q in [0.5, 0.99] {
        chart.draw_series(DashedLineSeries::new(
            [(lo, q), (hi, q)],
            6,
            6,
            RGBColor(150, 150, 150).stroke_width(1),
        ))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FAMILY, 18))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .margin(12)
        .draw()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Failover timeline
// ---------------------------------------------------------------------------

/// Writes acknowledged per bucket, by who acknowledged them.
pub struct TimelineSeries {
    pub label: String,
    /// Count per bucket; bucket i covers [start_ms + i * bucket_ms, + bucket_ms).
    pub counts: Vec<u64>,
}

/// A vertical line at `at_ms`.
pub struct Marker {
    pub label: String,
    pub at_ms: f64,
}

pub struct Timeline {
    pub start_ms: f64,
    pub bucket_ms: f64,
    pub series: Vec<TimelineSeries>,
    pub markers: Vec<Marker>,
}

/// Counts of `times_ms` per bucket of `bucket_ms` from `start_ms` (inclusive) to
/// `end_ms` (exclusive); times outside are not counted.
pub fn bucket(times_ms: &[f64], start_ms: f64, end_ms: f64, bucket_ms: f64) -> Vec<u64> {
    let n = ((end_ms - start_ms) / bucket_ms).ceil().max(0.0) as usize;
    let mut counts = vec![0u64; n];
    for &t in times_ms {
        if t >= start_ms && t < end_ms {
            let i = ((t - start_ms) / bucket_ms) as usize;
            if let Some(c) = counts.get_mut(i) {
                *c += 1;
            }
        }
    }
    counts
}

impl Timeline {
    /// As CSV: `bucket_start_ms,<series...>` then the markers as comment lines.
    pub fn csv(&self) -> String {
        let mut s = String::from("bucket_start_ms");
        for ser in &self.series {
            let _ = write!(s, ",{}", ser.label.replace(',', ";"));
        }
        s.push('\n');
        let n = self
            .series
            .iter()
            .map(|s| s.counts.len())
            .max()
            .unwrap_or(0);
        for i in 0..n {
            let _ = write!(s, "{:.0}", self.start_ms + i as f64 * self.bucket_ms);
            for ser in &self.series {
                let _ = write!(s, ",{}", ser.counts.get(i).copied().unwrap_or(0));
            }
            s.push('\n');
        }
        for m in &self.markers {
            let _ = writeln!(s, "# marker,{:.1},{}", m.at_ms, m.label.replace(',', ";"));
        }
        s
    }
}

/// Writes the failover timeline (PNG) to `path`: the series stacked per bucket.
pub fn failover_timeline(path: &Path, title: &str, t: &Timeline) -> Result<(), String> {
    register_font()?;
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    draw_timeline(&root, title, t).map_err(|e| format!("plot {}: {e}", path.display()))?;
    root.present()
        .map_err(|e| format!("write {}: {e}", path.display()))
}

fn draw_timeline(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    t: &Timeline,
) -> Result<(), Box<dyn std::error::Error>> {
    root.fill(&WHITE)?;
    let n = t.series.iter().map(|s| s.counts.len()).max().unwrap_or(0);
    let end_ms = t.start_ms + n.max(1) as f64 * t.bucket_ms;
    let totals: Vec<u64> = (0..n)
        .map(|i| {
            t.series
                .iter()
                .map(|s| s.counts.get(i).copied().unwrap_or(0))
                .sum()
        })
        .collect();
    let top = totals.iter().copied().max().unwrap_or(0).max(1) as f64;
    // Head room above the bars for the legend.
    let y_max = (top * 1.6).ceil();
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FAMILY, 26))
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(80)
        .build_cartesian_2d(t.start_ms..end_ms, 0.0..y_max)?;
    let per = format!("{:.0} ms", t.bucket_ms);
    chart
        .configure_mesh()
        .x_desc("time relative to the kill of the master (ms)")
        .y_desc(format!("acknowledged writes per {per}"))
        .axis_desc_style((FAMILY, 20))
        .label_style((FAMILY, 16))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_labels(12)
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    // Stacked bars, one rectangle per non-empty bucket and series.
    let mut base = vec![0u64; n];
    for (si, ser) in t.series.iter().enumerate() {
        let color = PALETTE[si % PALETTE.len()];
        let bars: Vec<_> = ser
            .counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| {
                let x0 = t.start_ms + i as f64 * t.bucket_ms;
                let y0 = base[i] as f64;
                Rectangle::new(
                    [(x0, y0), (x0 + t.bucket_ms, y0 + c as f64)],
                    color.filled(),
                )
            })
            .collect();
        for (i, &c) in ser.counts.iter().enumerate() {
            base[i] += c;
        }
        chart
            .draw_series(bars)?
            .label(ser.label.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 7), (x + 20, y + 7)], color.filled()));
    }
    // Vertical markers, after the bars so they stay visible.
    let marker_colors = [BLACK, RGBColor(200, 0, 0), RGBColor(120, 60, 160)];
    for (mi, m) in t.markers.iter().enumerate() {
        let color = marker_colors[mi % marker_colors.len()];
        let style = color.stroke_width(2);
        let line = [(m.at_ms, 0.0), (m.at_ms, y_max)];
        let drawn = if mi == 0 {
            chart.draw_series(LineSeries::new(line, style))?
        } else {
            chart.draw_series(DashedLineSeries::new(line, 10, 6, style))?
        };
        drawn
            .label(m.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FAMILY, 18))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .margin(12)
        .draw()?;
    Ok(())
}
