//! Domain randomisation of the U-Net's training crops, after SynthSeg (Billot et al.,
//! "SynthSeg: Segmentation of brain MRI scans of any contrast and resolution without
//! retraining", Medical Image Analysis 2023), for the tasks a settings file names in
//! `[training.domain_randomisation]`. Each crop of such a task is cut from a block of its
//! volume (the crop's window and slices with a margin) that is
//! - deformed: a random rotation and scaling and a smooth elastic displacement, the labels
//!   with the image;
//! - for a share of the crops, synthesised from the labels instead of taken from the scan:
//!   every label gets an intensity drawn from its own random Gaussian, so the network sees
//!   every contrast, T1-like or not;
//! - acquired again: blurred and resampled at a random resolution (thick slices of 3-9 mm
//!   along one axis, or every axis coarse), with a smooth bias field, noise and a random
//!   gamma;
//! - for some crops, skull-stripped: everything outside the dilated brain mask set to zero
//!   or faint noise;
//! - and normalised as segmentation will normalise it: over the task's foreground
//!   ([`Normalization::MrForegroundZ`]), or, for a quarter of the crops, over the body, which
//!   is what segmentation's first pass sees.
//!
//! Brain label maps label the brain only. So that synthetic heads have a scalp, a skull and a
//! face, [`generation_labels`] also labels what surrounds the labelled structures: the head
//! (everything not connected to the volume's edge through air) outside them is split into
//! [`HEAD_CLUSTERS`] intensity clusters of the real scan (k-means), each of which gets its own
//! random intensity; the air around the head stays dark, as in every MR scan.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, StandardNormal};

use super::TrainingVolume;
use super::sampler::rotation;
use crate::model::Orientation;
use crate::model::unet::{CONTEXT_SLICES, INPUT_CHANNELS};
use crate::preprocess::Normalization;
use crate::preprocess::filter::{dilate, gaussian_blur_axis};
use crate::preprocess::normalize::{foreground_mask, normalise_over};

/// Intensity clusters of the head around the labelled structures.
pub const HEAD_CLUSTERS: usize = 3;

/// Share of the crops normalised over the body instead of the foreground.
const BODY_NORMALISED_SHARE: f64 = 0.25;
/// Share of the crops skull-stripped.
const SKULL_STRIPPED_SHARE: f64 = 0.3;
/// Acquisitions: the share with thick slices along one axis, then the share coarse along
/// every axis; the rest are 3-D acquisitions at most blurred by a voxel.
const THICK_SLICE_SHARE: f64 = 0.4;
const COARSE_SHARE: f64 = 0.2;
/// Slice thickness (mm) of thick-slice acquisitions, and the voxel size of coarse ones.
const THICKNESS_MM: (f64, f64) = (3.0, 9.0);
const COARSE_MM: (f64, f64) = (2.5, 5.0);
/// Elastic deformation: control points this far apart, displaced by a Gaussian whose
/// standard deviation is drawn up to this (mm).
const ELASTIC_SPACING_MM: f64 = 16.0;
const ELASTIC_MM: f64 = 3.0;
/// Bias field: control points per block axis, log-gain standard deviation up to this.
const BIAS_POINTS: usize = 4;
const BIAS_STD: f64 = 0.4;
/// Noise standard deviation up to this share of the intensity range.
const NOISE: f64 = 0.05;
/// Gamma = exp(N(0, this)).
const GAMMA_STD: f64 = 0.4;

/// Labels of a real volume's voxels to synthesise images from: 0 for the air outside the
/// head, 1..=C for the task's C classes (`classes`, joint ids, in task order), then
/// C + 1..=C + [`HEAD_CLUSTERS`] for the rest of the head, darkest cluster first.
pub fn generation_labels(volume: &TrainingVolume, classes: &[u16]) -> Vec<u8> {
    let image = &volume.image;
    let sorted = crate::preprocess::normalize::percentiles(image, &[1.0, 99.0]);
    let threshold = sorted[0] + 0.05 * (sorted[1] - sorted[0]);
    let air = connected_to_edge(volume.shape, |i| image[i] <= threshold);
    let mut generation = vec![0u8; image.len()];
    let mut head = Vec::new();
    for (i, g) in generation.iter_mut().enumerate() {
        if let Some(c) = classes.iter().position(|&j| j == volume.labels[i]) {
            *g = (c + 1) as u8;
        } else if !air[i] {
            head.push(i);
        }
    }
    let values: Vec<f32> = head.iter().map(|&i| image[i]).collect();
    let clusters = kmeans_1d(&values, HEAD_CLUSTERS);
    for (&i, &k) in head.iter().zip(&clusters) {
        generation[i] = (classes.len() + 1 + k) as u8;
    }
    generation
}

