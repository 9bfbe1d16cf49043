//! The pretrained multi-task model shipped in the repository (models/README.md: brain tissue
//! and hippocampus in T1 MRI, heart and great vessels in chest CTA). It is built into the
//! library, so `mtseg segment` works without a model file and without any download.

use std::path::Path;

use burn::prelude::Device;

use super::Model;
use crate::error::Result;

/// Where the shipped model lives in the repository (also how reports name it).
pub const SHIPPED_MODEL: &str = "models/mtseg-unet-brain-hippocampus-cta.mtseg";

const BYTES: &[u8] = include_bytes!("../../../../models/mtseg-unet-brain-hippocampus-cta.mtseg");

/// Loads the shipped model onto the CPU.
pub fn load_shipped() -> Result<Model> {
    Model::from_bytes(Path::new(SHIPPED_MODEL), BYTES, &Device::flex())
}
