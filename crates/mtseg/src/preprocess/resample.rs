//! Resampling to a target spacing and back. The new grid covers the same field of view: its
//! voxel edges line up with the old grid's outer edges, as in nnU-Net and SimpleITK's
//! "same extent" resampling. Images are interpolated trilinearly; label maps are brought
//! back by the label with the largest trilinear weight (linear interpolation of one-hot
//! maps, without holding one map per class).

use rayon::prelude::*;

use crate::io::{Affine, Grid, Volume};

/// The grid with `spacing` that covers `grid`'s field of view. Each axis keeps its direction.
pub fn grid_with_spacing(grid: &Grid, spacing: [f64; 3]) -> Grid {
    let old = grid.spacing();
    let mut shape = [0usize; 3];
    let mut index_map = Affine::identity();
    for axis in 0..3 {
        let extent = grid.shape[axis] as f64 * old[axis];
        shape[axis] = ((extent / spacing[axis]).round() as usize).max(1);
        // Old (continuous) index of new voxel i: (i + 0.5) * scale - 0.5, where the scale
        // makes the new grid span exactly the old extent.
        let scale = grid.shape[axis] as f64 / shape[axis] as f64;
        index_map[(axis, axis)] = scale;
        index_map[(axis, 3)] = 0.5 * scale - 0.5;
    }
    Grid::new(shape, grid.affine * index_map)
}

/// Maps a voxel of `to` onto continuous voxel coordinates of `from` (grids in the same world).
fn index_transform(from: &Grid, to: &Grid) -> Affine {
    let inverse = from
        .affine
        .try_inverse()
        .expect("grids carry invertible affines (checked when read)");
    inverse * to.affine
}

/// Trilinear sample of `data` (on `shape`) at continuous voxel coordinates, clamped at the
/// borders.
#[inline]
fn trilinear(data: &[f32], shape: [usize; 3], p: [f64; 3]) -> f32 {
    let mut base = [0usize; 3];
    let mut frac = [0f32; 3];
    for axis in 0..3 {
        let max = (shape[axis] - 1) as f64;
        let c = p[axis].clamp(0.0, max);
        let f = c.floor();
        base[axis] = f as usize;
        frac[axis] = (c - f) as f32;
    }
    let next = |axis: usize| (base[axis] + 1).min(shape[axis] - 1);
    let at = |x: usize, y: usize, z: usize| data[x + shape[0] * (y + shape[1] * z)];
    let (x0, y0, z0) = (base[0], base[1], base[2]);
    let (x1, y1, z1) = (next(0), next(1), next(2));
    let [fx, fy, fz] = frac;
    let c00 = at(x0, y0, z0) * (1.0 - fx) + at(x1, y0, z0) * fx;
    let c10 = at(x0, y1, z0) * (1.0 - fx) + at(x1, y1, z0) * fx;
    let c01 = at(x0, y0, z1) * (1.0 - fx) + at(x1, y0, z1) * fx;
    let c11 = at(x0, y1, z1) * (1.0 - fx) + at(x1, y1, z1) * fx;
    let c0 = c00 * (1.0 - fy) + c10 * fy;
    let c1 = c01 * (1.0 - fy) + c11 * fy;
    c0 * (1.0 - fz) + c1 * fz
}

/// An image resampled onto `target` (trilinear, values outside the source are clamped to
/// its border).
pub fn resample_image(image: &Volume<f32>, target: &Grid) -> Volume<f32> {
    let t = index_transform(&image.grid, target);
    let [nx, ny, _] = target.shape;
    let mut data = vec![0f32; target.len()];
    data.par_chunks_mut(nx * ny)
        .enumerate()
        .for_each(|(z, plane)| {
            for y in 0..ny {
                for x in 0..nx {
                    let p = t * nalgebra::Vector4::new(x as f64, y as f64, z as f64, 1.0);
                    plane[x + nx * y] =
                        trilinear(&image.data, image.grid.shape, [p[0], p[1], p[2]]);
                }
            }
        });
    let mut provenance = image.provenance.clone();
    provenance.template = None;
    Volume {
        data,
        grid: target.clone(),
        provenance,
    }
}

