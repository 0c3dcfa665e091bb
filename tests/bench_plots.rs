//! The benchmark plots (benches/common/plot.rs) from synthetic data: both kinds render
//! to PNG files that decode, have the expected size, show every series' colour, and
//! have text (the title) drawn with the committed font. Fast: no database, no network.
//! `BENCH_PLOTS_TEST_OUT=<dir>` keeps the files there, to look at them.

#[path = "../benches/common/plot.rs"]
mod plot;

use std::path::Path;

use plot::{CdfLine, Marker, Timeline, TimelineSeries};

/// Width, height and RGB pixels of a PNG file.
fn decode(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let bytes = std::fs::read(path).expect("read png");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("png data");
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected colour type {other:?}"),
    };
    let px = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|c| [c[0], c[1], c[2]])
        .collect();
    (info.width, info.height, px)
}

/// A fresh temp dir, or `$BENCH_PLOTS_TEST_OUT` to keep the files.
fn out_dir() -> (Option<tempfile::TempDir>, std::path::PathBuf) {
    match std::env::var_os("BENCH_PLOTS_TEST_OUT") {
        Some(d) => {
            std::fs::create_dir_all(&d).unwrap();
            (None, d.into())
        }
        None => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().to_owned();
            (Some(t), p)
        }
    }
}

fn has_color(px: &[[u8; 3]], c: plotters::style::RGBColor) -> bool {
    px.contains(&[c.0, c.1, c.2])
}

/// Dark pixels in the top band, where the caption is: the font drew the title.
fn title_drawn(w: u32, px: &[[u8; 3]]) -> bool {
    px[..(w * 50) as usize]
        .iter()
        .filter(|p| p.iter().all(|&v| v < 100))
        .count()
        > 100
}

#[test]
fn latency_cdf_renders_a_png_with_every_line_and_text() {
    let (_tmp, dir) = out_dir();
    let path = dir.join("cdf.png");
    let lines: Vec<CdfLine> = [("direct", 100.0), ("router", 105.0), ("haproxy", 150.0)]
        .iter()
        .map(|&(name, base)| {
            let samples: Vec<f64> = (0..2000)
                .map(|i| base * (1.0 + (i as f64 / 2000.0).powi(8) * 5.0))
                .collect();
            CdfLine {
                name: name.to_string(),
                label: format!("{name}: synthetic"),
                points: plot::cdf_of_samples(&samples),
            }
        })
        .collect();
    let last = lines[0].points.last().unwrap();
    assert!((last.1 - 1.0).abs() < 1e-9, "a CDF ends at 1: {last:?}");
    plot::latency_cdf(&path, "select x1: latency CDF per path", &lines).unwrap();

    let (w, h, px) = decode(&path);
    assert_eq!((w, h), (plot::WIDTH, plot::HEIGHT));
    for c in &plot::PALETTE[..lines.len()] {
        assert!(has_color(&px, *c), "no pixel of line colour {c:?}");
    }
    assert!(title_drawn(w, &px), "no title text drawn");
    assert!(plot::cdf_csv(&lines).lines().count() > 3);
}

#[test]
fn failover_timeline_renders_a_png_with_both_nodes_and_markers() {
    let (_tmp, dir) = out_dir();
    let path = dir.join("timeline.png");
    // Writes every 0.5 ms on n1 until 3 ms before the kill, then on n2 from 1900 ms.
    let old: Vec<f64> = (0..1994).map(|i| -1000.0 + i as f64 * 0.5).collect();
    let new: Vec<f64> = (0..600).map(|i| 1900.0 + i as f64 * 0.5).collect();
    let (start, end) = (-1000.0, 2200.0);
    let old_counts = plot::bucket(&old, start, end, 10.0);
    assert_eq!(old_counts.len(), 320);
    assert_eq!(old_counts[0], 20);
    assert_eq!(old_counts.iter().sum::<u64>(), old.len() as u64);
    let t = Timeline {
        start_ms: start,
        bucket_ms: 10.0,
        series: vec![
            TimelineSeries {
                label: "acknowledged by the old master n1".into(),
                counts: old_counts,
            },
            TimelineSeries {
                label: "acknowledged by the new master n2".into(),
                counts: plot::bucket(&new, start, end, 10.0),
            },
        ],
        markers: vec![
            Marker {
                label: "kill -9 of the master (0 ms)".into(),
                at_ms: 0.0,
            },
            Marker {
                label: "first write on the new master (1900 ms)".into(),
                at_ms: 1900.0,
            },
        ],
    };
    plot::failover_timeline(&path, "failover: writes per 10 ms", &t).unwrap();

    let (w, h, px) = decode(&path);
    assert_eq!((w, h), (plot::WIDTH, plot::HEIGHT));
    assert!(has_color(&px, plot::PALETTE[0]), "no bar of the old master");
    assert!(has_color(&px, plot::PALETTE[1]), "no bar of the new master");
    assert!(title_drawn(w, &px), "no title text drawn");
    let csv = t.csv();
    assert!(csv.starts_with("bucket_start_ms,acknowledged by the old master n1,"));
    assert!(csv.contains("# marker,1900.0,"));
}