/// The voxels of `shape` for which `open` holds and that connect to the volume's edge
/// through such voxels (6-connectivity).
fn connected_to_edge(shape: [usize; 3], open: impl Fn(usize) -> bool) -> Vec<bool> {
    let [nx, ny, nz] = shape;
    let mut reached = vec![false; nx * ny * nz];
    let mut queue = Vec::new();
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let edge = x == 0 || y == 0 || z == 0 || x == nx - 1 || y == ny - 1 || z == nz - 1;
                let i = x + nx * (y + ny * z);
                if edge && open(i) {
                    reached[i] = true;
                    queue.push(i);
                }
            }
        }
    }
    while let Some(i) = queue.pop() {
        let (x, y, z) = (i % nx, (i / nx) % ny, i / (nx * ny));
        let neighbours = [
            (x > 0).then(|| i - 1),
            (x + 1 < nx).then(|| i + 1),
            (y > 0).then(|| i - nx),
            (y + 1 < ny).then(|| i + nx),
            (z > 0).then(|| i - nx * ny),
            (z + 1 < nz).then(|| i + nx * ny),
        ];
        for j in neighbours.into_iter().flatten() {
            if !reached[j] && open(j) {
                reached[j] = true;
                queue.push(j);
            }
        }
    }
    reached
}

/// Lloyd's k-means of `values` into `k` clusters, numbered by their centres (lowest first).
fn kmeans_1d(values: &[f32], k: usize) -> Vec<usize> {
    if values.is_empty() {
        return Vec::new();
    }
    let qs: Vec<f64> = (0..k)
        .map(|i| 100.0 * (2 * i + 1) as f64 / (2 * k) as f64)
        .collect();
    let mut centres: Vec<f64> = crate::preprocess::normalize::percentiles(values, &qs)
        .into_iter()
        .map(f64::from)
        .collect();
    let nearest = |centres: &[f64], v: f32| {
        (0..k)
            .min_by(|&a, &b| {
                (v as f64 - centres[a])
                    .abs()
                    .total_cmp(&(v as f64 - centres[b]).abs())
            })
            .unwrap_or(0)
    };
    for _ in 0..20 {
        let mut sums = vec![(0f64, 0usize); k];
        for &v in values {
            let c = nearest(&centres, v);
            sums[c].0 += v as f64;
            sums[c].1 += 1;
        }
        for (centre, (sum, n)) in centres.iter_mut().zip(sums) {
            if n > 0 {
                *centre = sum / n as f64;
            }
        }
    }
    // Centres start in order and stay in order in one dimension.
    values.iter().map(|&v| nearest(&centres, v)).collect()
}

/// Where a crop is cut: as [`crate::model::slices::stack`] takes it.
#[derive(Clone, Copy, Debug)]
pub struct CropWindow {
    pub orientation: Orientation,
    /// The middle slice.
    pub slice: isize,
    /// First row and column.
    pub window: [isize; 2],
    pub side: usize,
}

/// How a crop is randomised.
#[derive(Clone, Copy, Debug)]
pub struct Randomisation {
    /// Synthesise the intensities from the labels instead of deforming the scan's.
    pub synthetic: bool,
    /// Rotation about each axis within +- this many degrees.
    pub rotation_degrees: f64,
    /// Scaling within 1 +- this.
    pub scaling: f64,
    /// The task's normalisation (the foreground's or the body's).
    pub foreground_normalised: bool,
    pub seed: u64,
}

/// The crop's block: a small volume, columns fastest, then rows, then slices: the crop's
/// window and slices with a margin for the acquisition's blur and resampling.
struct Block {
    dims: [usize; 3],
    /// The volume axis along each block axis.
    axes: [usize; 3],
    /// Volume coordinates of the block's first voxel, per block axis.
    origin: [isize; 3],
    /// Voxels of margin on each side, per block axis.
    margins: [usize; 3],
}

impl Block {
    fn around(at: &CropWindow, acquisition: &Acquisition, spacing: [f64; 3]) -> Block {
        let (rows, cols) = at.orientation.plane_axes();
        let axes = [cols, rows, at.orientation.normal_axis()];
        let margins = axes.map(|a| acquisition.reach(a, spacing[a]));
        let m = margins.map(|m| m as isize);
        Block {
            dims: [
                at.side + 2 * margins[0],
                at.side + 2 * margins[1],
                INPUT_CHANNELS + 2 * margins[2],
            ],
            axes,
            origin: [
                at.window[1] - m[0],
                at.window[0] - m[1],
                at.slice - CONTEXT_SLICES as isize - m[2],
            ],
            margins,
        }
    }

