//! The figures of a run report, drawn with `plotters` into RGB buffers and written as
//! PNG: line charts (loss, learning rates, validation mIoU), a horizontal bar chart
//! (per-class IoU) and a heat map (row-normalised confusion matrix).
//!
//! Text is rendered with DejaVu Sans, registered once with plotters' `ab_glyph`
//! backend, so figures look the same on every machine and need no system fonts.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;

use crate::error::{format_err, Result};
use crate::imageops::Image8;

/// The font family name figures use.
const FONT: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // DejaVu Sans is a valid TrueType font; a failure here would be a packaging bug.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// One line of a line chart.
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// (x, y) points in x order.
    pub points: Vec<(f64, f64)>,
    /// Line colour (RGB).
    pub color: [u8; 3],
}

/// Distinct colours for the i-th series of a chart (the first is the validation curve's
/// purple; then the Tableau-10 order), repeating after ten.
pub fn series_color(i: usize) -> [u8; 3] {
    const COLORS: [[u8; 3]; 10] = [
        [120, 40, 160],
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [140, 86, 75],
        [227, 119, 194],
        [127, 127, 127],
        [188, 189, 34],
        [23, 190, 207],
    ];
    COLORS[i % COLORS.len()]
}

fn draw_err<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> crate::Error + '_ {
    move |e| format_err!("drawing {what}: {e:?}")
}

/// Renders into a white `width × height` canvas and writes it as PNG.
fn render(path: &Path, width: u32, height: u32, draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<()>) -> Result<()> {
    register_font();
    let mut buf = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err("the background"))?;
        draw(&root)?;
        root.present().map_err(draw_err("the figure"))?;
    }
    Image8 { width: width as usize, height: height as usize, channels: 3, data: buf }.save_png(path)
}

/// The (min, max) of values, widened when empty or flat so an axis has extent.
fn extent(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { lo.abs().max(1e-3) * 0.1 };
    (lo - pad, hi + pad)
}

/// One panel of line charts: its title, axis labels, series and marked point.
pub struct Panel<'a> {
    /// Caption.
    pub title: &'a str,
    /// x axis label.
    pub x_label: &'a str,
    /// y axis label.
    pub y_label: &'a str,
    /// The lines.
    pub series: &'a [Series],
    /// A point to mark with a circle and its value (e.g. the best validation).
    pub best: Option<(f64, f64)>,
}

/// A line chart of `series` over a shared x axis; `best` marks one point (e.g. the
/// best validation) with a circle and its value.
pub(crate) fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    best: Option<(f64, f64)>,
) -> Result<()> {
    line_panels(path, &[Panel { title, x_label, y_label, series, best }])
}

/// Line charts side by side (800 pixels wide each).
pub fn line_panels(path: &Path, panels: &[Panel]) -> Result<()> {
    render(path, 800 * panels.len().max(1) as u32, 420, |root| {
        let areas = root.split_evenly((1, panels.len().max(1)));
        panels.iter().zip(&areas).try_for_each(|(p, area)| draw_lines(area, p))
    })
}

/// Where the legend hides the least: lower right when the lines end high (a rising
/// mIoU), upper right otherwise (a falling loss).
fn legend_corner(series: &[Series], (y0, y1): (f64, f64)) -> SeriesLabelPosition {
    let ends: Vec<f64> = series.iter().filter_map(|s| s.points.last().map(|p| p.1)).collect();
    let mean = ends.iter().sum::<f64>() / ends.len().max(1) as f64;
    if !ends.is_empty() && mean > (y0 + y1) / 2.0 {
        SeriesLabelPosition::LowerRight
    } else {
        SeriesLabelPosition::UpperRight
    }
}

