//! mtseg: one network, many segmentation tasks, many modalities.
//!
//! A Rust implementation of Moeskops et al., MICCAI 2016, "Deep learning for multi-task
//! medical image segmentation in multiple modalities". The modules follow the pipeline:
//! [`io`] reads and writes volumes, [`datasets`] reads nnU-Net raw folders as tasks,
//! [`phantoms`] makes synthetic tasks, [`preprocess`] resamples and normalises.

pub mod bench;
pub mod data;
pub mod datasets;
pub mod demo;
pub mod device;
pub mod engine;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod infer;
pub mod io;
pub mod model;
pub mod phantoms;
pub mod preprocess;
pub mod report;
pub mod train;

#[cfg(test)]
mod test_support;

pub use error::{Error, Result};
