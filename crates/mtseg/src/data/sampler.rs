//! Balanced sampling as in the paper: every mini-batch holds the same number of samples from
//! every task, and within a task the same number from every class (background included), so
//! a class of 0.1% of the voxels is seen as often as the background.
//!
//! A sample is a cube of k^3 output voxels centred on the drawn voxel. Each orientation gets k
//! patches of (P + k - 1)^2 (P = receptive field), cut through the same randomly rotated,
//! scaled (and optionally mirrored) neighbourhood, so the three views stay consistent.

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::TrainingVolume;
use super::augment::{CropWindow, Randomisation, randomised_crop};
use crate::model::slices::{self, VolumeView};
use crate::model::unet::INPUT_CHANNELS;
use crate::model::{Orientation, OutputLayout, TrainConfig};

/// One mini-batch, task-major: each task's cubes are one run, in task order.
#[derive(Clone, Debug)]
pub struct Batch {
    pub cubes: usize,
    pub tile: usize,
    /// Side of each patch: receptive field + tile - 1.
    pub patch_side: usize,
    /// Per orientation (axial, coronal, sagittal): `cubes * tile` patches of side^2.
    pub patches: [Vec<f32>; 3],
    /// Per output voxel (cube-major, then x, y, z): the training target (see
    /// [`OutputLayout::target`]).
    pub targets: Vec<i64>,
    /// Per output voxel: its joint label (for class weights and bookkeeping).
    pub labels: Vec<u16>,
    /// Per cube: its task.
    pub tasks: Vec<usize>,
    /// Per cube: the class position drawn for its centre (0 background, i class i).
    pub centre_classes: Vec<usize>,
}

/// One mini-batch for the U-Net, task-major like [`Batch`]: `count` square crops, each a
/// slice of a random orientation through a drawn voxel, with its neighbours.
#[derive(Clone, Debug)]
pub struct Crops {
    pub count: usize,
    pub side: usize,
    /// `count x INPUT_CHANNELS x side x side`.
    pub images: Vec<f32>,
    /// Per pixel (`count x side x side`): the training target (see [`OutputLayout::target`]).
    pub targets: Vec<i64>,
    /// Per crop: its task.
    pub tasks: Vec<usize>,
}

impl Batch {
    /// The cubes `c` with `c % count == index`: one of `count` disjoint shares for data-parallel
    /// training, each with (nearly) the same number of cubes of every task.
    pub fn shard(&self, index: usize, count: usize) -> Batch {
        let k = self.tile;
        let cubes: Vec<usize> = (index..self.cubes).step_by(count.max(1)).collect();
        let patch = k * self.patch_side * self.patch_side;
        Batch {
            cubes: cubes.len(),
            tile: k,
            patch_side: self.patch_side,
            patches: self.patches.each_ref().map(|p| of_cubes(p, &cubes, patch)),
            targets: of_cubes(&self.targets, &cubes, k * k * k),
            labels: of_cubes(&self.labels, &cubes, k * k * k),
            tasks: of_cubes(&self.tasks, &cubes, 1),
            centre_classes: of_cubes(&self.centre_classes, &cubes, 1),
        }
    }
}

/// The runs of `per_cube` values of `cubes`, in that order.
fn of_cubes<T: Copy>(values: &[T], cubes: &[usize], per_cube: usize) -> Vec<T> {
    cubes
        .iter()
        .flat_map(|&c| &values[c * per_cube..(c + 1) * per_cube])
        .copied()
        .collect()
}

/// What the sampler draws from one task for each mini-batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TaskDraw {
    /// The task's classes, background not counted.
    pub classes: usize,
    /// Samples (cubes or crops) of the task in each mini-batch.
    pub samples: usize,
    /// U-Net crops: the task's domain randomisation ([`super::augment`]), if it has one.
    pub randomised: Option<RandomisedTask>,
}

/// How a task's crops are randomised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandomisedTask {
    /// Share of its crops synthesised from the labels.
    pub synthetic_share: f64,
    /// The task's images are normalised over its foreground
    /// ([`crate::preprocess::Normalization::MrForegroundZ`]).
    pub foreground_normalised: bool,
}

