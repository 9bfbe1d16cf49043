//! Stage 5, model: the paper's triplanar network in burn, its configuration and presets, the
//! meaning of its outputs, and the self-contained model file.

pub mod config;
pub mod file;
pub mod network;
pub mod output;
pub mod shipped;

use std::path::Path;
use std::sync::Mutex;

use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;

pub use config::{NetworkConfig, OutputMode, Preset, TrainConfig};
pub use file::{ModelFile, ModelMeta, TaskMeta};
pub use network::{Orientation, TriplanarNet};
pub use output::OutputLayout;
pub use shipped::{SHIPPED_MODEL, load_shipped};

use crate::error::{Error, Result};

/// Reads every parameter once: burn draws initial weights lazily, on first use, so without
/// this the seed would not decide the weights.
struct Materialise;

impl ModuleVisitor for Materialise {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// burn's random stream is shared by every thread of the process: seeding it and drawing
/// from it must not interleave with another thread doing the same (data-parallel workers,
/// tests running side by side), or the seed no longer decides what is drawn.
static RANDOM_STREAM: Mutex<()> = Mutex::new(());

/// Runs `draw` on burn's random stream seeded with `seed`, no other thread drawing meanwhile.
pub(crate) fn with_seed<R>(device: &Device, seed: u64, draw: impl FnOnce() -> R) -> R {
    let _alone = RANDOM_STREAM
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    device.seed(seed);
    draw()
}

/// A freshly initialised network, deterministic for a given seed.
pub fn init_network(meta: &ModelMeta, seed: u64, device: &Device) -> TriplanarNet {
    with_seed(device, seed, || {
        let net = TriplanarNet::new(
            &meta.network,
            meta.layout.channels(),
            meta.tasks.len(),
            device,
        );
        net.visit(&mut Materialise);
        net
    })
}

/// The weights of a network as bytes (burn's module record), taken from its evaluation-mode
/// copy so that batch-norm running statistics are current.
pub fn weights_to_bytes(net: &TriplanarNet) -> Result<Vec<u8>> {
    let record = net.valid().into_record();
    let bytes = record
        .into_bytes()
        .map_err(|e| Error::usage(format!("cannot serialise the weights: {e:?}")))?;
    Ok(bytes.to_vec())
}

/// A network with the given weights, on `device`.
pub fn network_from_bytes(
    meta: &ModelMeta,
    weights: &[u8],
    device: &Device,
    path: &Path,
) -> Result<TriplanarNet> {
    let net = TriplanarNet::new(
        &meta.network,
        meta.layout.channels(),
        meta.tasks.len(),
        device,
    );
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(weights.to_vec()))
        .map_err(|e| Error::invalid(path, format!("unreadable weights: {e:?}")))?;
    net.try_load_record(record).map_err(|e| {
        Error::invalid(
            path,
            format!("the weights do not fit the network described in the file: {e:?}"),
        )
    })
}

/// A trained model ready to segment: metadata and the network in evaluation mode.
pub struct Model {
    pub meta: ModelMeta,
    pub net: TriplanarNet,
}

impl Model {
    /// Loads a model file onto the CPU.
    pub fn load_cpu(path: &Path) -> Result<Model> {
        Self::load(path, &Device::flex())
    }

    pub fn load(path: &Path, device: &Device) -> Result<Model> {
        Self::from_file(ModelFile::load(path)?, path, device)
    }

    /// A model from the bytes of a model file; `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8], device: &Device) -> Result<Model> {
        Self::from_file(ModelFile::from_bytes(path, bytes)?, path, device)
    }

    fn from_file(file: ModelFile, path: &Path, device: &Device) -> Result<Model> {
        let net = network_from_bytes(&file.meta, &file.weights, device, path)?;
        Ok(Model {
            meta: file.meta,
            net: net.valid(),
        })
    }
}

#[cfg(test)]
mod tests;