    fn len(&self) -> usize {
        self.dims.iter().product()
    }

    /// Volume coordinates of block voxel `b`.
    fn volume_coords(&self, b: [usize; 3]) -> [f64; 3] {
        let mut v = [0.0; 3];
        for k in 0..3 {
            v[self.axes[k]] = (self.origin[k] + b[k] as isize) as f64;
        }
        v
    }

    /// Spacing (mm) along each block axis.
    fn spacing(&self, volume_spacing: [f64; 3]) -> [f64; 3] {
        self.axes.map(|a| volume_spacing[a])
    }
}

/// A smooth random field over a block: values at a lattice of control points, interpolated
/// trilinearly.
struct Lattice {
    points: [usize; 3],
    values: Vec<f64>,
    /// Block voxels per lattice step, per axis.
    step: [f64; 3],
}

impl Lattice {
    fn random(dims: [usize; 3], step: [f64; 3], std: f64, rng: &mut ChaCha8Rng) -> Lattice {
        let points = [0, 1, 2].map(|k| (dims[k] as f64 / step[k]).ceil() as usize + 1);
        let normal = Normal::new(0.0, std.max(0.0)).expect("a finite standard deviation");
        let values = (0..points.iter().product())
            .map(|_| normal.sample(rng))
            .collect();
        Lattice {
            points,
            values,
            step,
        }
    }

    /// The field along block row (y, z): one value per x in `row`.
    fn row(&self, y: usize, z: usize, row: &mut [f64]) {
        let (by, fy) = self.cell(1, y);
        let (bz, fz) = self.cell(2, z);
        let [px, py, _] = self.points;
        // Bilinear in y and z at every lattice column, then linear along x.
        let column: Vec<f64> = (0..px)
            .map(|x| {
                let at = |y: usize, z: usize| self.values[x + px * (y + py * z)];
                (at(by, bz) * (1.0 - fy) + at(by + 1, bz) * fy) * (1.0 - fz)
                    + (at(by, bz + 1) * (1.0 - fy) + at(by + 1, bz + 1) * fy) * fz
            })
            .collect();
        for (x, value) in row.iter_mut().enumerate() {
            let (bx, fx) = self.cell(0, x);
            *value = column[bx] * (1.0 - fx) + column[bx + 1] * fx;
        }
    }

    /// The lattice cell of block coordinate `c` along `axis`, and where in it `c` lies.
    fn cell(&self, axis: usize, c: usize) -> (usize, f64) {
        let p = c as f64 / self.step[axis];
        let base = (p as usize).min(self.points[axis] - 2);
        (base, p - base as f64)
    }

    /// The field at block voxel `b`.
    #[cfg(test)]
    fn at(&self, b: [usize; 3]) -> f64 {
        let mut row = vec![0.0; b[0] + 1];
        self.row(b[1], b[2], &mut row);
        row[b[0]]
    }
}

/// How a crop's block is acquired again: blur (a Gaussian's sigma, mm) and sample spacing
/// (mm; resampled back to the volume's grid where it is coarser) along each volume axis.
#[derive(Clone, Copy, Debug)]
struct Acquisition {
    blur_mm: [f64; 3],
    sample_mm: [f64; 3],
    /// Where the first sample falls, as a share of the sample spacing.
    phase: f64,
}

impl Acquisition {
    /// Thick slices along one axis, every axis coarse, or a 3-D acquisition blurred by up to
    /// a voxel; the FWHM of the blur is the slice thickness (or voxel size).
    fn random(spacing: [f64; 3], rng: &mut ChaCha8Rng) -> Acquisition {
        let fwhm = 1.0 / 2.355;
        let kind = rng.random::<f64>();
        let (blur_mm, sample_mm) = if kind < THICK_SLICE_SHARE {
            let axis = rng.random_range(0..3);
            let thickness = uniform(rng, THICKNESS_MM);
            let mut blur = [0, 1, 2].map(|a| rng.random::<f64>() * 0.5 * spacing[a]);
            let mut sample = spacing;
            blur[axis] = thickness * fwhm;
            sample[axis] = thickness;
            (blur, sample)
        } else if kind < THICK_SLICE_SHARE + COARSE_SHARE {
            let size = uniform(rng, COARSE_MM);
            ([size * fwhm; 3], [size; 3])
        } else {
            let blur = rng.random::<f64>();
            (spacing.map(|s| blur * s), spacing)
        };
        Acquisition {
            blur_mm,
            sample_mm,
            phase: rng.random(),
        }
    }

