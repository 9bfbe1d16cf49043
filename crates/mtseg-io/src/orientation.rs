//! Axis orientation: which world direction each voxel axis points to (nibabel's axcodes), and
//! the reorientation to the closest canonical RAS layout and back. The network always sees
//! axis 0 = left->right, 1 = posterior->anterior, 2 = inferior->superior, whatever the file.

use nalgebra::Matrix3;

use super::volume::{Affine, Grid, Volume};

/// For each voxel axis: the world axis (0 = x/R, 1 = y/A, 2 = z/S) it is closest to, and
/// whether it runs along (+1) or against (-1) that world axis.
pub type AxisDirections = [(usize, f64); 3];

/// The orientation of an affine, as nibabel's `io_orientation`: the nearest orthogonal
/// matrix of the normalised columns, then each voxel axis in turn takes the world axis it is
/// most aligned with among those not yet taken.
pub fn orientation(affine: &Affine) -> AxisDirections {
    let mut m: Matrix3<f64> = affine.fixed_view::<3, 3>(0, 0).into_owned();
    for c in 0..3 {
        let norm = m.column(c).norm();
        if norm > 0.0 {
            m.column_mut(c).unscale_mut(norm);
        }
    }
    let svd = m.svd(true, true);
    let mut r = match (svd.u, svd.v_t) {
        (Some(u), Some(v_t)) => u * v_t,
        _ => m,
    };
    let mut out = [(0, 1.0); 3];
    let mut taken = [false; 3];
    for (axis, slot) in out.iter_mut().enumerate() {
        let (world, value) = (0..3)
            .filter(|w| !taken[*w])
            .map(|w| (w, r[(w, axis)]))
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .expect("a world axis is left for every voxel axis");
        taken[world] = true;
        *slot = (world, if value < 0.0 { -1.0 } else { 1.0 });
        for c in 0..3 {
            r[(world, c)] = 0.0;
        }
    }
    out
}

/// Orientation as nibabel's axis codes, e.g. `['R', 'A', 'S']` or `['L', 'P', 'S']`.
pub fn axcodes(affine: &Affine) -> [char; 3] {
    orientation(affine).map(|(world, sign)| {
        let (plus, minus) = [('R', 'L'), ('A', 'P'), ('S', 'I')][world];
        if sign > 0.0 { plus } else { minus }
    })
}

/// The permutation and flips that take a grid to its closest RAS layout, kept to undo it.
#[derive(Clone, Debug, PartialEq)]
pub struct Reorientation {
    /// `source_axis[k]`: the original voxel axis that becomes canonical axis `k`.
    source_axis: [usize; 3],
    /// Whether canonical axis `k` runs backwards along its source axis.
    flipped: [bool; 3],
    original: Grid,
}

impl Reorientation {
    pub fn to_ras(grid: &Grid) -> Self {
        let orient = orientation(&grid.affine);
        let mut source_axis = [0; 3];
        let mut flipped = [false; 3];
        for (axis, (world, sign)) in orient.iter().enumerate() {
            source_axis[*world] = axis;
            flipped[*world] = *sign < 0.0;
        }
        Reorientation {
            source_axis,
            flipped,
            original: grid.clone(),
        }
    }

    pub fn is_identity(&self) -> bool {
        self.source_axis == [0, 1, 2] && self.flipped == [false; 3]
    }

    /// The grid in canonical layout: shape permuted, affine composed with the index map.
    pub fn canonical_grid(&self) -> Grid {
        let shape = self.source_axis.map(|a| self.original.shape[a]);
        // T maps canonical voxel indices to original ones.
        let mut t = Affine::zeros();
        t[(3, 3)] = 1.0;
        for k in 0..3 {
            let i = self.source_axis[k];
            if self.flipped[k] {
                t[(i, k)] = -1.0;
                t[(i, 3)] = self.original.shape[i] as f64 - 1.0;
            } else {
                t[(i, k)] = 1.0;
            }
        }
        Grid::new(shape, self.original.affine * t)
    }

    pub fn original_grid(&self) -> &Grid {
        &self.original
    }

