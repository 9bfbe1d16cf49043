//! The one in-memory volume type of mtseg: voxels on a grid placed in world space.
//!
//! Voxels are stored with x fastest (`index = x + nx * (y + ny * z)`), the order of NIfTI,
//! NRRD and MetaImage files, so reading and writing never shuffles memory. World coordinates
//! are RAS+ millimetres, the convention of NIfTI and nibabel; readers of LPS formats (NRRD,
//! MetaImage) convert on the way in.

use nalgebra::{Matrix4, Vector4};
use serde::Serialize;

use super::nifti::NiftiTemplate;
use crate::error::{Error, Result};
use std::path::Path;

/// Voxel-to-world transform: world = affine * [i, j, k, 1].
pub type Affine = Matrix4<f64>;

/// The voxel grid: shape and the affine that places it in the world.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    pub shape: [usize; 3],
    pub affine: Affine,
}

impl Grid {
    pub fn new(shape: [usize; 3], affine: Affine) -> Self {
        Grid { shape, affine }
    }

    /// A grid with the given spacing, axes along +x, +y, +z (RAS) and the origin at 0.
    pub fn axis_aligned(shape: [usize; 3], spacing: [f64; 3]) -> Self {
        let mut affine = Affine::identity();
        for (axis, s) in spacing.iter().enumerate() {
            affine[(axis, axis)] = *s;
        }
        Grid { shape, affine }
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Voxel size along each voxel axis: the lengths of the affine's first three columns.
    pub fn spacing(&self) -> [f64; 3] {
        let column = |c: usize| {
            (0..3)
                .map(|r| self.affine[(r, c)].powi(2))
                .sum::<f64>()
                .sqrt()
        };
        [column(0), column(1), column(2)]
    }

    #[inline]
    pub fn index(&self, x: usize, y: usize, z: usize) -> usize {
        x + self.shape[0] * (y + self.shape[1] * z)
    }

    /// The voxel coordinates of a linear index (inverse of [`Grid::index`]).
    #[inline]
    pub fn coords(&self, index: usize) -> [usize; 3] {
        let x = index % self.shape[0];
        let rest = index / self.shape[0];
        [x, rest % self.shape[1], rest / self.shape[1]]
    }

    /// World position of a (possibly fractional) voxel coordinate.
    pub fn world(&self, voxel: [f64; 3]) -> [f64; 3] {
        let p = self.affine * Vector4::new(voxel[0], voxel[1], voxel[2], 1.0);
        [p[0], p[1], p[2]]
    }

    /// The largest extent of the grid along any voxel axis (mm).
    pub fn largest_extent_mm(&self) -> f64 {
        let spacing = self.spacing();
        (0..3)
            .map(|a| self.shape[a] as f64 * spacing[a])
            .fold(0.0, f64::max)
    }

    /// Volume of one voxel in millilitres (the affine is in millimetres).
    pub fn voxel_ml(&self) -> f64 {
        self.affine.fixed_view::<3, 3>(0, 0).determinant().abs() / 1000.0
    }

    /// Whether two grids are the same within `tolerance` millimetres at every corner.
    pub fn matches(&self, other: &Grid, tolerance: f64) -> bool {
        self.shape == other.shape && self.max_corner_distance(other) <= tolerance
    }

    /// The largest distance (mm) between the two grids' voxel centres at the grid's corners.
    pub fn max_corner_distance(&self, other: &Grid) -> f64 {
        let mut worst: f64 = 0.0;
        for corner in 0..8 {
            let voxel = [0, 1, 2].map(|axis| {
                if corner & (1 << axis) != 0 {
                    self.shape[axis].saturating_sub(1) as f64
                } else {
                    0.0
                }
            });
            let (p, q) = (self.world(voxel), other.world(voxel));
            let d = (0..3).map(|i| (p[i] - q[i]).powi(2)).sum::<f64>().sqrt();
            worst = worst.max(d);
        }
        worst
    }

    /// The affine as rows, for JSON output (row-major, like `nibabel`'s `img.affine`).
    pub fn affine_rows(&self) -> [[f64; 4]; 4] {
        let mut rows = [[0.0; 4]; 4];
        for (r, row) in rows.iter_mut().enumerate() {
            for (c, value) in row.iter_mut().enumerate() {
                *value = self.affine[(r, c)];
            }
        }
        rows
    }
}

/// The voxel types a file can store, as named by NIfTI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl DataType {
    pub fn size(self) -> usize {
        match self {
            DataType::U8 | DataType::I8 => 1,
            DataType::U16 | DataType::I16 => 2,
            DataType::U32 | DataType::I32 | DataType::F32 => 4,
            DataType::U64 | DataType::I64 | DataType::F64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DataType::F32 | DataType::F64)
    }

    pub fn name(self) -> &'static str {
        match self {
            DataType::U8 => "uint8",
            DataType::I8 => "int8",
            DataType::U16 => "uint16",
            DataType::I16 => "int16",
            DataType::U32 => "uint32",
            DataType::I32 => "int32",
            DataType::U64 => "uint64",
            DataType::I64 => "int64",
            DataType::F32 => "float32",
            DataType::F64 => "float64",
        }
    }
}

/// The file format a volume came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Format {
    #[serde(rename = "NIfTI-1")]
    Nifti1,
    #[serde(rename = "NIfTI-2")]
    Nifti2,
    #[serde(rename = "NRRD")]
    Nrrd,
    #[serde(rename = "MetaImage")]
    MetaImage,
    #[serde(rename = "DICOM")]
    Dicom,
    /// Made in memory (phantoms, resampling): no file behind it.
    #[serde(rename = "memory")]
    Memory,
}

