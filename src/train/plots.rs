//! PNG plots of a run: loss and mIoU curves, per-class IoU, expert usage and routing matrices.
//!
//! Drawn with plotters into an in-memory RGB buffer, then written atomically (temporary file +
//! rename). Text needs a TrueType font, loaded once at run time from common system paths (or
//! `MOESEG_PLOT_FONT`); without one, plots are drawn without text. Non-finite values are left
//! out (a NaN cell of a heatmap is grey); a plot with no data at all shows a "no data" note.

use crate::data::pictures::save_png;
use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;
type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

const FONT: &str = "sans-serif";
const FONT_PATHS: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers the first font found (once per process); whether text can be drawn.
pub fn font_available() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        let from_env = std::env::var("MOESEG_PLOT_FONT").ok();
        let candidates = from_env.iter().map(String::as_str).chain(FONT_PATHS);
        for path in candidates {
            if let Ok(bytes) = std::fs::read(path) {
                // plotters keeps fonts for the whole process: leak the bytes once.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws `text` in white with a black shadow at `at` (top left) into `img`, in the plot font
/// at `size` pixels; false (nothing drawn) without a font.
pub fn draw_text_on(img: &mut image::RgbImage, text: &str, at: (usize, usize), size: u32) -> bool {
    if !font_available() {
        return false;
    }
    let (w, h) = img.dimensions();
    let (x, y) = (at.0 as i32, at.1 as i32);
    let root = BitMapBackend::with_buffer(img.as_mut(), (w, h)).into_drawing_area();
    let drawn = [(1, BLACK), (0, WHITE)].into_iter().all(|(offset, color)| {
        let style = (FONT, size).into_font().color(&color);
        root.draw_text(text, &style, (x + offset, y + offset))
            .is_ok()
    });
    drawn && root.present().is_ok()
}

/// Plot size and whether to draw text. The free functions use [`Plotter::default`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plotter {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    text: bool,
}

impl Default for Plotter {
    fn default() -> Self {
        Plotter::new(1000, 600)
    }
}

/// A sequential colour map (viridis anchors), `t` in `[0, 1]`.
fn colormap(t: f64) -> RGBColor {
    const ANCHORS: [[f64; 3]; 5] = [
        [68.0, 1.0, 84.0],
        [59.0, 82.0, 139.0],
        [33.0, 145.0, 140.0],
        [94.0, 201.0, 98.0],
        [253.0, 231.0, 37.0],
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    } * 4.0;
    let i = (t.floor() as usize).min(3);
    let f = t - i as f64;
    let c: Vec<u8> = (0..3)
        .map(|k| (ANCHORS[i][k] * (1.0 - f) + ANCHORS[i + 1][k] * f) as u8)
        .collect();
    RGBColor(c[0], c[1], c[2])
}

/// `(min, max)` of the finite values, widened when empty or flat.
fn finite_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo > hi {
        return None;
    }
    let pad = if hi > lo {
        0.0
    } else {
        0.5_f64.max(lo.abs() * 0.1)
    };
    Some((lo - pad, hi + pad))
}

impl Plotter {
    /// A plotter of `width × height` pixels (text if a font is found).
    pub fn new(width: u32, height: u32) -> Plotter {
        Plotter {
            width,
            height,
            text: font_available(),
        }
    }

    /// The same plotter drawing no text at all (what happens when no font is found).
    pub fn without_text(mut self) -> Plotter {
        self.text = false;
        self
    }

    /// Draws into a white buffer and saves it as a PNG.
    fn render(&self, path: &Path, draw: impl FnOnce(&Area) -> DrawResult) -> Result<()> {
        let (w, h) = (self.width, self.height);
        if w < 64 || h < 64 {
            return Err(Error::file(
                path,
                format!("plot size {w}×{h} is too small (64×64 at least)"),
            ));
        }
        let mut buffer = vec![255u8; w as usize * h as usize * 3];
        {
            let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
            let drawn = root
                .fill(&WHITE)
                .map_err(Into::into)
                .and_then(|()| draw(&root))
                .and_then(|()| root.present().map_err(Into::into));
            drawn.map_err(|e| Error::file(path, format!("cannot draw the plot: {e}")))?;
        }
        let img = image::RgbImage::from_raw(w, h, buffer)
            .ok_or_else(|| Error::file(path, "plot buffer does not match its size"))?;
        save_png(&img, path)
    }