    /// The original linear index of each canonical voxel.
    fn index_map(&self) -> Vec<usize> {
        let canonical = self.canonical_grid();
        let [n0, n1, n2] = canonical.shape;
        let mut map = Vec::with_capacity(canonical.len());
        let mut orig = [0usize; 3];
        for c2 in 0..n2 {
            for c1 in 0..n1 {
                for c0 in 0..n0 {
                    for (k, c) in [c0, c1, c2].into_iter().enumerate() {
                        let i = self.source_axis[k];
                        orig[i] = if self.flipped[k] {
                            self.original.shape[i] - 1 - c
                        } else {
                            c
                        };
                    }
                    map.push(self.original.index(orig[0], orig[1], orig[2]));
                }
            }
        }
        map
    }

    /// The volume in canonical RAS layout.
    pub fn apply<T: Copy>(&self, volume: &Volume<T>) -> Volume<T> {
        assert_eq!(volume.grid.shape, self.original.shape);
        let mut provenance = volume.provenance.clone();
        if self.is_identity() {
            return volume.clone();
        }
        provenance.template = None;
        Volume {
            data: self.index_map().iter().map(|&i| volume.data[i]).collect(),
            grid: self.canonical_grid(),
            provenance,
        }
    }

    /// Voxels in canonical layout put back in the original layout, on the original grid.
    pub fn undo<T: Copy + Default>(&self, canonical: &[T]) -> Vec<T> {
        assert_eq!(canonical.len(), self.original.len());
        let mut out = vec![T::default(); canonical.len()];
        for (c, &i) in self.index_map().iter().enumerate() {
            out[i] = canonical[c];
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::DataType;

    fn grid_with(columns: [[f64; 3]; 3], shape: [usize; 3]) -> Grid {
        let mut a = Affine::identity();
        for (c, col) in columns.iter().enumerate() {
            for r in 0..3 {
                a[(r, c)] = col[r];
            }
        }
        a[(0, 3)] = 5.0;
        a[(1, 3)] = -7.0;
        a[(2, 3)] = 11.0;
        Grid::new(shape, a)
    }

    #[test]
    fn axcodes_match_nibabel_conventions() {
        let ras = Grid::axis_aligned([2, 2, 2], [1.0; 3]);
        assert_eq!(axcodes(&ras.affine), ['R', 'A', 'S']);
        // The IXI brains of ../shared/data: voxel axes point P, S, R.
        let psr = grid_with(
            [[0.0, -2.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0.0, 0.0]],
            [4, 5, 6],
        );
        assert_eq!(axcodes(&psr.affine), ['P', 'S', 'R']);
        // Slightly oblique axes still get their closest code.
        let oblique = grid_with(
            [[-1.0, 0.1, 0.0], [0.1, -1.0, 0.0], [0.0, 0.0, 1.0]],
            [2, 2, 2],
        );
        assert_eq!(axcodes(&oblique.affine), ['L', 'P', 'S']);
    }

    #[test]
    fn reorientation_keeps_world_positions_and_undoes_exactly() {
        let grid = grid_with(
            [[0.0, -2.0, 0.0], [0.0, 0.0, 3.0], [-1.0, 0.0, 0.0]],
            [4, 5, 6],
        );
        let data: Vec<u32> = (0..grid.len() as u32).collect();
        let volume = Volume::filled(grid.clone(), 0u32, DataType::U32).with_data(data.clone());
        let r = Reorientation::to_ras(&grid);
        let canon = r.apply(&volume);
        assert_eq!(axcodes(&canon.grid.affine), ['R', 'A', 'S']);
        assert_eq!(canon.grid.shape, [6, 4, 5]);
        // Every canonical voxel sits at the same world point as its source voxel.
        for (c, &value) in canon.data.iter().enumerate() {
            let [x, y, z] = canon.grid.coords(c);
            let [ox, oy, oz] = grid.coords(value as usize);
            let p = canon.grid.world([x as f64, y as f64, z as f64]);
            let q = grid.world([ox as f64, oy as f64, oz as f64]);
            for i in 0..3 {
                assert!((p[i] - q[i]).abs() < 1e-9);
            }
        }
        assert_eq!(r.undo(&canon.data), data);
        assert!(r.canonical_grid().affine[(0, 0)] > 0.0);
    }

    #[test]
    fn ras_input_is_left_alone() {
        let grid = Grid::axis_aligned([3, 3, 3], [1.0; 3]);
        assert!(Reorientation::to_ras(&grid).is_identity());
    }
}