    /// The voxels along volume `axis` (of `spacing` mm) the acquisition reaches over: the
    /// blur's three sigmas and a sample spacing.
    fn reach(&self, axis: usize, spacing: f64) -> usize {
        let step = if self.sample_mm[axis] > spacing {
            self.sample_mm[axis] / spacing
        } else {
            0.0
        };
        (3.0 * self.blur_mm[axis] / spacing + step).ceil() as usize
    }
}

fn uniform(rng: &mut ChaCha8Rng, range: (f64, f64)) -> f64 {
    range.0 + rng.random::<f64>() * (range.1 - range.0)
}

/// One randomised crop of `volume` (of a task whose classes `generation` was made with):
/// the `INPUT_CHANNELS x side x side` stack (channel-major, then row-major, as
/// [`crate::model::slices::stack`]) and the joint label of every pixel of its middle slice.
pub fn randomised_crop(
    volume: &TrainingVolume,
    generation: &[u8],
    at: &CropWindow,
    how: &Randomisation,
) -> (Vec<f32>, Vec<u16>) {
    let mut rng = ChaCha8Rng::seed_from_u64(how.seed);
    let acquisition = Acquisition::random(volume.spacing, &mut rng);
    let block = Block::around(at, &acquisition, volume.spacing);
    let spacing = block.spacing(volume.spacing);
    let (mut image, labels, sources) = deformed(volume, generation, &block, how, &mut rng);
    if how.synthetic {
        image = synthesised(&sources, &mut rng);
    } else {
        // The scan's intensities from zero up, as a scanner's are (bias multiplies them).
        image
            .iter_mut()
            .for_each(|v| *v = (*v - volume.pad).max(0.0));
    }
    acquire(&mut image, &block, &acquisition, volume.spacing, &mut rng);
    if rng.random::<f64>() < SKULL_STRIPPED_SHARE {
        skull_strip(&mut image, &labels, block.dims, &mut rng);
    }
    if how.foreground_normalised && rng.random::<f64>() >= BODY_NORMALISED_SHARE {
        normalise_over(&mut image, &foreground_mask(&labels, block.dims, spacing));
    } else {
        Normalization::MrRobustZ.apply(&mut image);
    }
    cut(&image, &labels, &block, at.side)
}

/// The block's voxels taken from the volume through a random rotation, scaling and elastic
/// displacement about the crop's centre: the image (trilinear, the volume's pad outside it),
/// the joint labels and the generation labels (nearest, background and air outside).
fn deformed(
    volume: &TrainingVolume,
    generation: &[u8],
    block: &Block,
    how: &Randomisation,
    rng: &mut ChaCha8Rng,
) -> (Vec<f32>, Vec<u16>, Vec<u8>) {
    let mut angle = || (rng.random::<f64>() * 2.0 - 1.0) * how.rotation_degrees.to_radians();
    let rot = rotation(angle(), angle(), angle());
    let scale = 1.0 + (rng.random::<f64>() * 2.0 - 1.0) * how.scaling;
    let sp = volume.spacing;
    // Voxel offsets to voxel offsets, rotating and scaling in millimetres.
    let mut matrix = [[0.0; 3]; 3];
    for (r, row) in matrix.iter_mut().enumerate() {
        for (c, value) in row.iter_mut().enumerate() {
            *value = rot[r][c] * scale * sp[c] / sp[r];
        }
    }
    let elastic_std = rng.random::<f64>() * ELASTIC_MM;
    let block_spacing = block.spacing(sp);
    let step = block_spacing.map(|s| ELASTIC_SPACING_MM / s);
    // One displacement field per volume axis, in that axis's voxels.
    let fields: Vec<Lattice> = (0..3)
        .map(|a| Lattice::random(block.dims, step, elastic_std / sp[a], rng))
        .collect();
    let centre = block.volume_coords(block.dims.map(|d| d / 2));
    let n = block.len();
    let (mut image, mut labels, mut sources) = (vec![0f32; n], vec![0u16; n], vec![0u8; n]);
    let [bx, by, bz] = block.dims;
    let mut displacement = [vec![0f64; bx], vec![0f64; bx], vec![0f64; bx]];
    let mut i = 0;
    for z in 0..bz {
        for y in 0..by {
            for (field, row) in fields.iter().zip(&mut displacement) {
                field.row(y, z, row);
            }
            let [dx, dy, dz] = &displacement;
            for (x, e) in dx.iter().zip(dy).zip(dz).enumerate() {
                let elastic = [*e.0.0, *e.0.1, *e.1];
                let v = block.volume_coords([x, y, z]);
                let d = [0, 1, 2].map(|k| v[k] - centre[k]);
                let p = [0, 1, 2].map(|r| {
                    let m = &matrix[r];
                    centre[r] + m[0] * d[0] + m[1] * d[1] + m[2] * d[2] + elastic[r]
                });
                image[i] = trilinear(volume, p);
                if let Some(j) = nearest(volume.shape, p) {
                    labels[i] = volume.labels[j];
                    sources[i] = generation[j];
                }
                i += 1;
            }
        }
    }
    (image, labels, sources)
}

