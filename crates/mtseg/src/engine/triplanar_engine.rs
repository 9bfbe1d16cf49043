//! The triplanar network run densely, fully convolutionally: each orientation's branch over
//! the slices of its plane, the features combined per voxel, the head over every voxel. On the
//! CPU the layers run on mtseg's own kernels ([`FoldedNetwork`]), on a GPU through burn: the
//! same two runners as the U-Net's engine.
//!
//! Memory stays bounded: the volume is processed in slabs along z. For a slab, the axial
//! branch runs over its slices, the coronal and sagittal branches over slices cut to the
//! slab's z range (plus the receptive margin), and only the slab's features are held. A slab
//! covers the whole volume when it fits the memory budget, so small volumes pay no overlap.

use burn::prelude::*;

use crate::device::Hardware;

use super::dense::{Dense, DenseSettings, NetworkInput, OnSlab};
use super::network::FoldedNetwork;
use super::values;
use crate::model::{Orientation, TriplanarNet};

/// What runs the network's layers.
enum Runner {
    /// Both boxed: the two are large and of different sizes.
    Cpu(Box<FoldedNetwork>),
    /// In evaluation mode, on `device`.
    Burn {
        net: Box<TriplanarNet>,
        device: Device,
    },
}

pub struct TriplanarEngine {
    runner: Runner,
    depth: usize,
    kernels: usize,
    channels: usize,
    task_channels: usize,
}

impl TriplanarEngine {
    /// On `hardware`: mtseg's CPU kernels, or burn on `device` (its autodiff, if any,
    /// dropped).
    pub fn new(net: &TriplanarNet, hardware: Hardware, device: &Device) -> Self {
        match hardware {
            Hardware::Cpu => Self::on_cpu(net),
            Hardware::Gpu => Self::on_device(net, device.clone().without_autodiff()),
        }
    }

    /// On mtseg's CPU kernels.
    pub fn on_cpu(net: &TriplanarNet) -> Self {
        Self::with(net, Runner::Cpu(Box::new(FoldedNetwork::from_burn(net))))
    }

    /// Through burn, the network moved to `device`.
    pub fn on_device(net: &TriplanarNet, device: Device) -> Self {
        let runner = Runner::Burn {
            net: Box::new(net.clone().to_device(&device)),
            device,
        };
        Self::with(net, runner)
    }

    fn with(net: &TriplanarNet, runner: Runner) -> Self {
        TriplanarEngine {
            runner,
            depth: net.branches[0].layers.len(),
            kernels: net.head.fc1.weight.dims()[1] / 3,
            channels: net.head.classes.weight.dims()[0],
            task_channels: net.head.task.as_ref().map_or(0, |t| t.weight.dims()[0]),
        }
    }

    /// Convolution layers per branch (the receptive radius).
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Features per branch.
    pub fn kernels(&self) -> usize {
        self.kernels
    }

    /// `n` slices of `h x w` (row-major) to features `n x (h - 2 depth) x (w - 2 depth) x K`
    /// (channels last).
    pub fn branch(
        &self,
        orientation: Orientation,
        slices: Vec<f32>,
        n: usize,
        h: usize,
        w: usize,
    ) -> Vec<f32> {
        match &self.runner {
            Runner::Cpu(folded) => folded.branch(orientation, &slices, n, h, w),
            Runner::Burn { net, device } => {
                let x = Tensor::<4>::from_data(TensorData::new(slices, [n, 1, h, w]), device);
                values(net.branch(orientation).forward(x).permute([0, 2, 3, 1]))
            }
        }
    }

    /// Features of `n` voxels (`n x 3K`, voxel-major) to class logits (`n x channels`) and
    /// task logits (`n x task channels`), voxel-major.
    pub fn head(&self, features: Vec<f32>, n: usize) -> (Vec<f32>, Vec<f32>) {
        match &self.runner {
            Runner::Cpu(folded) => folded.head(&features, n),
            Runner::Burn { net, device } => {
                let c = features.len() / n;
                // Each voxel a 1x1 image: the 1x1 convolutions are the fully connected layers.
                let x = Tensor::<4>::from_data(TensorData::new(features, [n, c, 1, 1]), device);
                let (logits, task) = net.head.forward(x);
                (values(logits), task.map(values).unwrap_or_default())
            }
        }
    }
}

impl Dense for TriplanarEngine {
    fn logit_channels(&self) -> usize {
        self.channels
    }

    fn task_logit_channels(&self) -> usize {
        self.task_channels
    }

