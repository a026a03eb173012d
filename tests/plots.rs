//! Plots: files are valid PNGs of the requested size, not blank; bad data never panics.

use moeseg::train::plots::{bar_plot, heatmap, line_plot, usage_plot, Plotter};
use std::path::Path;

fn check_png(path: &Path, size: (u32, u32)) {
    let img = image::open(path).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), size);
    let first = *img.get_pixel(0, 0);
    let distinct = img.pixels().filter(|p| **p != first).count();
    assert!(distinct > 100, "{} looks blank", path.display());
}

fn names(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[test]
fn plots_are_pngs_of_the_requested_size() {
    let dir = tempfile::tempdir().unwrap();
    // `MOESEG_PLOT_KEEP=dir` keeps the pictures to look at.
    let keep = std::env::var("MOESEG_PLOT_KEEP")
        .ok()
        .map(std::path::PathBuf::from);
    let d = keep.as_deref().unwrap_or(dir.path());
    let loss: Vec<(f64, f64)> = (0..50)
        .map(|i| (i as f64, 2.0 / (1.0 + i as f64 * 0.1)))
        .collect();
    let miou: Vec<(f64, f64)> = (0..50)
        .step_by(10)
        .map(|i| (i as f64, 0.1 + i as f64 * 0.01))
        .collect();
    let series = vec![
        ("train loss".to_string(), loss),
        ("val mIoU".to_string(), miou),
    ];
    line_plot(&d.join("curves.png"), "training", "step", "value", &series).unwrap();
    check_png(&d.join("curves.png"), (1000, 600));

    let small = Plotter::new(400, 300);
    small
        .line_plot(&d.join("small.png"), "t", "x", "y", &series)
        .unwrap();
    check_png(&d.join("small.png"), (400, 300));

    let values: Vec<f64> = (0..19).map(|i| i as f64 / 19.0).collect();
    bar_plot(
        &d.join("iou.png"),
        "per-class IoU",
        &names(19, "class "),
        &values,
    )
    .unwrap();
    check_png(&d.join("iou.png"), (1000, 600));

    let matrix: Vec<Vec<f64>> = (0..4)
        .map(|e| (0..19).map(|c| ((e * c) % 7) as f64 / 7.0).collect())
        .collect();
    heatmap(
        &d.join("heat.png"),
        "expert × class",
        &names(4, "e"),
        &names(19, "c"),
        &matrix,
    )
    .unwrap();
    check_png(&d.join("heat.png"), (1000, 600));

    let layers = vec![
        ("layer 0".to_string(), vec![0.3, 0.2, 0.25, 0.25]),
        ("layer 1".to_string(), vec![0.7, 0.1, 0.1, 0.1]),
    ];
    usage_plot(&d.join("usage.png"), "expert usage", &layers).unwrap();
    check_png(&d.join("usage.png"), (1000, 600));

    // Without a font: the same plots, no text.
    let plain = Plotter::new(500, 400).without_text();
    plain
        .line_plot(&d.join("plain.png"), "t", "x", "y", &series)
        .unwrap();
    plain
        .heatmap(
            &d.join("plain_heat.png"),
            "h",
            &names(4, "e"),
            &names(19, "c"),
            &matrix,
        )
        .unwrap();
    check_png(&d.join("plain.png"), (500, 400));
    check_png(&d.join("plain_heat.png"), (500, 400));
}

#[test]
fn nan_and_empty_data_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nan_series = vec![(
        "loss".to_string(),
        vec![
            (0.0, f64::NAN),
            (1.0, 1.0),
            (2.0, f64::INFINITY),
            (3.0, 0.5),
        ],
    )];
    line_plot(&d.join("nan.png"), "nan", "x", "y", &nan_series).unwrap();
    let all_nan = vec![("loss".to_string(), vec![(0.0, f64::NAN)])];
    line_plot(&d.join("all_nan.png"), "nan", "x", "y", &all_nan).unwrap();
    line_plot(&d.join("empty.png"), "empty", "x", "y", &[]).unwrap();
    let flat = vec![("flat".to_string(), vec![(1.0, 2.0)])];
    line_plot(&d.join("flat.png"), "flat", "x", "y", &flat).unwrap();
    bar_plot(
        &d.join("bars_nan.png"),
        "b",
        &names(3, "c"),
        &[f64::NAN, 0.5, 0.2],
    )
    .unwrap();
    bar_plot(&d.join("bars_empty.png"), "b", &[], &[]).unwrap();
    assert!(bar_plot(&d.join("bad.png"), "b", &names(2, "c"), &[1.0]).is_err());
    heatmap(
        &d.join("heat_nan.png"),
        "h",
        &names(2, "r"),
        &names(2, "c"),
        &[vec![f64::NAN, 1.0], vec![0.0, f64::NAN]],
    )
    .unwrap();
    heatmap(&d.join("heat_empty.png"), "h", &[], &[], &[]).unwrap();
    let ragged = heatmap(
        &d.join("ragged.png"),
        "h",
        &names(2, "r"),
        &names(2, "c"),
        &[vec![1.0, 2.0], vec![1.0]],
    );
    assert!(ragged.unwrap_err().to_string().contains("heatmap"));
    usage_plot(&d.join("usage_empty.png"), "u", &[]).unwrap();
    assert!(Plotter::new(10, 10)
        .line_plot(&d.join("tiny.png"), "t", "x", "y", &nan_series)
        .is_err());
    for f in [
        "nan",
        "all_nan",
        "empty",
        "flat",
        "bars_nan",
        "bars_empty",
        "heat_nan",
        "heat_empty",
        "usage_empty",
    ] {
        let img = image::open(d.join(format!("{f}.png"))).unwrap();
        assert_eq!((img.width(), img.height()), (1000, 600));
    }
}