/// The index of the voxel nearest to `p`, if it is inside `shape`.
fn nearest(shape: [usize; 3], p: [f64; 3]) -> Option<usize> {
    let q = p.map(|c| c.round());
    (0..3)
        .all(|k| q[k] >= 0.0 && q[k] < shape[k] as f64)
        .then(|| q[0] as usize + shape[0] * (q[1] as usize + shape[1] * q[2] as usize))
}

/// Trilinear intensity at `p`; outside the volume its pad value.
fn trilinear(v: &TrainingVolume, p: [f64; 3]) -> f32 {
    // `floor` without a library call (baseline x86-64 has no rounding instruction).
    let base = p.map(|c| {
        let t = c as i64 as f64;
        if t > c { t - 1.0 } else { t }
    });
    let mut value = 0.0;
    for corner in 0..8 {
        let mut w = 1.0;
        let mut q = [0i64; 3];
        for k in 0..3 {
            let up = corner & (1 << k) != 0;
            q[k] = base[k] as i64 + i64::from(up);
            let f = (p[k] - base[k]) as f32;
            w *= if up { f } else { 1.0 - f };
        }
        if w > 0.0 {
            let inside = (0..3).all(|k| q[k] >= 0 && q[k] < v.shape[k] as i64);
            value += w * if inside {
                v.image[v.index(q[0] as usize, q[1] as usize, q[2] as usize)]
            } else {
                v.pad
            };
        }
    }
    value
}

/// Intensities drawn per generation label from a random Gaussian each: means anywhere in
/// [0, 1] (the air's in [0, 0.1], MR air being dark), standard deviations up to 0.1 (0.05
/// in the air).
fn synthesised(sources: &[u8], rng: &mut ChaCha8Rng) -> Vec<f32> {
    let labels = sources.iter().copied().max().unwrap_or(0) as usize + 1;
    let tissues: Vec<(f32, f32)> = (0..labels)
        .map(|g| {
            let (mean, std) = if g == 0 { (0.1, 0.05) } else { (1.0, 0.1) };
            (
                (rng.random::<f64>() * mean) as f32,
                (rng.random::<f64>() * std) as f32,
            )
        })
        .collect();
    sources
        .iter()
        .map(|&g| {
            let (mean, std) = tissues[g as usize];
            let z: f32 = StandardNormal.sample(rng);
            (mean + std * z).max(0.0)
        })
        .collect()
}

/// The block acquired again as `acquisition` says, with a bias field, noise and a gamma.
fn acquire(
    image: &mut [f32],
    block: &Block,
    acquisition: &Acquisition,
    volume_spacing: [f64; 3],
    rng: &mut ChaCha8Rng,
) {
    let dims = block.dims;
    for (k, &a) in block.axes.iter().enumerate() {
        let spacing = volume_spacing[a];
        gaussian_blur_axis(image, dims, k, acquisition.blur_mm[a] / spacing);
        let step = acquisition.sample_mm[a] / spacing;
        resample_axis(image, dims, k, step, acquisition.phase);
    }
    let bias = Lattice::random(
        dims,
        dims.map(|d| d as f64 / (BIAS_POINTS - 1) as f64),
        rng.random::<f64>() * BIAS_STD,
        rng,
    );
    let [bx, by, _] = dims;
    let noise = rng.random::<f64>() * NOISE;
    let (low, high) = min_max(image);
    let normal = Normal::new(0.0, noise * (high - low).max(1e-6) as f64).expect("a finite noise");
    let mut gain = vec![0f64; bx];
    for (r, row) in image.chunks_exact_mut(bx).enumerate() {
        bias.row(r % by, r / by, &mut gain);
        for (v, g) in row.iter_mut().zip(&gain) {
            *v = (*v * g.exp() as f32 + normal.sample(rng) as f32).abs();
        }
    }
    let (low, high) = min_max(image);
    let gamma = (GAMMA_STD * rng.sample::<f64, _>(StandardNormal)).exp() as f32;
    let range = (high - low).max(1e-6);
    image
        .iter_mut()
        .for_each(|v| *v = ((*v - low) / range).powf(gamma));
}

