//! The storm chart: per mode, the share of offered calls that succeeded
//! and the attempts sent per offered call, over time, with the trigger
//! shaded.

use std::path::Path;

use plotters::element::DashedPathElement;
use plotters::prelude::*;

use crate::fleet::{Mode, Run};
use crate::model::Scenario;

/// One colour per run, in `Mode::ALL` then `Mode::EXTRA` order.
const COLOURS: [RGBColor; 6] = [
    RGBColor(120, 120, 120),
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Draws the goodput and amplification panels of `runs` into an SVG file.
pub fn draw(
    path: &Path,
    scenario: &Scenario,
    runs: &[Run],
    caption: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (900, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(40);
    title.titled(caption, ("sans-serif", 20))?;
    let (upper, lower) = body.split_vertically(300);
    let end = scenario.duration.as_secs_f64();
    let bucket = scenario.bucket.as_secs_f64();
    let (t0, t1) = (
        scenario.trigger_start.as_secs_f64(),
        scenario.trigger_end().as_secs_f64(),
    );
    let series = |run: &Run, value: &dyn Fn(&crate::model::CallBucket) -> Option<f64>| {
        run.calls
            .iter()
            .enumerate()
            .take(scenario.arrival_buckets())
            .filter_map(|(i, b)| value(b).map(|v| ((i as f64 + 0.5) * bucket, v)))
            .collect::<Vec<(f64, f64)>>()
    };

    let mut top = ChartBuilder::on(&upper)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..1.05)?;
    top.configure_mesh()
        .y_desc("calls that succeeded ÷ offered")
        .x_desc("seconds")
        .label_style(("sans-serif", 13))
        .draw()?;
    top.draw_series(std::iter::once(Rectangle::new(
        [(t0, 0.0), (t1, 1.05)],
        RGBColor(230, 230, 230).filled(),
    )))?;
    for (i, run) in runs.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points = series(run, &|b| {
            let done = b.succeeded + b.failed;
            (done > 0).then(|| b.succeeded as f64 / done as f64)
        });
        let extra = Mode::EXTRA.contains(&run.mode);
        let anno = if extra {
            // The extra row is dashed: it lies on top of naive's line.
            top.draw_series(std::iter::once(DashedPathElement::new(
                points,
                6,
                4,
                colour.stroke_width(2),
            )))?
        } else {
            top.draw_series(std::iter::once(PathElement::new(
                points,
                colour.stroke_width(2),
            )))?
        };
        anno.label(run.mode.name()).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(3))
        });
    }
    top.configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;

    let peak = runs
        .iter()
        .flat_map(|run| series(run, &|b| amplification(b)))
        .map(|(_, v)| v)
        .fold(1.0, f64::max);
    let mut bottom = ChartBuilder::on(&lower)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..(peak * 1.1))?;
    bottom
        .configure_mesh()
        .y_desc("attempts ÷ offered calls")
        .x_desc("seconds (shaded: capacity at 50 %)")
        .label_style(("sans-serif", 13))
        .draw()?;
    bottom.draw_series(std::iter::once(Rectangle::new(
        [(t0, 0.0), (t1, peak * 1.1)],
        RGBColor(230, 230, 230).filled(),
    )))?;
    for (i, run) in runs.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points = series(run, &|b| amplification(b));
        if Mode::EXTRA.contains(&run.mode) {
            bottom.draw_series(std::iter::once(DashedPathElement::new(
                points,
                6,
                4,
                colour.stroke_width(2),
            )))?;
        } else {
            bottom.draw_series(std::iter::once(PathElement::new(
                points,
                colour.stroke_width(2),
            )))?;
        }
    }
    root.present()?;
    Ok(())
}

fn amplification(b: &crate::model::CallBucket) -> Option<f64> {
    (b.offered > 0).then(|| b.attempts as f64 / b.offered as f64)
}