fn draw_lines(area: &DrawingArea<BitMapBackend, Shift>, p: &Panel) -> Result<()> {
    let (x0, x1) = extent(p.series.iter().flat_map(|s| s.points.iter().map(|q| q.0)));
    let (y0, y1) = extent(p.series.iter().flat_map(|s| s.points.iter().map(|q| q.1)));
    let title = p.title;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(draw_err(title))?;
    chart
        .configure_mesh()
        .x_desc(p.x_label)
        .y_desc(p.y_label)
        .label_style((FONT, 14))
        .y_label_formatter(&|v| if y1 - y0 >= 5.0 { format!("{v:.1}") } else { format!("{v:.3}") })
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(draw_err(title))?;
    for s in p.series {
        let c = RGBColor(s.color[0], s.color[1], s.color[2]);
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))
            .map_err(draw_err(title))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    if let Some((bx, by)) = p.best {
        let red = RGBColor(200, 30, 30);
        chart
            .draw_series(std::iter::once(Circle::new((bx, by), 6, red.stroke_width(2))))
            .map_err(draw_err(title))?
            .label(format!("best {by:.4} @ {bx:.0}"))
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, red.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(legend_corner(p.series, (y0, y1)))
        .draw()
        .map_err(draw_err(title))
}

/// Horizontal bars of one value in [0, 1] per class (NaN = absent, drawn as no bar
/// and labelled "n/a").
pub(crate) fn bar_chart(path: &Path, title: &str, names: &[String], values: &[f64]) -> Result<()> {
    if names.is_empty() || values.len() != names.len() {
        return Err(crate::Error::invalid_input("plot data", format!("{title}: {} values for {} class names", values.len(), names.len())));
    }
    let k = names.len() as u32;
    render(path, 800, 120 + 26 * k, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(130)
            .build_cartesian_2d(0f64..1f64, (0..k - 1).into_segmented())
            .map_err(draw_err(title))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(k as usize)
            .label_style((FONT, 14))
            .y_label_formatter(&|v| match v {
                // The first class at the top.
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) if *i < k => names[(k - 1 - i) as usize].clone(),
                _ => String::new(),
            })
            .x_desc("IoU")
            .draw()
            .map_err(draw_err(title))?;
        let bars = values.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(i, v)| (k - 1 - i as u32, *v));
        chart
            .draw_series(Histogram::horizontal(&chart).style(RGBColor(60, 110, 180).filled()).margin(4).data(bars))
            .map_err(draw_err(title))?;
        let labels = values.iter().enumerate().map(|(i, v)| {
            let text = if v.is_finite() { format!("{:.1}", v * 100.0) } else { "n/a".into() };
            let x = if v.is_finite() { v.min(0.9) + 0.01 } else { 0.01 };
            Text::new(text, (x, SegmentValue::CenterOf(k - 1 - i as u32)), (FONT, 13))
        });
        chart.draw_series(labels).map_err(draw_err(title))?;
        Ok(())
    })
}