fn min_max(values: &[f32]) -> (f32, f32) {
    values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        })
}

/// Every line along `axis` sampled every `step` voxels (from `phase` of a step on) and
/// interpolated back linearly: what a scanner's slices that far apart and a resampling to
/// this grid leave of it. Steps of a voxel or less change nothing.
fn resample_axis(image: &mut [f32], dims: [usize; 3], axis: usize, step: f64, phase: f64) {
    if step <= 1.0 {
        return;
    }
    let n = dims[axis];
    let stride = [1, dims[0], dims[0] * dims[1]][axis];
    let first = phase * step - step;
    let samples = ((n as f64 - first) / step).ceil() as usize + 1;
    let mut line = vec![0f32; n];
    let mut low = vec![0f32; samples];
    for start in 0..image.len() {
        if !(start / stride).is_multiple_of(n) {
            continue;
        }
        for (k, value) in line.iter_mut().enumerate() {
            *value = image[start + k * stride];
        }
        let linear = |values: &[f32], p: f64| {
            let p = p.clamp(0.0, (values.len() - 1) as f64);
            let i = (p.floor() as usize).min(values.len() - 1);
            let j = (i + 1).min(values.len() - 1);
            let f = (p - i as f64) as f32;
            values[i] * (1.0 - f) + values[j] * f
        };
        for (s, value) in low.iter_mut().enumerate() {
            *value = linear(&line, first + s as f64 * step);
        }
        for k in 0..n {
            image[start + k * stride] = linear(&low, (k as f64 - first) / step);
        }
    }
}

/// Everything outside the brain mask (the labelled voxels grown by 0 to 3 voxels) set to
/// zero, or to faint noise.
fn skull_strip(image: &mut [f32], labels: &[u16], dims: [usize; 3], rng: &mut ChaCha8Rng) {
    let brain: Vec<bool> = labels.iter().map(|&l| l > 0).collect();
    let r = rng.random_range(0..=3);
    let mask = dilate(&brain, dims, [r; 3]);
    let (low, high) = min_max(image);
    let noise = if rng.random::<bool>() {
        0.0
    } else {
        rng.random::<f64>() * 0.02 * (high - low) as f64
    };
    let normal = Normal::new(0.0, noise.max(0.0)).expect("a finite noise");
    for (v, inside) in image.iter_mut().zip(mask) {
        if !inside {
            *v = (normal.sample(rng) as f32).abs();
        }
    }
}

