//! Intensity normalisation by modality, as nnU-Net does it.
//! - MR intensities have no absolute scale: each image gets a robust z-score over its body
//!   (voxels above a low threshold), after clipping to the body's 0.5-99.5 percentiles.
//! - CT is in Hounsfield units: every image is clipped to one window and z-scored with one
//!   mean and standard deviation, both measured on the training set. nnU-Net measures them on
//!   the labelled foreground; mtseg measures them over the body (everything denser than air),
//!   because with a foreground of thin vessels nnU-Net's window flattens fat, lung and air to
//!   one value and the network loses the context that finds the vessels (on the coronary
//!   phantom: validation Dice 0.49 with the foreground window, 0.66 with the body window).

use serde::{Deserialize, Serialize};

use crate::datasets::Modality;

/// CT voxels at or below this many Hounsfield units are air outside the body.
pub const CT_AIR_HU: f32 = -950.0;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Normalization {
    /// Per-image robust z-score over the body.
    MrRobustZ,
    /// Dataset-wide window and statistics (Hounsfield units).
    CtWindow {
        lower: f32,
        upper: f32,
        mean: f32,
        std: f32,
    },
}

/// The parameters actually applied to one image (recorded in sidecars and logs).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub lower: f32,
    pub upper: f32,
    pub mean: f32,
    pub std: f32,
}

/// The value at `q` (0..=100) of `values`, on a subsample of at most ~2M values.
pub fn percentile(values: &[f32], q: f64) -> f32 {
    percentiles(values, &[q])[0]
}

/// Several percentiles from one sort of a subsample.
pub fn percentiles(values: &[f32], qs: &[f64]) -> Vec<f32> {
    if values.is_empty() {
        return vec![0.0; qs.len()];
    }
    let stride = (values.len() / 2_000_000).max(1);
    let mut sample: Vec<f32> = values.iter().step_by(stride).copied().collect();
    sample.sort_unstable_by(f32::total_cmp);
    qs.iter()
        .map(|q| {
            let rank = (q / 100.0 * (sample.len() - 1) as f64).round() as usize;
            sample[rank.min(sample.len() - 1)]
        })
        .collect()
}

fn mean_std(values: impl Iterator<Item = f32>) -> (f32, f32) {
    let (mut n, mut sum, mut sum2) = (0f64, 0f64, 0f64);
    for v in values {
        n += 1.0;
        sum += v as f64;
        sum2 += (v as f64) * (v as f64);
    }
    if n == 0.0 {
        return (0.0, 1.0);
    }
    let mean = sum / n;
    let var = (sum2 / n - mean * mean).max(0.0);
    (mean as f32, (var.sqrt() as f32).max(1e-6))
}

impl Normalization {
    /// The default for a modality. CT starts from a wide body window; training replaces it
    /// with statistics of its data ([`Normalization::ct_from_body`]).
    pub fn default_for(modality: Modality) -> Self {
        match modality {
            Modality::MR => Normalization::MrRobustZ,
            Modality::CT => Normalization::CtWindow {
                lower: -1000.0,
                upper: 2000.0,
                mean: 0.0,
                std: 500.0,
            },
        }
    }

    /// CT normalisation from training voxels denser than air ([`CT_AIR_HU`]): window = their
    /// 0.5-99.5 percentiles, mean and std of them after clipping.
    pub fn ct_from_body(body: &[f32]) -> Self {
        let p = percentiles(body, &[0.5, 99.5]);
        let (lower, upper) = (p[0], p[1].max(p[0] + 1.0));
        let (mean, std) = mean_std(body.iter().map(|v| v.clamp(lower, upper)));
        Normalization::CtWindow {
            lower,
            upper,
            mean,
            std,
        }
    }

    /// Normalises `data` in place and returns what was applied.
    pub fn apply(&self, data: &mut [f32]) -> Applied {
        let applied = match *self {
            Normalization::CtWindow {
                lower,
                upper,
                mean,
                std,
            } => Applied {
                lower,
                upper,
                mean,
                std,
            },
            Normalization::MrRobustZ => mr_parameters(data),
        };
        let scale = 1.0 / applied.std;
        for v in data.iter_mut() {
            *v = (v.clamp(applied.lower, applied.upper) - applied.mean) * scale;
        }
        applied
    }
}

/// Body = voxels above 5% of the 1-99 percentile range (air and noise fall below); the
/// window is the body's 0.5-99.5 percentiles; the z-score uses the clipped body voxels.
fn mr_parameters(data: &[f32]) -> Applied {
    let p = percentiles(data, &[1.0, 99.0]);
    let threshold = p[0] + 0.05 * (p[1] - p[0]);
    let body: Vec<f32> = data.iter().copied().filter(|&v| v > threshold).collect();
    let body = if body.len() < 16 { data.to_vec() } else { body };
    let w = percentiles(&body, &[0.5, 99.5]);
    let (lower, upper) = (w[0], w[1].max(w[0] + 1e-3));
    let (mean, std) = mean_std(body.iter().map(|v| v.clamp(lower, upper)));
    Applied {
        lower,
        upper,
        mean,
        std,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks() {
        let v: Vec<f32> = (0..101).map(|i| i as f32).collect();
        assert_eq!(percentiles(&v, &[0.0, 50.0, 100.0]), vec![0.0, 50.0, 100.0]);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn mr_z_score_ignores_the_air_around_the_body() {
        // Half air (0), half body around 100 +- 10.
        let mut data: Vec<f32> = (0..2000)
            .map(|i| {
                if i < 1000 {
                    0.0
                } else {
                    90.0 + (i % 21) as f32
                }
            })
            .collect();
        let applied = Normalization::MrRobustZ.apply(&mut data);
        assert!((applied.mean - 100.0).abs() < 1.0, "{applied:?}");
        let body: Vec<f32> = data[1000..].to_vec();
        let (m, s) = mean_std(body.into_iter());
        assert!(m.abs() < 0.05 && (s - 1.0).abs() < 0.05, "{m} {s}");
    }

    #[test]
    fn ct_window_clips_then_scores() {
        let foreground: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let n = Normalization::ct_from_body(&foreground);
        let Normalization::CtWindow {
            lower, upper, mean, ..
        } = n
        else {
            panic!("CT normalisation expected");
        };
        assert!((lower - 5.0).abs() <= 1.0 && (upper - 994.0).abs() <= 1.0);
        assert!((mean - 499.5).abs() < 1.0);
        let mut data = vec![-3000.0, 499.5, 3000.0];
        n.apply(&mut data);
        assert!(data[0] < -1.5 && data[1].abs() < 0.01 && data[2] > 1.5);
        // Everything below the window maps to the window's lower edge.
        let mut below = vec![lower - 1.0, lower - 500.0];
        n.apply(&mut below);
        assert_eq!(below[0], below[1]);
    }
}
