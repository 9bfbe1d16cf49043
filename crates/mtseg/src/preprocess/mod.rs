//! Stage 3, preprocess: every image is brought to the layout the network was trained on
//! (closest RAS axis order, the task's target spacing, normalised intensities), and every
//! result is brought back to the input's own grid.

pub mod filter;
pub mod normalize;
pub mod resample;

use serde::{Deserialize, Serialize};

pub use normalize::{Applied, Normalization};

use crate::io::{Grid, Image, LabelMap, Reorientation, Volume};

/// How one task's images are prepared (stored in the model file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// Voxel size in mm along the canonical R, A, S axes.
    pub target_spacing: [f64; 3],
    pub normalization: Normalization,
}

/// An image in network layout, with what is needed to go back.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub image: Image,
    pub reorientation: Reorientation,
    /// The canonical grid before resampling (the input's voxels, RAS order).
    pub canonical_grid: Grid,
    pub applied: Applied,
}

/// Spacings within 1% of the target are left alone: resampling would only blur.
fn needs_resampling(spacing: [f64; 3], target: [f64; 3]) -> bool {
    (0..3).any(|i| (spacing[i] - target[i]).abs() > 0.01 * target[i])
}

pub fn prepare_image(image: &Image, preprocessing: &Preprocessing) -> Prepared {
    let reorientation = Reorientation::to_ras(&image.grid);
    let canonical = reorientation.apply(image);
    let canonical_grid = canonical.grid.clone();
    let mut prepared = if needs_resampling(canonical_grid.spacing(), preprocessing.target_spacing) {
        let target = resample::grid_with_spacing(&canonical_grid, preprocessing.target_spacing);
        resample::resample_image(&canonical, &target)
    } else {
        canonical
    };
    let applied = preprocessing.normalization.apply(&mut prepared.data);
    Prepared {
        image: prepared,
        reorientation,
        canonical_grid,
        applied,
    }
}

/// The label map of a prepared image, in the same network layout.
pub fn prepare_labels(labels: &LabelMap, prepared: &Prepared) -> Vec<u16> {
    let canonical = prepared.reorientation.apply(labels);
    if canonical.grid.shape == prepared.image.grid.shape
        && canonical.grid.matches(&prepared.image.grid, 1e-6)
    {
        return canonical.data;
    }
    resample::resample_labels(&canonical, &prepared.image.grid)
}

/// Labels computed on the prepared grid, put back on the original input grid.
pub fn restore_labels(labels: Vec<u16>, prepared: &Prepared) -> Vec<u16> {
    let on_canonical = if prepared.image.grid == prepared.canonical_grid {
        labels
    } else {
        let volume = Volume {
            data: labels,
            grid: prepared.image.grid.clone(),
            provenance: prepared.image.provenance.clone(),
        };
        resample::resample_labels(&volume, &prepared.canonical_grid)
    };
    prepared.reorientation.undo(&on_canonical)
}

/// Values (e.g. probabilities) computed on the prepared grid, put back on the input grid.
pub fn restore_values(values: Vec<f32>, prepared: &Prepared) -> Vec<f32> {
    let on_canonical = if prepared.image.grid == prepared.canonical_grid {
        values
    } else {
        let volume = Volume {
            data: values,
            grid: prepared.image.grid.clone(),
            provenance: prepared.image.provenance.clone(),
        };
        resample::resample_image(&volume, &prepared.canonical_grid).data
    };
    prepared.reorientation.undo(&on_canonical)
}

/// nnU-Net's target spacing: the median spacing of the training images, per canonical axis.
pub fn median_spacing(grids: &[Grid]) -> [f64; 3] {
    let mut per_axis: [Vec<f64>; 3] = Default::default();
    for grid in grids {
        let canonical = Reorientation::to_ras(grid).canonical_grid();
        for (axis, s) in canonical.spacing().into_iter().enumerate() {
            per_axis[axis].push(s);
        }
    }
    per_axis.map(|mut v| {
        if v.is_empty() {
            return 1.0;
        }
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{Affine, DataType};

    #[test]
    fn labels_come_back_on_the_input_grid_exactly() {
        // An LPS-ordered, anisotropic input.
        let mut affine = Affine::identity();
        affine[(0, 0)] = -1.0;
        affine[(1, 1)] = -1.0;
        affine[(2, 2)] = 2.0;
        let grid = Grid::new([12, 10, 6], affine);
        let labels: Vec<u16> = (0..grid.len())
            .map(|i| {
                let [x, y, z] = grid.coords(i);
                u16::from(x >= 6) + 2 * u16::from(y >= 5 && z >= 3)
            })
            .collect();
        let image = Volume::filled(grid.clone(), 1.0f32, DataType::F32)
            .with_data(labels.iter().map(|&l| l as f32 * 10.0).collect());
        let label_map = image.with_data(labels.clone());
        let preprocessing = Preprocessing {
            target_spacing: [1.0, 1.0, 1.0],
            normalization: Normalization::MrRobustZ,
        };
        let prepared = prepare_image(&image, &preprocessing);
        assert_eq!(prepared.image.grid.shape, [12, 10, 12]);
        let on_network = prepare_labels(&label_map, &prepared);
        let back = restore_labels(on_network, &prepared);
        let same = back.iter().zip(&labels).filter(|(a, b)| a == b).count();
        assert_eq!(same, labels.len());
    }

    #[test]
    fn median_spacing_is_per_canonical_axis() {
        let a = Grid::axis_aligned([2, 2, 2], [1.0, 1.0, 3.0]);
        let b = Grid::axis_aligned([2, 2, 2], [1.0, 2.0, 3.0]);
        let c = Grid::axis_aligned([2, 2, 2], [1.0, 2.0, 5.0]);
        assert_eq!(median_spacing(&[a, b, c]), [1.0, 2.0, 3.0]);
    }
}