    /// A "no data" note (or a grey frame without a font).
    fn empty(&self, root: &Area, title: &str) -> DrawResult {
        let (w, h) = (self.width as i32, self.height as i32);
        root.draw(&Rectangle::new(
            [(10, 10), (w - 10, h - 10)],
            BLACK.mix(0.3),
        ))?;
        if self.text {
            let style = (FONT, 24).into_font().color(&BLACK);
            root.draw_text(&format!("{title}: no data"), &style, (w / 2 - 120, h / 2))?;
        }
        Ok(())
    }

    /// A chart builder with the title (when text is drawn) and label areas.
    fn chart<'a, 'b>(
        &self,
        root: &'a Area<'b>,
        title: &str,
        left: u32,
        bottom: u32,
    ) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
        let mut builder = ChartBuilder::on(root);
        builder.margin(15);
        if self.text {
            builder
                .caption(title, (FONT, 22))
                .x_label_area_size(bottom)
                .y_label_area_size(left);
        }
        builder
    }

    /// Curves (e.g. train loss, val mIoU) against a common x axis, with a legend.
    pub fn line_plot(
        &self,
        path: &Path,
        title: &str,
        x_label: &str,
        y_label: &str,
        series: &[(String, Vec<(f64, f64)>)],
    ) -> Result<()> {
        let finite: Vec<(&str, Vec<(f64, f64)>)> = series
            .iter()
            .map(|(name, points)| {
                let kept = points
                    .iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && y.is_finite())
                    .collect();
                (name.as_str(), kept)
            })
            .collect();
        let all = || finite.iter().flat_map(|(_, p)| p.iter());
        let ranges = finite_range(all().map(|p| p.0)).zip(finite_range(all().map(|p| p.1)));
        self.render(path, |root| {
            let Some(((x0, x1), (y0, y1))) = ranges else {
                return self.empty(root, title);
            };
            let mut chart = self
                .chart(root, title, 70, 45)
                .build_cartesian_2d(x0..x1, y0..y1)?;
            let mut mesh = chart.configure_mesh();
            if self.text {
                mesh.x_desc(x_label).y_desc(y_label);
            } else {
                mesh.x_labels(0).y_labels(0);
            }
            mesh.draw()?;
            for (i, (name, points)) in finite.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                let drawn = chart.draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))?;
                if self.text {
                    drawn.label(*name).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                }
            }
            if self.text && !finite.is_empty() {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()?;
            }
            Ok(())
        })
    }

    /// Horizontal bars, one per label (e.g. per-class IoU); NaN values get no bar.
    pub fn bar_plot(
        &self,
        path: &Path,
        title: &str,
        labels: &[String],
        values: &[f64],
    ) -> Result<()> {
        if labels.len() != values.len() {
            return Err(Error::file(
                path,
                format!(
                    "bar plot: {} labels for {} values",
                    labels.len(),
                    values.len()
                ),
            ));
        }
        let range = finite_range(values.iter().copied().chain([0.0]));
        self.render(path, |root| {
            let n = labels.len();
            let (Some((lo, hi)), true) = (range, values.iter().any(|v| v.is_finite())) else {
                return self.empty(root, title);
            };
            let mut chart = self
                .chart(root, title, 140, 40)
                .build_cartesian_2d(lo.min(0.0)..hi, 0f64..n as f64)?;
            let label_of = |y: &f64| bar_label(labels, y);
            let mut mesh = chart.configure_mesh();
            mesh.disable_y_mesh()
                .y_labels(if self.text { 2 * n + 1 } else { 0 })
                .y_label_formatter(&label_of);
            if !self.text {
                mesh.x_labels(0);
            }
            mesh.draw()?;
            chart.draw_series(
                values
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_finite())
                    .map(|(i, &v)| {
                        let row = (n - 1 - i) as f64;
                        Rectangle::new(
                            [(0.0, row + 0.15), (v, row + 0.85)],
                            colormap(0.25 + 0.5 * (i % 2) as f64).filled(),
                        )
                    }),
            )?;
            Ok(())
        })
    }

    /// Horizontal bars grouped by label: per label (e.g. class) one bar per group (e.g. run),
    /// coloured by group, with a legend; NaN values get no bar.
    pub fn grouped_bar_plot(
        &self,
        path: &Path,
        title: &str,
        x_label: &str,
        labels: &[String],
        groups: &[(String, Vec<f64>)],
    ) -> Result<()> {
        if let Some((name, values)) = groups.iter().find(|(_, v)| v.len() != labels.len()) {
            return Err(Error::file(
                path,
                format!(
                    "grouped bar plot: {} values of `{name}` for {} labels",
                    values.len(),
                    labels.len()
                ),
            ));
        }
        let all = || groups.iter().flat_map(|(_, v)| v.iter().copied());
        let range = finite_range(all().chain([0.0]));
        let any = all().any(f64::is_finite);
        self.render(path, |root| {
            let n = labels.len();
            let (Some((lo, hi)), true) = (range, any) else {
                return self.empty(root, title);
            };
            let mut chart = self
                .chart(root, title, 140, 45)
                .build_cartesian_2d(lo.min(0.0)..hi * 1.05, 0f64..n as f64)?;
            let label_of = |y: &f64| bar_label(labels, y);
            let mut mesh = chart.configure_mesh();
            mesh.disable_y_mesh()
                .x_desc(x_label)
                .y_labels(if self.text { 2 * n + 1 } else { 0 })
                .y_label_formatter(&label_of);
            if !self.text {
                mesh.x_labels(0);
            }
            mesh.draw()?;
            let height = 0.8 / groups.len().max(1) as f64;
            for (g, (name, values)) in groups.iter().enumerate() {
                let color = Palette99::pick(g).to_rgba();
                let drawn = chart.draw_series(
                    values
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| v.is_finite())
                        .map(|(i, &v)| {
                            let y0 = (n - 1 - i) as f64 + 0.9 - (g + 1) as f64 * height;
                            Rectangle::new([(0.0, y0), (v, y0 + height)], color.filled())
                        }),
                )?;
                if self.text {
                    drawn.label(name.as_str()).legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                    });
                }
            }
            if self.text {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::LowerRight)
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()?;
            }
            Ok(())
        })
    }

    /// A matrix as coloured cells (e.g. expert × class, co-activation) with a colour scale;
    /// NaN cells are grey.
    pub fn heatmap(
        &self,
        path: &Path,
        title: &str,
        row_labels: &[String],
        col_labels: &[String],
        matrix: &[Vec<f64>],
    ) -> Result<()> {
        let (rows, cols) = (matrix.len(), matrix.first().map_or(0, Vec::len));
        if matrix.iter().any(|r| r.len() != cols)
            || row_labels.len() != rows
            || col_labels.len() != cols
        {
            return Err(Error::file(
                path,
                format!(
                    "heatmap: {rows} rows of lengths {:?} for {} row and {} column labels",
                    matrix.iter().map(Vec::len).collect::<Vec<_>>(),
                    row_labels.len(),
                    col_labels.len()
                ),
            ));
        }
        let range = finite_range(matrix.iter().flatten().copied());
        self.render(path, |root| {
            if rows == 0 || cols == 0 {
                return self.empty(root, title);
            }
            let (lo, hi) = range.unwrap_or((0.0, 1.0));
            let (cells, scale) = root.split_horizontally(self.width.saturating_sub(110));
            // Column names wider than their cells are written vertically, so they never overlap.
            let cell_width = self.width.saturating_sub(240) as usize / cols.max(1);
            let widest = col_labels
                .iter()
                .map(|l| l.chars().count())
                .max()
                .unwrap_or(0);
            let rotate = widest * 7 > cell_width;
            let bottom = if rotate {
                (widest * 7 + 20).clamp(90, 160) as u32
            } else {
                90
            };
            let mut chart = self
                .chart(&cells, title, 110, bottom)
                .build_cartesian_2d(0f64..cols as f64, 0f64..rows as f64)?;
            let centre = |v: f64, n: usize, names: &[String], flip: bool| {
                let i = v.floor();
                if (v - i - 0.5).abs() > 1e-6 || i < 0.0 {
                    return String::new();
                }
                let i = if flip { n as f64 - 1.0 - i } else { i };
                names.get(i as usize).cloned().unwrap_or_default()
            };
            let x_fmt = |v: &f64| centre(*v, cols, col_labels, false);
            let y_fmt = |v: &f64| centre(*v, rows, row_labels, true);
            let mut mesh = chart.configure_mesh();
            mesh.disable_mesh();
            let vertical = (FONT, 13)
                .into_font()
                .transform(FontTransform::Rotate90)
                .color(&BLACK);
            if self.text {
                mesh.x_labels(2 * cols + 1)
                    .y_labels(2 * rows + 1)
                    .x_label_formatter(&x_fmt)
                    .y_label_formatter(&y_fmt);
                if rotate {
                    // Written below after the cells: plotters centres rotated labels on the axis.
                    mesh.x_labels(0);
                }
            } else {
                mesh.x_labels(0).y_labels(0);
            }
            mesh.draw()?;
            if self.text && rotate {
                let base = cells.get_base_pixel();
                for (c, name) in col_labels.iter().enumerate() {
                    let (x, y) = chart.backend_coord(&(c as f64 + 0.5, 0.0));
                    // Rotated clockwise, the text runs down from its anchor, left of it.
                    cells.draw_text(name, &vertical, (x - base.0 + 6, y - base.1 + 6))?;
                }
            }
            chart.draw_series(matrix.iter().enumerate().flat_map(|(r, row)| {
                row.iter().enumerate().map(move |(c, &v)| {
                    let y = (rows - 1 - r) as f64;
                    let color = if v.is_finite() {
                        colormap((v - lo) / (hi - lo))
                    } else {
                        RGBColor(160, 160, 160)
                    };
                    Rectangle::new([(c as f64, y), (c as f64 + 1.0, y + 1.0)], color.filled())
                })
            }))?;
            // The colour scale: a bar on the left of its area, values written on its right.
            let mut bar = ChartBuilder::on(&scale)
                .margin(15)
                .margin_top(if self.text { 50 } else { 15 })
                .margin_bottom(if self.text { 105 } else { 15 })
                .margin_right(60)
                .build_cartesian_2d(0f64..1f64, lo..hi)?;
            let steps = 64;
            bar.draw_series((0..steps).map(|i| {
                let (a, b) = (i as f64 / steps as f64, (i + 1) as f64 / steps as f64);
                Rectangle::new(
                    [(0.0, lo + a * (hi - lo)), (1.0, lo + b * (hi - lo))],
                    colormap(a).filled(),
                )
            }))?;
            if self.text {
                let base = scale.get_base_pixel();
                let style = (FONT, 13).into_font().color(&BLACK);
                for i in 0..=4 {
                    let v = lo + (hi - lo) * i as f64 / 4.0;
                    let (x, y) = bar.backend_coord(&(1.0, v));
                    scale.draw_text(
                        &format!("{v:.3}"),
                        &style,
                        (x - base.0 + 5, y - base.1 - 6),
                    )?;
                }
            }
            Ok(())
        })
    }

    /// Expert usage per MoE layer: for each expert, one bar per layer (grouped, with a legend).
    pub fn usage_plot(
        &self,
        path: &Path,
        title: &str,
        layers: &[(String, Vec<f64>)],
    ) -> Result<()> {
        let experts = layers.iter().map(|(_, u)| u.len()).max().unwrap_or(0);
        let range = finite_range(
            layers
                .iter()
                .flat_map(|(_, u)| u.iter().copied())
                .chain([0.0]),
        );
        let any = layers
            .iter()
            .flat_map(|(_, u)| u.iter())
            .any(|v| v.is_finite());
        self.render(path, |root| {
            let (Some((_, hi)), true) = (range, any) else {
                return self.empty(root, title);
            };
            let mut chart = self
                .chart(root, title, 60, 40)
                .build_cartesian_2d(-0.5..experts as f64 - 0.5, 0.0..hi * 1.05)?;
            let x_fmt = |v: &f64| {
                if (v - v.round()).abs() < 1e-6 {
                    format!("{}", v.round())
                } else {
                    String::new()
                }
            };
            let mut mesh = chart.configure_mesh();
            mesh.disable_x_mesh()
                .x_desc("expert")
                .y_desc("usage")
                .x_labels(experts + 1)
                .x_label_formatter(&x_fmt);
            if !self.text {
                mesh.x_labels(0).y_labels(0);
            }
            mesh.draw()?;
            let width = 0.8 / layers.len().max(1) as f64;
            for (l, (name, usage)) in layers.iter().enumerate() {
                let color = Palette99::pick(l).to_rgba();
                let x0 = -0.4 + l as f64 * width;
                let drawn = chart.draw_series(
                    usage
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| v.is_finite())
                        .map(|(e, &v)| {
                            Rectangle::new(
                                [(e as f64 + x0, 0.0), (e as f64 + x0 + width, v)],
                                color.filled(),
                            )
                        }),
                )?;
                if self.text {
                    drawn.label(name.as_str()).legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                    });
                }
            }
            if self.text {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()?;
            }
            Ok(())
        })
    }
}

