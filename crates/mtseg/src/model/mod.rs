//! Stage 5, model: the paper's triplanar network and a 2.5-D U-Net in burn, their
//! configuration and presets, the meaning of their outputs, and the self-contained model file.

pub mod config;
pub mod file;
pub mod network;
pub mod output;
pub mod shipped;
pub mod slices;
pub mod unet;

use std::path::Path;
use std::sync::Mutex;

use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;

pub use config::{
    Architecture, NetworkConfig, OutputMode, Preset, TaskShare, TrainConfig, TriplanarConfig,
    UNetConfig,
};
pub use file::{ModelFile, ModelMeta, TaskMeta};
pub use network::{Orientation, TriplanarNet};
pub use output::OutputLayout;
pub use shipped::{SHIPPED_MODEL, load_shipped};
pub use unet::UNet;

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

/// A freshly initialised triplanar network, deterministic for a given seed (the defaults'
/// sizes if `meta` describes a U-Net).
pub fn init_network(meta: &ModelMeta, seed: u64, device: &Device) -> TriplanarNet {
    let Network::Triplanar(net) = Network::init(&triplanar(meta), seed, device) else {
        unreachable!("a triplanar configuration gives a triplanar network")
    };
    net
}

/// The weights of a triplanar network as bytes: burn's module record of its evaluation-mode
/// copy (batch-norm running statistics current).
pub fn weights_to_bytes(net: &TriplanarNet) -> Result<Vec<u8>> {
    weights_to_bytes_of(net)
}

/// A triplanar network with the given weights, on `device`.
pub fn network_from_bytes(
    meta: &ModelMeta,
    weights: &[u8],
    device: &Device,
    path: &Path,
) -> Result<TriplanarNet> {
    let NetworkConfig::Triplanar(config) = &triplanar(meta).network else {
        unreachable!("triplanar() gives a triplanar configuration")
    };
    let net = TriplanarNet::new(config, meta.layout.channels(), meta.tasks.len(), device);
    load_weights(net, weights, path)
}

/// `meta` with a triplanar network (its own, or the defaults in place of a U-Net).
fn triplanar(meta: &ModelMeta) -> ModelMeta {
    let mut meta = meta.clone();
    if meta.network.architecture() != Architecture::Triplanar {
        meta.network = NetworkConfig::default_for(Architecture::Triplanar);
    }
    meta
}

/// The weights of a module as bytes (burn's module record), taken from its evaluation-mode
/// copy so that batch-norm running statistics are current.
fn weights_to_bytes_of<M: Module>(net: &M) -> Result<Vec<u8>> {
    let record = net.valid().into_record();
    let bytes = record
        .into_bytes()
        .map_err(|e| Error::usage(format!("cannot serialise the weights: {e:?}")))?;
    Ok(bytes.to_vec())
}

fn load_weights<M: Module>(net: M, weights: &[u8], path: &Path) -> Result<M> {
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(weights.to_vec()))
        .map_err(|e| Error::invalid(path, format!("unreadable weights: {e:?}")))?;
    net.try_load_record(record).map_err(|e| {
        Error::invalid(
            path,
            format!("the weights do not fit the network described in the file: {e:?}"),
        )
    })
}

/// The network a model file describes: the paper's or the U-Net.
// A handful of these exist at a time, moved once per training step: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Network {
    Triplanar(TriplanarNet),
    UNet(UNet),
}

impl Network {
    /// Freshly initialised, deterministic for a given seed.
    pub fn init(meta: &ModelMeta, seed: u64, device: &Device) -> Network {
        with_seed(device, seed, || {
            let (outputs, tasks) = (meta.layout.channels(), meta.tasks.len());
            let net = match &meta.network {
                NetworkConfig::Triplanar(c) => {
                    Network::Triplanar(TriplanarNet::new(c, outputs, tasks, device))
                }
                NetworkConfig::UNet(c) => Network::UNet(UNet::new(c, outputs, tasks, device)),
            };
            match &net {
                Network::Triplanar(n) => n.visit(&mut Materialise),
                Network::UNet(n) => n.visit(&mut Materialise),
            }
            net
        })
    }

    /// The network `meta` describes with the given weights, on `device`.
    pub fn from_bytes(
        meta: &ModelMeta,
        weights: &[u8],
        device: &Device,
        path: &Path,
    ) -> Result<Network> {
        Ok(match &meta.network {
            NetworkConfig::Triplanar(_) => {
                Network::Triplanar(network_from_bytes(meta, weights, device, path)?)
            }
            NetworkConfig::UNet(c) => {
                let net = UNet::new(c, meta.layout.channels(), meta.tasks.len(), device);
                Network::UNet(load_weights(net, weights, path)?)
            }
        })
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        match self {
            Network::Triplanar(n) => weights_to_bytes_of(n),
            Network::UNet(n) => weights_to_bytes_of(n),
        }
    }

    /// The evaluation-mode copy (batch-norm running statistics, no dropout, no autodiff).
    pub fn valid(&self) -> Network {
        match self {
            Network::Triplanar(n) => Network::Triplanar(n.valid()),
            Network::UNet(n) => Network::UNet(n.valid()),
        }
    }
}

/// A trained model ready to segment: metadata and the network in evaluation mode.
pub struct Model {
    pub meta: ModelMeta,
    pub net: Network,
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
        let net = Network::from_bytes(&file.meta, &file.weights, device, path)?;
        Ok(Model {
            meta: file.meta,
            net: net.valid(),
        })
    }
}

#[cfg(test)]
mod tests;
