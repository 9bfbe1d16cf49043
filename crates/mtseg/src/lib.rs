//! mtseg: one network, many segmentation tasks, many modalities.
//!
//! A Rust implementation of Moeskops et al., MICCAI 2016, "Deep learning for multi-task
//! medical image segmentation in multiple modalities".
//!
//! The modules are layers, each using only those listed before it (`tests/layers.rs` checks
//! it):
//!
//! 1. [`io`] and [`error`] (the `mtseg-io` crate, without burn): volumes and their world
//!    geometry (NIfTI, NRRD, MetaImage, DICOM in and SEG out), reorientation, atomic writes;
//!    errors that name the file.
//! 2. [`device`]: the CPU or a GPU.
//! 3. [`datasets`]: nnU-Net raw folders (or cases held in memory) as tasks, label spaces,
//!    splits.
//! 4. [`preprocess`]: resampling, intensity normalisation, filters.
//! 5. [`report`]: overlays and fonts for pictures; `phantoms` (feature `phantoms`): synthetic
//!    tasks for the demo and the tests.
//! 6. [`model`]: the networks (burn modules), their configs, outputs and files; the slice
//!    stacks the U-Net reads.
//! 7. [`data`]: training volumes, balanced sampling, augmentation and domain randomisation.
//! 8. [`engine`]: running the networks: mtseg's CPU kernels and burn (GPU) behind one
//!    [`engine::Dense`] boundary, the loss and one training step on either.
//! 9. [`infer`]: segmenting a scan: [`infer::Segmenter`], the quality verdict, statistics.
//! 10. [`eval`]: metrics and comparing label folders.
//! 11. [`train`]: the training loop, validation, checkpoints.
//! 12. [`experiment`]: the paper's experiment (one network against one per task).
//!
//! ```no_run
//! # fn main() -> mtseg::Result<()> {
//! let segmenter = mtseg::infer::Segmenter::builder().build()?;
//! let image = mtseg::io::read_image("t1.nii.gz".as_ref())?;
//! let segmentation = segmenter.segment(&image)?;
//! assert_eq!(segmentation.labels.grid.shape, image.grid.shape);
//! # Ok(())
//! # }
//! ```

pub mod data;
pub mod datasets;
pub mod device;
pub mod engine;
pub mod eval;
pub mod experiment;
pub mod infer;
pub mod model;
#[cfg(feature = "phantoms")]
pub mod phantoms;
pub mod preprocess;
pub mod report;
pub mod train;

#[cfg(test)]
mod test_support;

/// Volumes and their geometry, and the errors every layer returns: the `mtseg-io` crate.
pub use mtseg_io as io;
pub use mtseg_io::error;
pub use mtseg_io::error::{Error, Result};