    fn logits_by_slab(&self, input: &NetworkInput, settings: &DenseSettings, on_slab: &mut OnSlab) {
        for_each_slab(self, input, settings, on_slab)
    }
}

impl NetworkInput<'_> {
    #[inline]
    fn at(&self, x: isize, y: isize, z: isize) -> f32 {
        let [nx, ny, nz] = self.shape.map(|s| s as isize);
        if x < 0 || y < 0 || z < 0 || x >= nx || y >= ny || z >= nz {
            self.pad
        } else {
            self.image[(x + nx * (y + ny * z)) as usize]
        }
    }
}

/// Runs the network over `input` slab by slab. For each slab `[z0, z1)` the callback gets
/// the class logits and the task logits of its voxels, voxel-major, voxels ordered
/// `x + nx * (y + ny * (z - z0))`.
fn for_each_slab(
    engine: &TriplanarEngine,
    input: &NetworkInput,
    settings: &DenseSettings,
    mut on_slab: impl FnMut(usize, usize, &[f32], &[f32]),
) {
    let [nx, ny, nz] = input.shape;
    let k = engine.kernels();
    let per_row = 3 * k * nx * ny * std::mem::size_of::<f32>();
    let thickness = (settings.slab_bytes / per_row.max(1)).clamp(1, nz);
    let mut z0 = 0;
    while z0 < nz {
        let z1 = (z0 + thickness).min(nz);
        let features = slab_features(engine, input, z0, z1, settings);
        let n = nx * ny * (z1 - z0);
        let (logits, task_logits) = run_head(engine, &features, n, settings.head_voxels);
        on_slab(z0, z1, &logits, &task_logits);
        z0 = z1;
    }
}

/// The 3K features of every voxel of the slab, voxel-major.
fn slab_features(
    engine: &TriplanarEngine,
    input: &NetworkInput,
    z0: usize,
    z1: usize,
    settings: &DenseSettings,
) -> Vec<f32> {
    let [nx, ny, _] = input.shape;
    let r = engine.depth() as isize;
    let k = engine.kernels();
    let t = z1 - z0;
    let n = nx * ny * t;
    let mut features = vec![0f32; 3 * k * n];
    for o in Orientation::ALL {
        // Slices of this orientation covering the slab: their count, and the extent of
        // their rows and columns (before padding) in the slab's output.
        let (count, rows, cols) = match o {
            Orientation::Axial => (t, nx, ny),
            Orientation::Coronal => (ny, nx, t),
            Orientation::Sagittal => (nx, ny, t),
        };
        let (h, w) = (rows + 2 * r as usize, cols + 2 * r as usize);
        let mut first = 0;
        while first < count {
            let last = (first + settings.slice_batch).min(count);
            let b = last - first;
            let mut slices = Vec::with_capacity(b * h * w);
            for s in first..last {
                for u in 0..h as isize {
                    for v in 0..w as isize {
                        let (a, c) = (u - r, v - r);
                        let value = match o {
                            Orientation::Axial => input.at(a, c, (z0 + s) as isize),
                            Orientation::Coronal => input.at(a, s as isize, z0 as isize + c),
                            Orientation::Sagittal => input.at(s as isize, a, z0 as isize + c),
                        };
                        slices.push(value);
                    }
                }
            }
            let out = engine.branch(o, slices, b, h, w);
            let offset = o.index() * k;
            for (i, s) in (first..last).enumerate() {
                for a in 0..rows {
                    for c in 0..cols {
                        let (x, y, z) = match o {
                            Orientation::Axial => (a, c, s),
                            Orientation::Coronal => (a, s, c),
                            Orientation::Sagittal => (s, a, c),
                        };
                        let voxel = x + nx * (y + ny * z);
                        features[voxel * 3 * k + offset..][..k]
                            .copy_from_slice(&out[((i * rows + a) * cols + c) * k..][..k]);
                    }
                }
            }
            first = last;
        }
    }
    features
}

fn run_head(
    engine: &TriplanarEngine,
    features: &[f32],
    n: usize,
    chunk: usize,
) -> (Vec<f32>, Vec<f32>) {
    let channels_in = features.len() / n;
    let mut logits = Vec::with_capacity(engine.logit_channels() * n);
    let mut task_logits = Vec::with_capacity(engine.task_logit_channels() * n);
    for part in features.chunks(chunk * channels_in) {
        let (l, t) = engine.head(part.to_vec(), part.len() / channels_in);
        logits.extend_from_slice(&l);
        task_logits.extend_from_slice(&t);
    }
    (logits, task_logits)
}