#[test]
fn routing_report_plots_from_stats() {
    use moeseg::moe::RoutingStats;
    use moeseg::train::plots::routing_report_plots;
    use moeseg::Tensor;
    // 4 tokens, k = 2, 3 experts, 2 classes.
    let mut stats = RoutingStats::new(3, 2).unwrap();
    let indices = Tensor::from_vec(vec![0., 1., 1., 2., 0., 2., 0., 1.], [4, 2]).unwrap();
    let histograms = Tensor::from_vec(vec![3., 1., 0., 4., 2., 2., 4., 0.], [4, 2]).unwrap();
    stats.update(&indices, Some(&histograms)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = routing_report_plots(
        &dir.path().join("routing"),
        "encoder.3/moe",
        &stats.report(),
        &["road", "car"],
    )
    .unwrap();
    assert_eq!(files.len(), 4);
    for f in &files {
        assert!(f
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("encoder_3_moe_"));
        check_png(f, (1000, 600));
    }
}

#[test]
fn sample_pictures_scale_up_by_repeating_pixels() {
    use moeseg::data::pictures::upscale_nearest;
    let small = image::RgbImage::from_fn(128, 64, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let big = upscale_nearest(&small, 512);
    assert_eq!(big.dimensions(), (512, 256));
    for (x, y) in [(0, 0), (3, 3), (4, 0), (511, 255), (300, 129)] {
        assert_eq!(
            big.get_pixel(x, y),
            small.get_pixel(x / 4, y / 4),
            "({x}, {y})"
        );
    }
    // 100 wide: the smallest whole factor reaching 512 is 6.
    let odd = image::RgbImage::new(100, 10);
    assert_eq!(upscale_nearest(&odd, 512).dimensions(), (600, 60));
    assert_eq!(upscale_nearest(&big, 512).dimensions(), (512, 256));
}

#[test]
fn routing_overlays_write_the_experts_in_the_plot_font() {
    use moeseg::data::pictures::routing_overlay;
    let base = image::RgbImage::from_pixel(512, 256, image::Rgb([40, 40, 40]));
    let experts: Vec<Vec<usize>> = (0..4).map(|i| vec![i, (i + 1) % 4]).collect();
    let overlay = routing_overlay(&base, 2, 2, &experts, 4);
    // Pure white pixels inside the first patch, away from the grid lines: the label text.
    let white = (4..100u32)
        .flat_map(|y| (4..200u32).map(move |x| (x, y)))
        .filter(|&(x, y)| overlay.get_pixel(x, y).0 == [255, 255, 255])
        .count();
    if moeseg::train::plots::font_available() {
        assert!(white > 30, "no text drawn: {white} white pixels");
        // Text size follows the patch: a third of its 128-pixel height, so glyphs are tall.
        let rows: Vec<u32> = (4..100u32)
            .filter(|&y| (4..200u32).any(|x| overlay.get_pixel(x, y).0 == [255, 255, 255]))
            .collect();
        assert!(rows.len() >= 15, "text only {} pixels tall", rows.len());
    } else {
        assert_eq!(white, 0, "no font: no text");
    }
}

#[test]
fn heatmap_column_names_are_written_vertically_when_wide() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.png");
    let classes: Vec<String> = moeseg::train::report::class_names(19);
    let rows = names(8, "e");
    // NaN cells are grey, so the only dark pixels are text and axis lines.
    let matrix = vec![vec![f64::NAN; 19]; 8];
    heatmap(&path, "expert x class", &rows, &classes, &matrix).unwrap();
    let img = image::open(&path).unwrap().to_rgb8();
    // The most dark pixels in one pixel column between the row names and the colour scale:
    // a rotated name ("traffic light" at 13 px is ~70 px long) against ~10 px of a horizontal
    // one plus a few of the axis and its tick.
    let (w, h) = img.dimensions();
    let dark = |x: u32, y: u32| img.get_pixel(x, y).0.iter().all(|&v| v < 150);
    let tallest = (150..w - 250)
        .map(|x| (0..h).filter(|&y| dark(x, y)).count())
        .max()
        .unwrap();
    if moeseg::train::plots::font_available() {
        assert!(
            tallest > 40,
            "column names are not vertical: tallest text column {tallest} px"
        );
    } else {
        assert!(
            tallest < 20,
            "no font, yet {tallest} dark pixels in a column"
        );
    }
}