/// A heat map of a K × K row-major confusion matrix (row = ground truth),
/// normalised per row; rows without pixels stay white.
pub(crate) fn confusion_heatmap(path: &Path, title: &str, names: &[String], matrix: &[u64]) -> Result<()> {
    let k = names.len();
    if matrix.len() != k * k {
        return Err(crate::Error::invalid_input("plot data", format!("{title}: the matrix has {} entries, not {k}×{k}", matrix.len())));
    }
    let kk = k.max(1) as u32;
    let side = 120 + 30 * kk;
    render(path, side + 120, side + 80, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 22))
            .margin(12)
            .x_label_area_size(130)
            .y_label_area_size(140)
            .build_cartesian_2d((0..kk - 1).into_segmented(), (0..kk - 1).into_segmented())
            .map_err(draw_err(title))?;
        // Row 0 at the top: the y axis counts down. Rows are labelled "index name",
        // columns "name index" written downwards (rotated labels are centred on their
        // tick, so each is padded with spaces at its start to fall
        // entirely below the axis).
        let row_label = |v: &SegmentValue<u32>| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) if *i < kk => {
                let r = kk - 1 - i;
                format!("{r} {}", names.get(r as usize).map(String::as_str).unwrap_or(""))
            }
            _ => String::new(),
        };
        let col_label = |v: &SegmentValue<u32>| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) if *i < kk => {
                let text = format!("{} {i}", names.get(*i as usize).map(String::as_str).unwrap_or(""));
                // Spaces are narrower than letters: 1.5× the length covers the name.
                format!("{}{text}", " ".repeat(text.chars().count() * 3 / 2 + 2))
            }
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(k)
            .y_labels(k)
            .y_label_style((FONT, 13))
            .x_label_style(TextStyle::from((FONT, 13).into_font()).transform(FontTransform::Rotate90))
            .x_label_formatter(&col_label)
            .y_label_formatter(&row_label)
            .x_desc("prediction")
            .y_desc("ground truth")
            .axis_desc_style((FONT, 14))
            .draw()
            .map_err(draw_err(title))?;
        let cells = (0..k).flat_map(|r| {
            let total: u64 = matrix[r * k..(r + 1) * k].iter().sum();
            (0..k).map(move |c| {
                let v = if total > 0 { matrix[r * k + c] as f64 / total as f64 } else { f64::NAN };
                let color = if v.is_finite() { ViridisRGB::get_color(v as f32) } else { WHITE };
                let (x, y) = (c as u32, kk - 1 - r as u32);
                Rectangle::new(
                    [(SegmentValue::Exact(x), SegmentValue::Exact(y)), (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1))],
                    color.filled(),
                )
            })
        });
        chart.draw_series(cells).map_err(draw_err(title))?;
        Ok(())
    })
}

/// One series of a grouped bar chart: a name, a colour and a (mean, spread) per group.
pub struct BarSeries {
    /// Legend entry.
    pub name: String,
    /// Bar colour (RGB).
    pub color: [u8; 3],
    /// (mean, ± spread) per group; a NaN mean draws no bar, a zero spread no whisker.
    pub values: Vec<(f64, f64)>,
}

