//! The training log: one row per iteration (loss, learning rate, speed) and one per
//! validation (Dice per class), written as CSV and drawn as a PNG of the curves.

use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IterationRow {
    pub iteration: usize,
    pub loss: f64,
    pub learning_rate: f64,
    pub samples_per_s: f64,
    pub voxels_per_s: f64,
    pub elapsed_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidationRow {
    pub iteration: usize,
    /// Mean Dice of each task/class over the held-out cases, in label-space order (NaN for a
    /// task without validation cases).
    #[serde(deserialize_with = "nan_for_null")]
    pub dice: Vec<f64>,
    pub mean_dice: f64,
}

/// JSON has no NaN: serde_json writes it as null, and checkpoints must read it back.
fn nan_for_null<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<f64>, D::Error> {
    let values: Vec<Option<f64>> = Deserialize::deserialize(deserializer)?;
    Ok(values.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub class_names: Vec<String>,
    pub iterations: Vec<IterationRow>,
    pub validations: Vec<ValidationRow>,
}

impl History {
    /// CSV: every iteration row, with the validation columns filled where one ran.
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "iteration,loss,learning_rate,samples_per_s,voxels_per_s,elapsed_s,val_mean_dice",
        );
        for name in &self.class_names {
            out.push_str(&format!(",val_dice:{name}"));
        }
        out.push('\n');
        for row in &self.iterations {
            out.push_str(&format!(
                "{},{:.6},{:.3e},{:.2},{:.0},{:.2}",
                row.iteration,
                row.loss,
                row.learning_rate,
                row.samples_per_s,
                row.voxels_per_s,
                row.elapsed_s
            ));
            match self
                .validations
                .iter()
                .find(|v| v.iteration == row.iteration)
            {
                Some(v) => {
                    out.push_str(&format!(",{:.4}", v.mean_dice));
                    for d in &v.dice {
                        out.push_str(&format!(",{d:.4}"));
                    }
                }
                None => out.push_str(&",".repeat(1 + self.class_names.len())),
            }
            out.push('\n');
        }
        out
    }

    pub fn write_csv(&self, path: &Path) -> Result<()> {
        crate::io::atomic::write_bytes(path, self.to_csv().as_bytes())
    }

    /// Loss (smoothed) on the left, validation Dice per class on the right.
    pub fn write_curves(&self, path: &Path) -> Result<()> {
        crate::report::fonts::register();
        crate::io::atomic::write_with(path, |temp| {
            self.draw(temp)
                .map_err(|e| Error::invalid(path, format!("cannot draw the curves: {e}")))
        })
    }

    fn draw(&self, path: &Path) -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(path, (1200, 450)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(600);
        let last = self.iterations.last().map_or(1, |r| r.iteration.max(1));
        let smoothed = smooth(&self.iterations.iter().map(|r| r.loss).collect::<Vec<_>>());
        let max_loss = smoothed.iter().cloned().fold(1e-3, f64::max) * 1.05;
        let mut chart = ChartBuilder::on(&left)
            .caption("training loss", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(0..last, 0.0..max_loss)?;
        chart
            .configure_mesh()
            .x_desc("iteration")
            .y_desc("loss (cross-entropy; + soft Dice for U-Net crops)")
            .draw()?;
        chart.draw_series(LineSeries::new(
            self.iterations
                .iter()
                .zip(&smoothed)
                .map(|(r, l)| (r.iteration, *l)),
            &BLUE,
        ))?;

        let mut chart = ChartBuilder::on(&right)
            .caption("validation Dice", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(0..last, 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("iteration")
            .y_desc("Dice")
            .draw()?;
        for (c, name) in self.class_names.iter().enumerate() {
            let colour = crate::report::overlay::label_colour(c as u16 + 1);
            let style = RGBColor(colour[0], colour[1], colour[2]);
            chart
                .draw_series(LineSeries::new(
                    self.validations.iter().map(|v| (v.iteration, v.dice[c])),
                    style.stroke_width(2),
                ))?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 15, y)], style.stroke_width(2))
                });
        }
        if !self.class_names.is_empty() && !self.validations.is_empty() {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::LowerRight)
                .draw()?;
        }
        root.present()?;
        Ok(())
    }
}

/// Exponential moving average, to see the trend of a noisy loss.
fn smooth(values: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(values.len());
    let mut acc = None;
    for &v in values {
        let next = match acc {
            None => v,
            Some(a) => 0.9 * a + 0.1 * v,
        };
        acc = Some(next);
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> History {
        History {
            class_names: vec!["A/x".into(), "B/y".into()],
            iterations: (1..=4)
                .map(|i| IterationRow {
                    iteration: i,
                    loss: 1.0 / i as f64,
                    learning_rate: 1e-3,
                    samples_per_s: 10.0,
                    voxels_per_s: 5120.0,
                    elapsed_s: i as f64,
                })
                .collect(),
            validations: vec![ValidationRow {
                iteration: 2,
                dice: vec![0.5, 0.25],
                mean_dice: 0.375,
            }],
        }
    }

    /// A task without validation cases has NaN Dice: the checkpoint's JSON must still resume.
    #[test]
    fn histories_with_nan_dice_round_trip_through_json() {
        let mut h = history();
        h.validations[0].dice[1] = f64::NAN;
        let back: History = serde_json::from_slice(&serde_json::to_vec(&h).unwrap()).unwrap();
        assert_eq!(back.validations[0].dice[0], 0.5);
        assert!(back.validations[0].dice[1].is_nan());
        assert_eq!(back.iterations, h.iterations);
    }

    #[test]
    fn csv_has_validation_columns_where_validation_ran() {
        let csv = history().to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[0].ends_with("val_dice:A/x,val_dice:B/y"));
        assert!(lines[2].ends_with(",0.3750,0.5000,0.2500"), "{}", lines[2]);
        assert!(lines[1].ends_with(",,,"), "{}", lines[1]);
    }

    #[test]
    fn curves_are_drawn_to_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.png");
        history().write_curves(&path).unwrap();
        let png = image::open(&path).unwrap();
        assert_eq!((png.width(), png.height()), (1200, 450));
    }
}
