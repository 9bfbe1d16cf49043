//! Overlap and surface metrics of one class: Dice, 95th-percentile Hausdorff distance and
//! average symmetric surface distance in millimetres, and volumes in millilitres.
//!
//! Surfaces are the class voxels with a 6-neighbour outside the class (or on the volume's
//! border). Surface distances come from a Euclidean distance transform over the bounding box
//! of both masks, not from comparing every pair of points.

use serde::{Deserialize, Serialize};

use super::edt::squared_distance;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub dice: f64,
    /// `None` when either mask is empty: the distance is not defined.
    pub hd95_mm: Option<f64>,
    pub assd_mm: Option<f64>,
    pub reference_ml: f64,
    pub predicted_ml: f64,
}

/// Dice of one label; 1 when neither volume holds it.
pub fn dice(predicted: &[u16], reference: &[u16], label: u16) -> f64 {
    let (mut both, mut p, mut r) = (0usize, 0usize, 0usize);
    for (&a, &b) in predicted.iter().zip(reference) {
        let (ia, ib) = (a == label, b == label);
        both += (ia && ib) as usize;
        p += ia as usize;
        r += ib as usize;
    }
    if p + r == 0 {
        1.0
    } else {
        2.0 * both as f64 / (p + r) as f64
    }
}

/// Every metric of one label.
pub fn class_metrics(
    predicted: &[u16],
    reference: &[u16],
    label: u16,
    shape: [usize; 3],
    spacing: [f64; 3],
) -> ClassMetrics {
    let voxel_ml = spacing.iter().product::<f64>() / 1000.0;
    let count = |v: &[u16]| v.iter().filter(|&&l| l == label).count();
    let (np, nr) = (count(predicted), count(reference));
    let (hd95_mm, assd_mm) = if np == 0 || nr == 0 {
        (None, None)
    } else {
        let (hd, assd) = surface_distances(predicted, reference, label, shape, spacing);
        (Some(hd), Some(assd))
    };
    ClassMetrics {
        dice: dice(predicted, reference, label),
        hd95_mm,
        assd_mm,
        reference_ml: nr as f64 * voxel_ml,
        predicted_ml: np as f64 * voxel_ml,
    }
}

/// The bounding box (inclusive lower, exclusive upper) of voxels holding `label` in either
/// volume, grown by one voxel.
fn bounding_box(a: &[u16], b: &[u16], label: u16, shape: [usize; 3]) -> ([usize; 3], [usize; 3]) {
    let mut lo = shape;
    let mut hi = [0; 3];
    let [nx, ny, _] = shape;
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        if x == label || y == label {
            let c = [i % nx, (i / nx) % ny, i / (nx * ny)];
            for k in 0..3 {
                lo[k] = lo[k].min(c[k]);
                hi[k] = hi[k].max(c[k] + 1);
            }
        }
    }
    (
        lo.map(|l| l.saturating_sub(1)),
        [0, 1, 2].map(|k| (hi[k] + 1).min(shape[k])),
    )
}

/// Class mask of a box of the volume.
fn crop_mask(
    v: &[u16],
    label: u16,
    shape: [usize; 3],
    lo: [usize; 3],
    hi: [usize; 3],
) -> Vec<bool> {
    let [nx, ny, _] = shape;
    let mut out = Vec::with_capacity((hi[0] - lo[0]) * (hi[1] - lo[1]) * (hi[2] - lo[2]));
    for z in lo[2]..hi[2] {
        for y in lo[1]..hi[1] {
            for x in lo[0]..hi[0] {
                out.push(v[x + nx * (y + ny * z)] == label);
            }
        }
    }
    out
}

/// Mask voxels with a 6-neighbour outside the mask (or outside the box, which only happens
/// at the volume's own border since the box has a one-voxel margin).
fn surface(mask: &[bool], shape: [usize; 3]) -> Vec<bool> {
    let [nx, ny, nz] = shape;
    let at = |x: isize, y: isize, z: isize| -> bool {
        if x < 0 || y < 0 || z < 0 || x >= nx as isize || y >= ny as isize || z >= nz as isize {
            false
        } else {
            mask[x as usize + nx * (y as usize + ny * z as usize)]
        }
    };
    (0..mask.len())
        .map(|i| {
            if !mask[i] {
                return false;
            }
            let (x, y, z) = (
                (i % nx) as isize,
                ((i / nx) % ny) as isize,
                (i / (nx * ny)) as isize,
            );
            [
                (1, 0, 0),
                (-1, 0, 0),
                (0, 1, 0),
                (0, -1, 0),
                (0, 0, 1),
                (0, 0, -1),
            ]
            .iter()
            .any(|(dx, dy, dz)| !at(x + dx, y + dy, z + dz))
        })
        .collect()
}