/// Where a volume's voxels and geometry came from; what a writer needs to give an output the
/// same header geometry as its input.
#[derive(Clone, Debug, PartialEq)]
pub struct Provenance {
    pub format: Format,
    pub datatype: DataType,
    /// NIfTI qform/sform codes (0 unknown, 1 scanner, 2 aligned, ...). Formats without them
    /// report scanner coordinates (1) for both.
    pub qform_code: i16,
    pub sform_code: i16,
    /// The NIfTI header read, kept so that an output on the same grid keeps every geometry
    /// field (qform, sform, pixdim, units) bit for bit.
    pub template: Option<NiftiTemplate>,
}

impl Provenance {
    pub fn memory(datatype: DataType) -> Self {
        Provenance {
            format: Format::Memory,
            datatype,
            qform_code: 1,
            sform_code: 1,
            template: None,
        }
    }
}

/// A 3-D volume: voxels of type `T` on a grid.
#[derive(Clone, Debug)]
pub struct Volume<T> {
    pub data: Vec<T>,
    pub grid: Grid,
    pub provenance: Provenance,
}

/// An image: intensities as f32 (scl_slope/scl_inter applied).
pub type Image = Volume<f32>;
/// A label map: class ids as integers.
pub type LabelMap = Volume<u16>;

impl<T: Copy> Volume<T> {
    /// A volume made in memory on `grid`, filled with `value`.
    pub fn filled(grid: Grid, value: T, datatype: DataType) -> Self {
        Volume {
            data: vec![value; grid.len()],
            grid,
            provenance: Provenance::memory(datatype),
        }
    }

    /// Same grid and provenance, other voxels (for instance a label map for an image).
    pub fn with_data<U>(&self, data: Vec<U>) -> Volume<U> {
        assert_eq!(
            data.len(),
            self.grid.len(),
            "voxel count must match the grid"
        );
        Volume {
            data,
            grid: self.grid.clone(),
            provenance: self.provenance.clone(),
        }
    }

    /// Checks a volume a program built as the readers check a file's: as many voxels as its
    /// grid, and an affine a grid can have. `place` names the volume in the error.
    pub fn check(&self, place: &Path) -> Result<()> {
        if self.data.len() != self.grid.len() {
            return Err(Error::invalid(
                place,
                format!(
                    "{} voxels, but its grid {:?} has {}",
                    self.data.len(),
                    self.grid.shape,
                    self.grid.len()
                ),
            ));
        }
        crate::nifti::check_affine(place, &self.grid.affine)
    }

    #[inline]
    pub fn at(&self, x: usize, y: usize, z: usize) -> T {
        self.data[self.grid.index(x, y, z)]
    }

    pub fn shape(&self) -> [usize; 3] {
        self.grid.shape
    }
}

impl LabelMap {
    /// The volume (ml) labelled with each of `ids`: voxels times the voxel's volume.
    pub fn volumes_ml(&self, ids: &[u16]) -> Vec<f64> {
        let mut counts = vec![0usize; u16::MAX as usize + 1];
        for &v in &self.data {
            counts[v as usize] += 1;
        }
        let voxel = self.grid.voxel_ml();
        ids.iter()
            .map(|&id| counts[id as usize] as f64 * voxel)
            .collect()
    }

    /// The distinct label values present, sorted.
    pub fn label_values(&self) -> Vec<u16> {
        let mut seen = vec![false; u16::MAX as usize + 1];
        for &v in &self.data {
            seen[v as usize] = true;
        }
        (0..=u16::MAX).filter(|&v| seen[v as usize]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_coords_are_inverse() {
        let grid = Grid::axis_aligned([3, 4, 5], [1.0, 1.0, 1.0]);
        for i in 0..grid.len() {
            let [x, y, z] = grid.coords(i);
            assert_eq!(grid.index(x, y, z), i);
        }
        assert_eq!(grid.index(1, 2, 3), 1 + 3 * (2 + 4 * 3));
    }

    #[test]
    fn spacing_and_voxel_volume_follow_the_affine() {
        let mut grid = Grid::axis_aligned([2, 2, 2], [0.5, 2.0, 3.0]);
        assert_eq!(grid.spacing(), [0.5, 2.0, 3.0]);
        assert!((grid.voxel_ml() - 0.003).abs() < 1e-12);
        // A flipped axis keeps its spacing and volume.
        grid.affine[(0, 0)] = -0.5;
        assert_eq!(grid.spacing(), [0.5, 2.0, 3.0]);
        assert!((grid.voxel_ml() - 0.003).abs() < 1e-12);
    }

    #[test]
    fn grids_match_within_tolerance_only() {
        let a = Grid::axis_aligned([10, 10, 10], [1.0, 1.0, 1.0]);
        let mut b = a.clone();
        b.affine[(0, 3)] = 1e-4;
        assert!(a.matches(&b, 1e-3));
        b.affine[(0, 3)] = 0.1;
        assert!(!a.matches(&b, 1e-3));
        assert!((a.max_corner_distance(&b) - 0.1).abs() < 1e-12);
        let c = Grid::axis_aligned([10, 10, 11], [1.0, 1.0, 1.0]);
        assert!(!a.matches(&c, 1.0));
    }

    #[test]
    fn label_values_are_sorted_and_distinct() {
        let grid = Grid::axis_aligned([4, 1, 1], [1.0; 3]);
        let labels = LabelMap::filled(grid, 0, DataType::U8).with_data(vec![3, 0, 3, 1]);
        assert_eq!(labels.label_values(), vec![0, 1, 3]);
    }
}
