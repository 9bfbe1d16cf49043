//! Dense whole-volume inference, and how the triplanar network runs fully convolutionally: each
//! orientation's branch over the slices of its plane, the features combined per voxel, the
//! head over every voxel.
//!
//! Memory stays bounded: the volume is processed in slabs along z. For a slab, the axial
//! branch runs over its slices, the coronal and sagittal branches over slices cut to the
//! slab's z range (plus the receptive margin), and only the slab's features are held. A slab
//! covers the whole volume when it fits the memory budget, so small volumes pay no overlap.

use crate::model::Orientation;

/// What dense inference needs from a network implementation.
pub trait Engine: Sync {
    /// Convolution layers per branch (the receptive radius).
    fn depth(&self) -> usize;
    /// Features per branch.
    fn kernels(&self) -> usize;
    /// Outputs of the class layer.
    fn channels(&self) -> usize;
    /// Outputs of the task head (0 without one).
    fn task_channels(&self) -> usize;
    /// `n` slices of `h x w` (row-major) to features `n x (h - 2 depth) x (w - 2 depth) x K`
    /// (channels last).
    fn branch(
        &self,
        orientation: Orientation,
        slices: Vec<f32>,
        n: usize,
        h: usize,
        w: usize,
    ) -> Vec<f32>;
    /// Features of `n` voxels (`n x 3K`, voxel-major) to class logits (`n x channels`) and
    /// task logits (`n x task_channels`), voxel-major.
    fn head(&self, features: Vec<f32>, n: usize) -> (Vec<f32>, Vec<f32>);
}

/// Receives one slab: `(z0, z1, class logits, task logits)`.
pub type OnSlab<'a> = dyn FnMut(usize, usize, &[f32], &[f32]) + 'a;

/// The logits of some of a volume's voxels: a first look at a scan, cheaper than a dense
/// pass, to recognise its task and find its foreground.
#[derive(Clone, Debug, Default)]
pub struct Sampled {
    /// The voxels looked at (indices into the volume; a voxel on slices of two orientations
    /// comes twice).
    pub voxels: Vec<usize>,
    /// Class logits, voxel-major.
    pub logits: Vec<f32>,
    /// Task logits, voxel-major (empty without a task head).
    pub task_logits: Vec<f32>,
}

/// What `segment` needs from a network: class and task logits for every voxel, handed over
/// slab by slab along z (the triplanar engines through [`for_each_slab`], the U-Net through
/// [`crate::engine::UNetEngine`]).
pub trait Dense: Sync {
    /// Class logits per voxel.
    fn logit_channels(&self) -> usize;
    /// Task logits per voxel (0 without a task head).
    fn task_logit_channels(&self) -> usize;
    /// Calls `on_slab(z0, z1, class logits, task logits)` for slabs covering the volume,
    /// logits voxel-major, voxels ordered `x + nx * (y + ny * (z - z0))`.
    fn logits_by_slab(&self, input: &NetworkInput, settings: &DenseSettings, on_slab: &mut OnSlab);

    /// The logits of the voxels of `slices` slices of each orientation, spread over the
    /// volume. Networks that cannot look at single slices give every voxel's.
    fn sampled_logits(
        &self,
        input: &NetworkInput,
        settings: &DenseSettings,
        slices: usize,
    ) -> Sampled {
        let _ = slices;
        let mut sampled = Sampled::default();
        self.logits_by_slab(input, settings, &mut |z0, z1, logits, task_logits| {
            let [nx, ny, _] = input.shape;
            sampled.voxels.extend(nx * ny * z0..nx * ny * z1);
            sampled.logits.extend_from_slice(logits);
            sampled.task_logits.extend_from_slice(task_logits);
        });
        sampled
    }
}

impl<E: Engine + ?Sized> Dense for E {
    fn logit_channels(&self) -> usize {
        self.channels()
    }

    fn task_logit_channels(&self) -> usize {
        self.task_channels()
    }

    fn logits_by_slab(&self, input: &NetworkInput, settings: &DenseSettings, on_slab: &mut OnSlab) {
        for_each_slab(self, input, settings, on_slab)
    }
}

/// Limits of one dense run.
#[derive(Clone, Copy, Debug)]
pub struct DenseSettings {
    /// Memory for the features of one slab (bytes).
    pub slab_bytes: usize,
    /// Slices per branch call.
    pub slice_batch: usize,
    /// Voxels per head call.
    pub head_voxels: usize,
}

impl Default for DenseSettings {
    fn default() -> Self {
        DenseSettings {
            slab_bytes: 768 << 20,
            slice_batch: 8,
            head_voxels: 1 << 16,
        }
    }
}

impl DenseSettings {
    /// For a GPU: big launches, and slabs thick enough that the coronal and sagittal
    /// branches recompute little of their padding (4 GiB of host memory for features).
    pub fn gpu() -> Self {
        DenseSettings {
            slab_bytes: 4 << 30,
            slice_batch: 32,
            head_voxels: 1 << 20,
        }
    }
}

/// A volume in network layout (canonical RAS, the task's spacing, normalised): the view the
/// U-Net's slices are cut from too.
pub use crate::model::slices::VolumeView as NetworkInput;

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
pub fn for_each_slab<E: Engine + ?Sized>(
    engine: &E,
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
fn slab_features<E: Engine + ?Sized>(
    engine: &E,
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

fn run_head<E: Engine + ?Sized>(
    engine: &E,
    features: &[f32],
    n: usize,
    chunk: usize,
) -> (Vec<f32>, Vec<f32>) {
    let channels_in = features.len() / n;
    let mut logits = Vec::with_capacity(engine.channels() * n);
    let mut task_logits = Vec::with_capacity(engine.task_channels() * n);
    for part in features.chunks(chunk * channels_in) {
        let (l, t) = engine.head(part.to_vec(), part.len() / channels_in);
        logits.extend_from_slice(&l);
        task_logits.extend_from_slice(&t);
    }
    (logits, task_logits)
}

/// All class logits of a (small) volume, voxel-major.
pub fn dense_logits<E: Engine + ?Sized>(
    engine: &E,
    input: &NetworkInput,
    settings: &DenseSettings,
) -> Vec<f32> {
    let mut all = Vec::with_capacity(engine.channels() * input.shape.iter().product::<usize>());
    for_each_slab(engine, input, settings, |_, _, logits, _| {
        all.extend_from_slice(logits)
    });
    all
}