/// (HD95, ASSD) between the surfaces of `label` in both volumes (both non-empty).
fn surface_distances(
    a: &[u16],
    b: &[u16],
    label: u16,
    shape: [usize; 3],
    spacing: [f64; 3],
) -> (f64, f64) {
    let (lo, hi) = bounding_box(a, b, label, shape);
    let box_shape = [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]];
    let sa = surface(&crop_mask(a, label, shape, lo, hi), box_shape);
    let sb = surface(&crop_mask(b, label, shape, lo, hi), box_shape);
    let to_b = squared_distance(&sb, box_shape, spacing);
    let to_a = squared_distance(&sa, box_shape, spacing);
    let directed = |from: &[bool], field: &[f64]| -> Vec<f64> {
        from.iter()
            .zip(field)
            .filter(|(s, _)| **s)
            .map(|(_, d)| d.sqrt())
            .collect()
    };
    let mut ab = directed(&sa, &to_b);
    let mut ba = directed(&sb, &to_a);
    let assd = (ab.iter().sum::<f64>() + ba.iter().sum::<f64>()) / (ab.len() + ba.len()) as f64;
    let hd95 = percentile95(&mut ab).max(percentile95(&mut ba));
    (hd95, assd)
}

fn percentile95(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = (0.95 * (values.len() - 1) as f64).round() as usize;
    values[rank]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cube(shape: [usize; 3], lo: [usize; 3], hi: [usize; 3]) -> Vec<u16> {
        let [nx, ny, _] = shape;
        (0..shape.iter().product::<usize>())
            .map(|i| {
                let c = [i % nx, (i / nx) % ny, i / (nx * ny)];
                u16::from((0..3).all(|k| c[k] >= lo[k] && c[k] < hi[k]))
            })
            .collect()
    }

    #[test]
    fn dice_of_overlapping_cubes() {
        let s = [10, 10, 10];
        let a = cube(s, [0, 0, 0], [4, 4, 4]);
        let b = cube(s, [2, 0, 0], [6, 4, 4]);
        // 64 voxels each, 32 shared.
        assert!((dice(&a, &b, 1) - 0.5).abs() < 1e-12);
        assert_eq!(dice(&a, &a, 1), 1.0);
        assert_eq!(dice(&a, &a, 2), 1.0, "absent from both: Dice 1");
    }

    #[test]
    fn shifted_cube_distances_follow_the_spacing() {
        let s = [12, 12, 12];
        let a = cube(s, [2, 2, 2], [8, 8, 8]);
        let b = cube(s, [4, 2, 2], [10, 8, 8]);
        // Shift of 2 voxels along x at 1.5 mm: the far faces are 3 mm apart.
        let m = class_metrics(&a, &b, 1, s, [1.5, 1.0, 1.0]);
        assert!((m.hd95_mm.unwrap() - 3.0).abs() < 1e-9, "{m:?}");
        assert!(m.assd_mm.unwrap() > 0.0 && m.assd_mm.unwrap() < 3.0);
        assert!((m.reference_ml - 216.0 * 1.5 / 1000.0).abs() < 1e-12);
    }

    #[test]
    fn sphere_against_a_smaller_concentric_sphere() {
        let s = [40, 40, 40];
        let ball = |r: f64| -> Vec<u16> {
            (0..64000)
                .map(|i| {
                    let (x, y, z) = (
                        (i % 40) as f64 - 20.0,
                        ((i / 40) % 40) as f64 - 20.0,
                        (i / 1600) as f64 - 20.0,
                    );
                    u16::from((x * x + y * y + z * z).sqrt() <= r)
                })
                .collect()
        };
        let m = class_metrics(&ball(12.0), &ball(9.0), 1, s, [1.0; 3]);
        // Surfaces 3 mm apart everywhere (to voxel rounding).
        let hd = m.hd95_mm.unwrap();
        let assd = m.assd_mm.unwrap();
        assert!((2.0..=4.0).contains(&hd), "{hd}");
        assert!((2.0..=4.0).contains(&assd), "{assd}");
        let expected = (9.0f64 / 12.0).powi(3);
        let d = m.dice;
        assert!((d - 2.0 * expected / (1.0 + expected)).abs() < 0.05, "{d}");
    }

    #[test]
    fn empty_masks_are_explicit() {
        let s = [4, 4, 4];
        let empty = vec![0u16; 64];
        let some = cube(s, [1, 1, 1], [3, 3, 3]);
        let both_empty = class_metrics(&empty, &empty, 1, s, [1.0; 3]);
        assert_eq!(both_empty.dice, 1.0);
        assert_eq!(both_empty.hd95_mm, None);
        let one_empty = class_metrics(&empty, &some, 1, s, [1.0; 3]);
        assert_eq!(one_empty.dice, 0.0);
        assert_eq!(one_empty.assd_mm, None);
    }
}