/// How one crop is cut: from the scan with the plain augmentation, or randomised.
enum CropRecipe {
    Plain {
        blur_sigma: Option<f64>,
        scale: f32,
        shift: f32,
    },
    Randomised(Randomisation),
}

/// The sampler with its random state (saved in checkpoints for exact resumption).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BalancedSampler {
    rng: ChaCha8Rng,
}

/// Voxel-space transform of one sample: volume position = centre + matrix * offset.
struct Placement {
    centre: [f64; 3],
    matrix: [[f64; 3]; 3],
    identity: bool,
    intensity_scale: f32,
    intensity_shift: f32,
}

impl BalancedSampler {
    pub fn new(seed: u64) -> Self {
        BalancedSampler {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Draws one balanced mini-batch from `volumes` (grouped by task through
    /// `TrainingVolume::task`; task t, drawn as `draws[t]`, must have a volume).
    pub fn next_batch(
        &mut self,
        volumes: &[TrainingVolume],
        draws: &[TaskDraw],
        receptive_field: usize,
        config: &TrainConfig,
        layout: &OutputLayout,
    ) -> Batch {
        let k = config.tile;
        let side = receptive_field + k - 1;
        let cubes = draws.iter().map(|d| d.samples).sum();
        let mut batch = Batch {
            cubes,
            tile: k,
            patch_side: side,
            patches: [
                Vec::with_capacity(cubes * k * side * side),
                Vec::with_capacity(cubes * k * side * side),
                Vec::with_capacity(cubes * k * side * side),
            ],
            targets: Vec::with_capacity(cubes * k * k * k),
            labels: Vec::with_capacity(cubes * k * k * k),
            tasks: Vec::with_capacity(cubes),
            centre_classes: Vec::with_capacity(cubes),
        };
        // The random draws one after another, then the cubes cut from them in parallel.
        let mut placed = Vec::with_capacity(cubes);
        for (task, draw) in draws.iter().enumerate() {
            let of_task: Vec<&TrainingVolume> = volumes.iter().filter(|v| v.task == task).collect();
            assert!(!of_task.is_empty(), "task {task} has no training volume");
            let n_classes = draw.classes + 1;
            // Cycle through the classes from a random start: equal counts per class.
            let start = self.rng.random_range(0..n_classes);
            for s in 0..draw.samples {
                let class = (start + s) % n_classes;
                let (volume, centre) = self.draw_voxel(&of_task, class);
                placed.push((volume, self.placement(volume, centre, config)));
                batch.tasks.push(task);
                batch.centre_classes.push(class);
            }
        }
        let cut: Vec<Cube> = placed
            .par_iter()
            .map(|(volume, placement)| cut_cube(volume, placement, k, receptive_field, layout))
            .collect();
        for cube in cut {
            for (all, patches) in batch.patches.iter_mut().zip(cube.patches) {
                all.extend(patches);
            }
            batch.labels.extend(cube.labels);
            batch.targets.extend(cube.targets);
        }
        batch
    }

    /// Draws a balanced mini-batch of U-Net crops: per task its `draws` crops centred (give
    /// or take a quarter of the crop) on voxels of the task's classes in turn, each in a
    /// random orientation, with the intensity jitter and blur of `config`, or, for the tasks
    /// that have one, their domain randomisation. The draws are made in turn, then the crops
    /// are cut in parallel.
    pub fn next_crops(
        &mut self,
        volumes: &[TrainingVolume],
        draws: &[TaskDraw],
        config: &TrainConfig,
        layout: &OutputLayout,
    ) -> Crops {
        let side = config.crop;
        let count = draws.iter().map(|d| d.samples).sum();
        let mut jobs = Vec::with_capacity(count);
        for (task, draw) in draws.iter().enumerate() {
            let of_task: Vec<&TrainingVolume> = volumes.iter().filter(|v| v.task == task).collect();
            assert!(!of_task.is_empty(), "task {task} has no training volume");
            let n_classes = draw.classes + 1;
            let start = self.rng.random_range(0..n_classes);
            for s in 0..draw.samples {
                let (volume, centre) = self.draw_voxel(&of_task, (start + s) % n_classes);
                let o = Orientation::ALL[self.rng.random_range(0..3)];
                let (row_axis, col_axis) = o.plane_axes();
                let quarter = (side / 4).max(1) as i64;
                let mut corner = |axis: usize| {
                    centre[axis] as isize - (side / 2) as isize
                        + self.rng.random_range(-quarter..quarter) as isize
                };
                let window = CropWindow {
                    orientation: o,
                    slice: centre[o.normal_axis()] as isize,
                    window: [corner(row_axis), corner(col_axis)],
                    side,
                };
                let recipe = match draw.randomised {
                    None => {
                        let blur_sigma = (self.rng.random::<f64>() < config.blur_probability)
                            .then(|| self.rng.random::<f64>() * config.blur_sigma);
                        let jitter = config.intensity_jitter as f32;
                        let scale = 1.0 + (self.rng.random::<f32>() * 2.0 - 1.0) * jitter;
                        let shift = (self.rng.random::<f32>() * 2.0 - 1.0) * jitter;
                        CropRecipe::Plain {
                            blur_sigma,
                            scale,
                            shift,
                        }
                    }
                    Some(randomised) => CropRecipe::Randomised(Randomisation {
                        synthetic: self.rng.random::<f64>() < randomised.synthetic_share,
                        rotation_degrees: config.rotation_degrees,
                        scaling: config.scaling,
                        foreground_normalised: randomised.foreground_normalised,
                        seed: self.rng.random(),
                    }),
                };
                jobs.push((volume, window, recipe));
            }
        }
        let cut: Vec<(Vec<f32>, Vec<i64>)> = jobs
            .par_iter()
            .map(|(volume, window, recipe)| {
                let task = volume.task;
                let target = |joint: u16| layout.target(task, joint) as i64;
                match recipe {
                    CropRecipe::Plain {
                        blur_sigma,
                        scale,
                        shift,
                    } => {
                        let (image, targets) = plain_crop(volume, window, *blur_sigma);
                        let image = image.into_iter().map(|v| v * scale + shift).collect();
                        (image, targets.into_iter().map(target).collect())
                    }
                    CropRecipe::Randomised(how) => {
                        let (image, labels) =
                            randomised_crop(volume, &volume.generation, window, how);
                        (image, labels.into_iter().map(target).collect())
                    }
                }
            })
            .collect();
        let mut crops = Crops {
            count,
            side,
            images: Vec::with_capacity(count * INPUT_CHANNELS * side * side),
            targets: Vec::with_capacity(count * side * side),
            tasks: jobs.iter().map(|(volume, _, _)| volume.task).collect(),
        };
        for (image, targets) in cut {
            crops.images.extend(image);
            crops.targets.extend(targets);
        }
        crops
    }

    /// The patches of the cube of side `k` centred on `centre`, without augmentation (as
    /// training would cut them), per orientation.
    pub fn cube_patches(
        volume: &TrainingVolume,
        centre: [usize; 3],
        k: usize,
        receptive_field: usize,
    ) -> [Vec<f32>; 3] {
        let placement = Placement {
            centre: centre.map(|c| c as f64),
            matrix: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            identity: true,
            intensity_scale: 1.0,
            intensity_shift: 0.0,
        };
        cut_orientations(volume, &placement, k, receptive_field)
    }

    /// A volume and a voxel of `class` (0 background, i the task's i-th class). A class
    /// absent from every volume falls back to background.
    fn draw_voxel<'a>(
        &mut self,
        volumes: &[&'a TrainingVolume],
        class: usize,
    ) -> (&'a TrainingVolume, [usize; 3]) {
        if class > 0 {
            let with: Vec<&&TrainingVolume> = volumes
                .iter()
                .filter(|v| !v.class_voxels[class - 1].is_empty())
                .collect();
            if !with.is_empty() {
                let v = with[self.rng.random_range(0..with.len())];
                let list = &v.class_voxels[class - 1];
                let index = list[self.rng.random_range(0..list.len())] as usize;
                return (v, coords(v, index));
            }
        }
        let v = volumes[self.rng.random_range(0..volumes.len())];
        let len = v.labels.len();
        let mut index = self.rng.random_range(0..len);
        for _ in 0..1000 {
            if v.labels[index] == 0 {
                break;
            }
            index = self.rng.random_range(0..len);
        }
        (v, coords(v, index))
    }

    fn placement(
        &mut self,
        volume: &TrainingVolume,
        centre: [usize; 3],
        config: &TrainConfig,
    ) -> Placement {
        let mut angle =
            || (self.rng.random::<f64>() * 2.0 - 1.0) * config.rotation_degrees.to_radians();
        let (a, b, c) = (angle(), angle(), angle());
        let scale = 1.0 + (self.rng.random::<f64>() * 2.0 - 1.0) * config.scaling;
        let flip = config.flip_left_right && self.rng.random::<bool>();
        let jitter = config.intensity_jitter as f32;
        let intensity_scale = 1.0 + (self.rng.random::<f32>() * 2.0 - 1.0) * jitter;
        let intensity_shift = (self.rng.random::<f32>() * 2.0 - 1.0) * jitter;
        let identity = a == 0.0 && b == 0.0 && c == 0.0 && scale == 1.0 && !flip;
        // Rotate and scale in millimetres, then back to voxel units: S^-1 R s F S.
        let rot = rotation(a, b, c);
        let sp = volume.spacing;
        let mut matrix = [[0.0; 3]; 3];
        for (r, row) in matrix.iter_mut().enumerate() {
            for (col, value) in row.iter_mut().enumerate() {
                let f = if flip && col == 0 { -1.0 } else { 1.0 };
                *value = rot[r][col] * scale * f * sp[col] / sp[r];
            }
        }
        Placement {
            centre: centre.map(|c| c as f64),
            matrix,
            identity,
            intensity_scale,
            intensity_shift,
        }
    }
}

/// A crop cut from the scan as it is (optionally blurred by a Gaussian of this many voxels):
/// its stack and the joint labels of its middle slice.
pub(super) fn plain_crop(
    volume: &TrainingVolume,
    at: &CropWindow,
    blur_sigma: Option<f64>,
) -> (Vec<f32>, Vec<u16>) {
    let view = VolumeView {
        image: &volume.image,
        shape: volume.shape,
        pad: volume.pad,
    };
    let size = [at.side, at.side];
    let mut image = Vec::with_capacity(INPUT_CHANNELS * at.side * at.side);
    match blur_sigma {
        Some(sigma) => slices::blurred_stack(
            view,
            at.orientation,
            at.slice,
            at.window,
            size,
            sigma,
            &mut image,
        ),
        None => slices::stack(view, at.orientation, at.slice, at.window, size, &mut image),
    }
    let mut labels = Vec::with_capacity(at.side * at.side);
    slices::window_of(
        volume.shape,
        at.orientation,
        at.slice,
        at.window,
        size,
        |index| {
            labels.push(index.map_or(0, |i| volume.labels[i]));
        },
    );
    (image, labels)
}

fn coords(v: &TrainingVolume, index: usize) -> [usize; 3] {
    let x = index % v.shape[0];
    let rest = index / v.shape[0];
    [x, rest % v.shape[1], rest / v.shape[1]]
}

pub(super) fn rotation(a: f64, b: f64, c: f64) -> [[f64; 3]; 3] {
    let (sa, ca, sb, cb, sc, cc) = (a.sin(), a.cos(), b.sin(), b.cos(), c.sin(), c.cos());
    // Rz(c) * Ry(b) * Rx(a)
    [
        [cc * cb, cc * sb * sa - sc * ca, cc * sb * ca + sc * sa],
        [sc * cb, sc * sb * sa + cc * ca, sc * sb * ca - cc * sa],
        [-sb, cb * sa, cb * ca],
    ]
}

impl Placement {
    fn position(&self, offset: [f64; 3]) -> [f64; 3] {
        if self.identity {
            return [0, 1, 2].map(|i| self.centre[i] + offset[i]);
        }
        let m = &self.matrix;
        [0, 1, 2].map(|i| {
            self.centre[i] + m[i][0] * offset[0] + m[i][1] * offset[1] + m[i][2] * offset[2]
        })
    }
}

/// Trilinear intensity at a voxel-space point; outside the volume counts as `pad`.
fn intensity(v: &TrainingVolume, p: [f64; 3]) -> f32 {
    let mut base = [0i64; 3];
    let mut frac = [0f32; 3];
    for i in 0..3 {
        let f = p[i].floor();
        base[i] = f as i64;
        frac[i] = (p[i] - f) as f32;
    }
    if frac == [0.0; 3] {
        return voxel(v, base);
    }
    let mut acc = 0.0;
    for corner in 0..8 {
        let mut w = 1.0;
        let mut q = base;
        for i in 0..3 {
            if corner & (1 << i) != 0 {
                q[i] += 1;
                w *= frac[i];
            } else {
                w *= 1.0 - frac[i];
            }
        }
        if w > 0.0 {
            acc += w * voxel(v, q);
        }
    }
    acc
}

fn voxel(v: &TrainingVolume, q: [i64; 3]) -> f32 {
    if (0..3).any(|i| q[i] < 0 || q[i] >= v.shape[i] as i64) {
        return v.pad;
    }
    v.image[v.index(q[0] as usize, q[1] as usize, q[2] as usize)]
}

fn nearest_label(v: &TrainingVolume, p: [f64; 3]) -> u16 {
    let q = p.map(|c| c.round() as i64);
    if (0..3).any(|i| q[i] < 0 || q[i] >= v.shape[i] as i64) {
        return 0;
    }
    v.labels[v.index(q[0] as usize, q[1] as usize, q[2] as usize)]
}

/// Appends the k patches of one orientation of a cube.
fn cut_patches(
    v: &TrainingVolume,
    placement: &Placement,
    k: usize,
    receptive_field: usize,
    o: Orientation,
    out: &mut Vec<f32>,
) {
    let half = (k / 2) as f64;
    let radius = ((receptive_field - 1) / 2) as f64;
    let side = receptive_field + k - 1;
    let normal = o.normal_axis();
    let (rows, cols) = o.plane_axes();
    for s in 0..k {
        for u in 0..side {
            for w in 0..side {
                let mut offset = [0.0; 3];
                offset[normal] = s as f64 - half;
                offset[rows] = u as f64 - radius - half;
                offset[cols] = w as f64 - radius - half;
                let value = intensity(v, placement.position(offset));
                out.push(value * placement.intensity_scale + placement.intensity_shift);
            }
        }
    }
}

/// The k patches of each orientation of a cube, in `Orientation::ALL`'s order (their index).
fn cut_orientations(
    v: &TrainingVolume,
    placement: &Placement,
    k: usize,
    receptive_field: usize,
) -> [Vec<f32>; 3] {
    let side = receptive_field + k - 1;
    Orientation::ALL.map(|o| {
        let mut patches = Vec::with_capacity(k * side * side);
        cut_patches(v, placement, k, receptive_field, o, &mut patches);
        patches
    })
}

/// One cube's patches (per orientation), labels and targets.
struct Cube {
    patches: [Vec<f32>; 3],
    labels: Vec<u16>,
    targets: Vec<i64>,
}

fn cut_cube(
    v: &TrainingVolume,
    placement: &Placement,
    k: usize,
    receptive_field: usize,
    layout: &OutputLayout,
) -> Cube {
    let patches = cut_orientations(v, placement, k, receptive_field);
    let half = (k / 2) as f64;
    let mut labels = Vec::with_capacity(k * k * k);
    for x in 0..k {
        for y in 0..k {
            for z in 0..k {
                let offset = [x as f64 - half, y as f64 - half, z as f64 - half];
                labels.push(nearest_label(v, placement.position(offset)));
            }
        }
    }
    let targets = labels
        .iter()
        .map(|&label| layout.target(v.task, label) as i64)
        .collect();
    Cube {
        patches,
        labels,
        targets,
    }
}

#[cfg(test)]
mod tests;