/// [`Plotter::line_plot`] at the default size.
pub fn line_plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    Plotter::default().line_plot(path, title, x_label, y_label, series)
}

/// [`Plotter::bar_plot`] at the default size.
pub fn bar_plot(path: &Path, title: &str, labels: &[String], values: &[f64]) -> Result<()> {
    Plotter::default().bar_plot(path, title, labels, values)
}

/// [`Plotter::grouped_bar_plot`], 1000 pixels wide and 30 pixels per label (600 at least).
pub fn grouped_bar_plot(
    path: &Path,
    title: &str,
    x_label: &str,
    labels: &[String],
    groups: &[(String, Vec<f64>)],
) -> Result<()> {
    let height = (120 + 30 * labels.len() as u32).max(600);
    Plotter::new(1000, height).grouped_bar_plot(path, title, x_label, labels, groups)
}

/// [`Plotter::heatmap`] at the default size.
pub fn heatmap(
    path: &Path,
    title: &str,
    row_labels: &[String],
    col_labels: &[String],
    matrix: &[Vec<f64>],
) -> Result<()> {
    Plotter::default().heatmap(path, title, row_labels, col_labels, matrix)
}

/// [`Plotter::usage_plot`] at the default size.
pub fn usage_plot(path: &Path, title: &str, layers: &[(String, Vec<f64>)]) -> Result<()> {
    Plotter::default().usage_plot(path, title, layers)
}