/// The crop's stack and middle-slice labels out of the block.
fn cut(image: &[f32], labels: &[u16], block: &Block, side: usize) -> (Vec<f32>, Vec<u16>) {
    let [bx, by, _] = block.dims;
    let [mc, mr, ms] = block.margins;
    let mut stack = Vec::with_capacity(INPUT_CHANNELS * side * side);
    for s in ms..ms + INPUT_CHANNELS {
        for r in mr..mr + side {
            let start = (s * by + r) * bx + mc;
            stack.extend_from_slice(&image[start..start + side]);
        }
    }
    let middle = ms + CONTEXT_SLICES;
    let mut middle_labels = Vec::with_capacity(side * side);
    for r in mr..mr + side {
        let start = (middle * by + r) * bx + mc;
        middle_labels.extend_from_slice(&labels[start..start + side]);
    }
    (stack, middle_labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 24^3 "head" at 2 mm: air outside a ball of radius 11, a scalp of bright fat over
    /// muscle, a dark skull shell (as dark as the air, but enclosed), and inside a "brain" of two labelled
    /// classes (joint ids 1 and 2: halves in x) with intensities 400 and 600.
    fn head() -> TrainingVolume {
        let n = 24;
        let shape = [n; 3];
        let mut image = vec![0f32; n * n * n];
        let mut labels = vec![0u16; n * n * n];
        for z in 0..n {
            for y in 0..n {
                for x in 0..n {
                    let d = [x, y, z].map(|c| c as f64 - 11.5);
                    let r = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
                    let i = x + n * (y + n * z);
                    (image[i], labels[i]) = match r {
                        r if r > 11.0 => (0.0, 0),
                        r if r > 10.0 => (1000.0, 0),
                        r if r > 9.0 => (500.0, 0),
                        r if r > 7.0 => (10.0, 0),
                        _ if x < 12 => (400.0, 1),
                        _ => (600.0, 2),
                    };
                }
            }
        }
        let class_voxels = [1, 2]
            .map(|c| {
                (0..labels.len() as u32)
                    .filter(|&i| labels[i as usize] == c)
                    .collect()
            })
            .to_vec();
        TrainingVolume {
            case: "head".into(),
            task: 0,
            shape,
            spacing: [2.0; 3],
            image,
            labels,
            pad: 0.0,
            class_voxels,
            generation: Vec::new(),
        }
    }

    #[test]
    fn generation_labels_give_the_head_around_the_brain_labels_of_its_own() {
        let v = head();
        let g = generation_labels(&v, &[1, 2]);
        let n = 24;
        let at = |x: usize, y: usize, z: usize| g[x + n * (y + n * z)];
        assert_eq!(at(0, 0, 0), 0, "air");
        assert_eq!(at(8, 11, 11), 1, "first class");
        assert_eq!(at(15, 11, 11), 2, "second class");
        // The skull is as dark as the air but enclosed: the darkest head cluster, the
        // scalp the brightest.
        assert_eq!(at(11, 11, 3), 3, "skull");
        assert_eq!(at(11, 11, 2), 4, "muscle");
        assert_eq!(at(11, 11, 1), 2 + HEAD_CLUSTERS as u8, "fat");
    }

    #[test]
    fn kmeans_numbers_clusters_from_the_darkest() {
        let values: Vec<f32> = (0..300)
            .map(|i| [900.0, 10.0, 400.0][i % 3] + (i % 7) as f32)
            .collect();
        let clusters = kmeans_1d(&values, 3);
        for (v, c) in values.iter().zip(&clusters) {
            let expected = if *v < 100.0 {
                0
            } else if *v < 500.0 {
                1
            } else {
                2
            };
            assert_eq!(*c, expected, "{v}");
        }
    }

    #[test]
    fn synthetic_intensities_follow_one_random_gaussian_per_label() {
        let sources: Vec<u8> = (0..40_000).map(|i| (i % 4) as u8).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let image = synthesised(&sources, &mut rng);
        let mut means = Vec::new();
        for g in 0..4u8 {
            let values: Vec<f64> = sources
                .iter()
                .zip(&image)
                .filter(|(s, _)| **s == g)
                .map(|(_, v)| *v as f64)
                .collect();
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>()
                / values.len() as f64)
                .sqrt();
            let (max_mean, max_std) = if g == 0 { (0.1, 0.05) } else { (1.0, 0.1) };
            assert!(
                mean >= 0.0 && mean <= max_mean + 0.01,
                "label {g}: mean {mean}"
            );
            assert!(std <= max_std + 0.01, "label {g}: std {std}");
            means.push(mean);
        }
        // Each label draws its own mean: no two alike.
        for a in 1..4 {
            for b in a + 1..4 {
                assert!((means[a] - means[b]).abs() > 1e-3, "{means:?}");
            }
        }
        // Another seed, another contrast.
        let other = synthesised(&sources, &mut ChaCha8Rng::seed_from_u64(4));
        assert_ne!(other[1], image[1]);
    }

    #[test]
    fn bias_fields_are_smooth() {
        let dims = [40, 30, 20];
        let step = dims.map(|d| d as f64 / (BIAS_POINTS - 1) as f64);
        let field = Lattice::random(dims, step, 0.4, &mut ChaCha8Rng::seed_from_u64(5));
        let largest = field.values.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(largest > 0.1, "a field, not a constant");
        // Between neighbouring voxels the field moves by at most the largest control-point
        // difference over a lattice step.
        for z in 0..dims[2] - 1 {
            for y in 0..dims[1] - 1 {
                for x in 0..dims[0] - 1 {
                    let f = field.at([x, y, z]);
                    for (k, next) in [[x + 1, y, z], [x, y + 1, z], [x, y, z + 1]]
                        .into_iter()
                        .enumerate()
                    {
                        let d = (field.at(next) - f).abs();
                        assert!(d <= 2.0 * largest / step[k] + 1e-9, "{d}");
                    }
                }
            }
        }
    }

    #[test]
    fn thick_slices_lose_detail_along_their_axis_only() {
        let dims = [32, 8, 32];
        // Stripes of a period of 4 voxels along x and along z, added.
        let stripes = |c: usize| (c as f64 * std::f64::consts::TAU / 4.0).sin() as f32;
        let mut image: Vec<f32> = (0..32 * 8 * 32)
            .map(|i| stripes(i % 32) + stripes(i / (32 * 8)))
            .collect();
        let original = image.clone();
        // 6 mm slices along z on a 2 mm grid: a slice profile and every third voxel kept.
        gaussian_blur_axis(&mut image, dims, 2, 6.0 / 2.355 / 2.0);
        resample_axis(&mut image, dims, 2, 3.0, 0.4);
        let amplitude = |data: &[f32], axis: usize| {
            // Peak to peak along one line through the middle.
            let line: Vec<f32> = (8..24)
                .map(|c| {
                    let (x, z) = if axis == 0 { (c, 16) } else { (16, c) };
                    data[x + 32 * (4 + 8 * z)]
                })
                .collect();
            let (low, high) = min_max(&line);
            high - low
        };
        assert!(amplitude(&original, 2) > 1.9);
        assert!(amplitude(&image, 2) < 0.5, "{}", amplitude(&image, 2));
        assert!(amplitude(&image, 0) > 1.9, "in-plane detail is kept");
        // A ramp is sampled and interpolated back exactly: the resampling is linear.
        let mut ramp: Vec<f32> = (0..32 * 8 * 32).map(|i| (i / 256) as f32).collect();
        let before = ramp.clone();
        resample_axis(&mut ramp, dims, 2, 4.5, 0.3);
        for (a, b) in ramp.iter().zip(&before).skip(256 * 4).take(256 * 24) {
            assert!((a - b).abs() < 1e-4, "{a} {b}");
        }
    }

    #[test]
    fn labels_are_deformed_with_the_image() {
        let mut v = head();
        // Intensities that name the label: 100 per label id, plus 50.
        v.image = v.labels.iter().map(|&l| 100.0 * l as f32 + 50.0).collect();
        v.pad = 50.0;
        let generation = generation_labels(&v, &[1, 2]);
        let at = CropWindow {
            orientation: Orientation::Coronal,
            slice: 12,
            window: [4, 4],
            side: 16,
        };
        let how = Randomisation {
            synthetic: false,
            rotation_degrees: 20.0,
            scaling: 0.2,
            foreground_normalised: true,
            seed: 7,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(how.seed);
        let block = Block::around(&at, &Acquisition::random(v.spacing, &mut rng), v.spacing);
        let (image, labels, sources) = deformed(&v, &generation, &block, &how, &mut rng);
        let agree = image
            .iter()
            .zip(&labels)
            .filter(|(i, l)| ((**i - 50.0) / 100.0).round() as u16 == **l)
            .count();
        assert!(
            agree as f64 > 0.95 * image.len() as f64,
            "{agree} of {}",
            image.len()
        );
        // The generation labels moved with them.
        for (l, s) in labels.iter().zip(&sources) {
            if *l > 0 {
                assert_eq!(*s as u16, *l);
            }
        }
        // Not the identity: some voxels changed label.
        let (_, plain) = crate::data::sampler::plain_crop(&v, &at, None);
        let (_, randomised) = randomised_crop(&v, &generation, &at, &how);
        assert_ne!(plain, randomised);
        assert_eq!(randomised.len(), 16 * 16);
    }

    #[test]
    fn randomised_crops_are_finite_normalised_and_repeat_with_their_seed() {
        let v = head();
        let generation = generation_labels(&v, &[1, 2]);
        let at = CropWindow {
            orientation: Orientation::Axial,
            slice: 12,
            window: [4, 4],
            side: 16,
        };
        for seed in 0..12 {
            for synthetic in [false, true] {
                let how = Randomisation {
                    synthetic,
                    rotation_degrees: 15.0,
                    scaling: 0.15,
                    foreground_normalised: true,
                    seed,
                };
                let (image, labels) = randomised_crop(&v, &generation, &at, &how);
                assert_eq!(image.len(), INPUT_CHANNELS * 16 * 16);
                assert!(image.iter().all(|x| x.is_finite()));
                // z-scored and clipped: nothing far out.
                assert!(image.iter().all(|x| x.abs() < 20.0), "seed {seed}");
                assert_eq!(randomised_crop(&v, &generation, &at, &how), (image, labels));
            }
        }
    }
}
