//! The boundary between inference and the networks: [`Dense`], the logits of every voxel of a
//! volume in network layout, and the limits of one dense run.

use crate::device::Hardware;

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

/// The one inference boundary: what `segment` needs from a network, whatever its
/// architecture and wherever it runs. Class and task logits for every voxel, handed over slab
/// by slab along z. Implemented by [`crate::engine::TriplanarEngine`] and
/// [`crate::engine::UNetEngine`], each on mtseg's CPU kernels or through burn on a device.
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
    /// The slab and batch sizes that suit `hardware`.
    pub fn for_hardware(hardware: Hardware) -> Self {
        match hardware {
            Hardware::Cpu => DenseSettings::default(),
            Hardware::Gpu => DenseSettings::gpu(),
        }
    }

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