/// A label map resampled onto `target`: each voxel takes the label with the largest summed
/// trilinear weight among its eight source neighbours.
pub fn resample_labels(labels: &Volume<u16>, target: &Grid) -> Vec<u16> {
    let t = index_transform(&labels.grid, target);
    let shape = labels.grid.shape;
    let [nx, ny, _] = target.shape;
    let mut data = vec![0u16; target.len()];
    data.par_chunks_mut(nx * ny)
        .enumerate()
        .for_each(|(z, plane)| {
            for y in 0..ny {
                for x in 0..nx {
                    let p = t * nalgebra::Vector4::new(x as f64, y as f64, z as f64, 1.0);
                    plane[x + nx * y] = majority_label(&labels.data, shape, [p[0], p[1], p[2]]);
                }
            }
        });
    data
}

#[inline]
fn majority_label(data: &[u16], shape: [usize; 3], p: [f64; 3]) -> u16 {
    let mut corners = [(0usize, 0usize, 0.0f64); 3];
    for axis in 0..3 {
        let c = p[axis].clamp(0.0, (shape[axis] - 1) as f64);
        let f = c.floor();
        let lo = f as usize;
        let hi = (lo + 1).min(shape[axis] - 1);
        corners[axis] = (lo, hi, c - f);
    }
    // Up to eight candidates: accumulate weights per label without allocating.
    let mut labels = [0u16; 8];
    let mut weights = [0f64; 8];
    let mut n = 0;
    for dz in 0..2 {
        for dy in 0..2 {
            for dx in 0..2 {
                let pick = |axis: usize, d: usize| {
                    let (lo, hi, f) = corners[axis];
                    if d == 0 { (lo, 1.0 - f) } else { (hi, f) }
                };
                let ((x, wx), (y, wy), (z, wz)) = (pick(0, dx), pick(1, dy), pick(2, dz));
                let w = wx * wy * wz;
                let label = data[x + shape[0] * (y + shape[1] * z)];
                match labels[..n].iter().position(|&l| l == label) {
                    Some(i) => weights[i] += w,
                    None => {
                        labels[n] = label;
                        weights[n] = w;
                        n += 1;
                    }
                }
            }
        }
    }
    let best = (0..n)
        .max_by(|&a, &b| weights[a].total_cmp(&weights[b]))
        .unwrap_or(0);
    labels[best]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::DataType;

    #[test]
    fn new_grid_spans_the_same_extent() {
        let grid = Grid::axis_aligned([10, 20, 5], [1.0, 0.5, 2.0]);
        let g = grid_with_spacing(&grid, [2.0, 2.0, 2.0]);
        assert_eq!(g.shape, [5, 5, 5]);
        // First voxel edge of both grids at world -0.5 * spacing.
        let old_edge = grid.world([-0.5, -0.5, -0.5]);
        let new_edge = g.world([-0.5, -0.5, -0.5]);
        for i in 0..3 {
            assert!((old_edge[i] - new_edge[i]).abs() < 1e-9);
        }
        assert_eq!(g.spacing(), [2.0, 2.0, 2.0]);
    }

    #[test]
    fn linear_ramps_survive_resampling() {
        let grid = Grid::axis_aligned([8, 8, 8], [1.0; 3]);
        let ramp: Vec<f32> = (0..grid.len()).map(|i| grid.coords(i)[0] as f32).collect();
        let image = Volume::filled(grid.clone(), 0f32, DataType::F32).with_data(ramp);
        let up = resample_image(&image, &grid_with_spacing(&grid, [0.5, 1.0, 1.0]));
        assert_eq!(up.grid.shape, [16, 8, 8]);
        // Interior voxels of the fine grid lie at x = (i + 0.5) / 2 - 0.5.
        for i in 1..15 {
            let expected = (i as f32 + 0.5) / 2.0 - 0.5;
            assert!((up.at(i, 3, 3) - expected).abs() < 1e-5);
        }
    }

    #[test]
    fn labels_go_down_and_back_up_unchanged_for_blocky_maps() {
        let grid = Grid::axis_aligned([8, 8, 8], [1.0; 3]);
        let blocks: Vec<u16> = (0..grid.len())
            .map(|i| {
                let [x, y, _] = grid.coords(i);
                ((x / 4) + 2 * (y / 4)) as u16
            })
            .collect();
        let labels = Volume::filled(grid.clone(), 0u16, DataType::U8).with_data(blocks.clone());
        let coarse_grid = grid_with_spacing(&grid, [2.0; 3]);
        let down = resample_labels(&labels, &coarse_grid);
        let coarse = Volume::filled(coarse_grid, 0u16, DataType::U8).with_data(down);
        let back = resample_labels(&coarse, &grid);
        let same = back.iter().zip(&blocks).filter(|(a, b)| a == b).count();
        assert!(same as f64 / blocks.len() as f64 > 0.95, "{same}");
    }
}
