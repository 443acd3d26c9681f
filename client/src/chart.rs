//! SVG charts of a concurrency sweep: one line per model, concurrency on a
//! log axis (plotters, SVG backend only: no system fonts needed).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One model's measurements: (connections, value).
pub struct Series {
    /// The legend entry.
    pub name: String,
    /// Points, in increasing connection count.
    pub points: Vec<(f64, f64)>,
}

/// The charts' colours (matplotlib's ten), shared with the timelines.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Draws `series` against concurrency into an SVG file at `path`. Both
/// axes are logarithmic: models differ by orders of magnitude.
pub fn draw(path: &Path, title: &str, y_label: &str, series: &[Series]) -> Result<()> {
    let points = series.iter().flat_map(|s| s.points.iter());
    let max_x = points.clone().map(|p| p.0).fold(1.0, f64::max).max(10.0);
    let max_y = points.clone().map(|p| p.1).fold(0.0, f64::max).max(1e-3) * 1.15;
    let min_y = points.map(|p| p.1).filter(|&v| v > 0.0).fold(f64::INFINITY, f64::min).min(max_y / 10.0);
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut builder = ChartBuilder::on(&root);
    builder.caption(title, ("sans-serif", 22)).margin(16).margin_right(48).x_label_area_size(48).y_label_area_size(80);
    let mut chart =
        builder.build_cartesian_2d((1.0..max_x).log_scale(), (min_y..max_y).log_scale()).map_err(plot_error)?;
    chart.configure_mesh().x_desc("concurrent connections").y_desc(y_label).draw().map_err(plot_error)?;
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
            .map_err(plot_error)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing a chart: {err}")
}
