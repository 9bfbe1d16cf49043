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

use super::filter::dilate;
use crate::datasets::Modality;

/// CT voxels at or below this many Hounsfield units are air outside the body.
pub const CT_AIR_HU: f32 = -950.0;

/// [`Normalization::MrForegroundZ`]'s margin around the foreground: enough to take in the
/// partial-volume edge, too little to reach the skull.
pub const FOREGROUND_MARGIN_MM: f64 = 4.0;

/// Fewer foreground voxels than this (16 ml of 2 mm voxels) is no foreground to normalise
/// over: the body's statistics are used instead.
pub const MIN_FOREGROUND_VOXELS: usize = 2000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Normalization {
    /// Per-image robust z-score over the body.
    MrRobustZ,
    /// Per-image robust z-score over the task's foreground and [`FOREGROUND_MARGIN_MM`]
    /// around it: the same input for one brain whatever surrounds it (a whole head, or nothing
    /// after skull stripping). [`Normalization::apply`] gives the body's z-score, the first
    /// pass of segmentation, which finds the foreground; [`normalise_over`] then scores the
    /// image over it (training takes the foreground from the label maps).
    MrForegroundZ,
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

/// Several percentiles of a subsample, each by selection (linear time, no sort).
pub fn percentiles(values: &[f32], qs: &[f64]) -> Vec<f32> {
    if values.is_empty() {
        return vec![0.0; qs.len()];
    }
    let stride = (values.len() / 2_000_000).max(1);
    let mut sample: Vec<f32> = values.iter().step_by(stride).copied().collect();
    let last = sample.len() - 1;
    qs.iter()
        .map(|q| {
            let rank = ((q / 100.0 * last as f64).round() as usize).min(last);
            *sample.select_nth_unstable_by(rank, f32::total_cmp).1
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
            Normalization::MrRobustZ | Normalization::MrForegroundZ => mr_parameters(data),
        };
        applied.apply(data);
        applied
    }

    /// Whether this normalisation is taken over the task's foreground.
    pub fn needs_foreground(&self) -> bool {
        matches!(self, Normalization::MrForegroundZ)
    }
}

impl Applied {
    /// Clips `data` to the window and z-scores it.
    pub fn apply(&self, data: &mut [f32]) {
        let scale = 1.0 / self.std;
        for v in data.iter_mut() {
            *v = (v.clamp(self.lower, self.upper) - self.mean) * scale;
        }
    }
}

/// Z-scores `data` over the voxels of `mask` (clipped to their 0.5-99.5 percentiles, as the
/// body's z-score is): [`Normalization::MrForegroundZ`]. On an image already z-scored over
/// the body this is the same as scoring the raw image over the mask, but where the body's
/// window clipped. With fewer than [`MIN_FOREGROUND_VOXELS`] in the mask, the body's z-score.
pub fn normalise_over(data: &mut [f32], mask: &[bool]) -> Applied {
    assert_eq!(data.len(), mask.len(), "one mask value per voxel");
    let inside: Vec<f32> = data
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m)
        .map(|(v, _)| *v)
        .collect();
    let applied = if inside.len() < MIN_FOREGROUND_VOXELS {
        mr_parameters(data)
    } else {
        window_statistics(&inside)
    };
    applied.apply(data);
    applied
}

/// The voxels [`normalise_over`] takes for a label map on `shape` with `spacing` (mm): the
/// labelled ones and those within [`FOREGROUND_MARGIN_MM`] of them (a box).
pub fn foreground_mask(labels: &[u16], shape: [usize; 3], spacing: [f64; 3]) -> Vec<bool> {
    let labelled: Vec<bool> = labels.iter().map(|&l| l > 0).collect();
    let radius = spacing.map(|s| (FOREGROUND_MARGIN_MM / s).round() as usize);
    dilate(&labelled, shape, radius)
}

/// The window (0.5-99.5 percentiles) of `values` and the mean and standard deviation of them
/// clipped to it.
fn window_statistics(values: &[f32]) -> Applied {
    let w = percentiles(values, &[0.5, 99.5]);
    let (lower, upper) = (w[0], w[1].max(w[0] + 1e-3));
    let (mean, std) = mean_std(values.iter().map(|v| v.clamp(lower, upper)));
    Applied {
        lower,
        upper,
        mean,
        std,
    }
}

/// The intensity above which a voxel is in the body: 5% of the 1-99 percentile range of
/// `data` (air and noise fall below).
pub fn body_threshold(data: &[f32]) -> f32 {
    let p = percentiles(data, &[1.0, 99.0]);
    p[0] + 0.05 * (p[1] - p[0])
}

/// Body = voxels above [`body_threshold`]; the window is the body's 0.5-99.5 percentiles; the
/// z-score uses the clipped body voxels.
fn mr_parameters(data: &[f32]) -> Applied {
    let threshold = body_threshold(data);
    let body: Vec<f32> = data.iter().copied().filter(|&v| v > threshold).collect();
    let body = if body.len() < 16 { data.to_vec() } else { body };
    window_statistics(&body)
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
    fn foreground_z_score_is_the_same_with_or_without_the_head_around_it() {
        // A "brain" of 3000 voxels around 100 +- 20, inside a head of bright fat (400) and
        // dark skull (30), in air (0); and the same brain skull-stripped.
        let brain: Vec<f32> = (0..3000).map(|i| 80.0 + (i % 41) as f32).collect();
        let mut head = brain.clone();
        head.extend((0..2000).map(|i| if i % 2 == 0 { 400.0 } else { 30.0 }));
        head.extend(std::iter::repeat_n(0.0, 5000));
        let mut stripped = brain.clone();
        stripped.extend(std::iter::repeat_n(0.0, 7000));
        let mask: Vec<bool> = (0..10_000).map(|i| i < 3000).collect();
        for image in [&mut head, &mut stripped] {
            // The first pass's body z-score, then the foreground's.
            Normalization::MrForegroundZ.apply(image);
            normalise_over(image, &mask);
        }
        for (a, b) in head[..3000].iter().zip(&stripped[..3000]) {
            assert!((a - b).abs() < 1e-4, "{a} against {b}");
        }
        let (m, s) = mean_std(head[..3000].iter().copied());
        assert!(m.abs() < 0.01 && (s - 1.0).abs() < 0.02, "{m} {s}");
        // Too small a foreground: the body's z-score.
        let mut tiny = head.clone();
        let small: Vec<bool> = (0..10_000).map(|i| i < 100).collect();
        let applied = normalise_over(&mut tiny, &small);
        let mut body = head.clone();
        assert_eq!(applied, Normalization::MrRobustZ.apply(&mut body));
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