/// The routing pictures of one MoE layer (moe.md §4) in `dir`: `<layer>_usage.png`,
/// `<layer>_coactivation.png` and, when class histograms were collected,
/// `<layer>_expert_class.png` and `<layer>_class_expert.png`. Returns the files written.
pub fn routing_report_plots(
    dir: &Path,
    layer: &str,
    report: &crate::moe::RoutingReport,
    class_names: &[impl AsRef<str>],
) -> Result<Vec<std::path::PathBuf>> {
    crate::data::pictures::create_dir(dir)?;
    let stem: String = layer
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let experts: Vec<String> = (0..report.usage.len())
        .map(|e| format!("expert {e}"))
        .collect();
    let classes: Vec<String> = class_names.iter().map(|c| c.as_ref().to_string()).collect();
    let mut written = Vec::new();
    let mut path = |suffix: &str| {
        let p = dir.join(format!("{stem}_{suffix}.png"));
        written.push(p.clone());
        p
    };
    let title = format!(
        "{layer}: expert usage (NRE {:.3}, TEC {:.3}, {} tokens)",
        report.nre, report.tec, report.tokens
    );
    usage_plot(
        &path("usage"),
        &title,
        &[(layer.to_string(), report.usage.clone())],
    )?;
    let title = format!("{layer}: co-activation");
    heatmap(
        &path("coactivation"),
        &title,
        &experts,
        &experts,
        &report.coactivation,
    )?;
    let has_classes = report
        .expert_class
        .first()
        .is_some_and(|row| !row.is_empty());
    if has_classes && classes.len() == report.expert_class[0].len() {
        let title = format!("{layer}: class distribution per expert");
        heatmap(
            &path("expert_class"),
            &title,
            &experts,
            &classes,
            &report.expert_class,
        )?;
        let title = format!("{layer}: expert distribution per class");
        heatmap(
            &path("class_expert"),
            &title,
            &classes,
            &experts,
            &report.class_expert,
        )?;
    }
    Ok(written)
}

/// The label of a horizontal bar chart's y position `y`: bar `i` (drawn top to bottom) sits at
/// row `n − 1 − i` and is labelled at its centre; other positions get no label.
fn bar_label(labels: &[String], y: &f64) -> String {
    let n = labels.len();
    let row = y.floor();
    let i = n as f64 - 1.0 - row;
    if (y - row - 0.5).abs() < 1e-6 && i >= 0.0 {
        labels.get(i as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}