/// Vertical bars grouped by `groups` (one bar per series in each group), with
/// ± spread whiskers and a legend.
pub fn grouped_bar_chart(path: &Path, title: &str, y_label: &str, groups: &[String], series: &[BarSeries]) -> Result<()> {
    if groups.is_empty() || series.is_empty() || series.iter().any(|s| s.values.len() != groups.len()) {
        return Err(crate::Error::invalid_input("plot data", format!("{title}: every series needs one value per group")));
    }
    let top = series.iter().flat_map(|s| s.values.iter().map(|(m, e)| m + e)).filter(|v| v.is_finite()).fold(1.0f64, f64::max) * 1.12;
    let (g, n) = (groups.len() as f64, series.len() as f64);
    let width = (180.0 + g * (n * 22.0 + 30.0)).max(700.0) as u32;
    render(path, width, 520, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 22))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..g, 0f64..top)
            .map_err(draw_err(title))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups.len() * 2 + 1)
            .x_label_formatter(&|v| {
                let i = (v - 0.5).round();
                if (v - 0.5 - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < groups.len() {
                    groups[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .y_desc(y_label)
            .label_style((FONT, 14))
            .draw()
            .map_err(draw_err(title))?;
        let slot = 0.8 / n;
        for (k, s) in series.iter().enumerate() {
            let c = RGBColor(s.color[0], s.color[1], s.color[2]);
            let x0 = |gi: usize| gi as f64 + 0.1 + k as f64 * slot;
            let bars = s
                .values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.0.is_finite())
                .map(|(gi, v)| Rectangle::new([(x0(gi), 0.0), (x0(gi) + slot * 0.9, v.0)], c.filled()));
            chart
                .draw_series(bars)
                .map_err(draw_err(title))?
                .label(s.name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()));
            let whiskers = s.values.iter().enumerate().filter(|(_, v)| v.0.is_finite() && v.1 > 0.0).map(|(gi, v)| {
                let xm = x0(gi) + slot * 0.45;
                PathElement::new(vec![(xm, v.0 - v.1), (xm, v.0 + v.1)], BLACK.stroke_width(1))
            });
            chart.draw_series(whiskers).map_err(draw_err(title))?;
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(draw_err(title))
    })
}

/// `body` under a white header band of `height` pixels with one centred title per
/// column (columns `column_width` wide, `gap` apart, as `hstack` lays them out).
pub fn with_column_titles(body: &Image8, titles: &[String], column_width: usize, gap: usize, height: usize) -> Result<Image8> {
    register_font();
    let (w, h) = (body.width, body.height + height);
    let mut buf = vec![255u8; w * h * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w as u32, h as u32)).into_drawing_area();
        let style = TextStyle::from((FONT, 15).into_font()).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Center,
        ));
        for (i, t) in titles.iter().enumerate() {
            let x = i * (column_width + gap) + column_width / 2;
            root.draw_text(t, &style, (x as i32, (height / 2) as i32)).map_err(draw_err("a column title"))?;
        }
        root.present().map_err(draw_err("the titles"))?;
    }
    for y in 0..body.height {
        let src = &body.data[y * w * 3..(y + 1) * w * 3];
        buf[(y + height) * w * 3..(y + height + 1) * w * 3].copy_from_slice(src);
    }
    Ok(Image8 { width: w, height: h, channels: 3, data: buf })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn distinct_colors(path: &Path) -> usize {
        let img = Image8::open_rgb(path).unwrap();
        let mut seen = std::collections::HashSet::new();
        for px in img.data.chunks(img.channels) {
            seen.insert(px.to_vec());
        }
        seen.len()
    }

    /// Each figure is written, has the size asked for, and is not blank (a blank
    /// canvas has one colour; axes, text and data give many).
    #[test]
    fn figures_are_drawn() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = ["road", "car", "sky"].iter().map(|s| s.to_string()).collect();
        let s = Series { name: "loss".into(), points: vec![(10.0, 2.0), (20.0, 1.5), (30.0, 1.2)], color: [0, 0, 200] };
        line_chart(&dir.path().join("l.png"), "loss", "iteration", "loss", &[s], Some((20.0, 1.5))).unwrap();
        bar_chart(&dir.path().join("b.png"), "IoU", &names, &[0.5, f64::NAN, 0.9]).unwrap();
        confusion_heatmap(&dir.path().join("c.png"), "confusion", &names, &[5, 1, 0, 0, 0, 0, 2, 2, 9]).unwrap();
        let series = [
            BarSeries { name: "a".into(), color: [200, 0, 0], values: vec![(50.0, 2.0), (30.0, 0.0), (f64::NAN, 0.0)] },
            BarSeries { name: "b".into(), color: [0, 0, 200], values: vec![(40.0, 1.0), (35.0, 3.0), (10.0, 1.0)] },
        ];
        grouped_bar_chart(&dir.path().join("g.png"), "mIoU", "%", &names, &series).unwrap();
        for f in ["l.png", "b.png", "c.png", "g.png"] {
            assert!(distinct_colors(&dir.path().join(f)) > 20, "{f} looks blank");
        }
        assert!(confusion_heatmap(&dir.path().join("x.png"), "bad", &names, &[1, 2]).is_err());
        assert!(grouped_bar_chart(&dir.path().join("y.png"), "bad", "%", &names[..1], &series).is_err());
    }

    /// Titles are drawn into the header band (dark pixels there), and the body is
    /// copied below it unchanged.
    #[test]
    fn column_titles_sit_above_the_body() {
        let body = Image8::new(210, 40, 3, 90);
        let out = with_column_titles(&body, &["target".into(), "FAMix".into()], 100, 10, 24).unwrap();
        assert_eq!((out.width, out.height), (210, 64));
        assert!(out.data[..210 * 24 * 3].iter().any(|&v| v < 128), "no title drawn");
        assert_eq!(&out.data[210 * 24 * 3..], &body.data[..]);
    }
}
