//! The model file: everything `segment` needs in one checksummed file.
//!
//! ```text
//! b"MTSEG\0\0\x01"            magic (8 bytes)
//! u32 format version          little-endian
//! u64 + JSON                  metadata: configs, label space, tasks, preprocessing
//! u64 + bytes                 weights (burn's module record)
//! u64 + bytes                 optimizer state (checkpoints only; empty in models)
//! u64 + JSON                  trainer state (checkpoints only; empty in models)
//! u32 CRC-32                  of everything before it
//! ```
//! Written atomically; a torn or corrupted file fails its checksum and is reported.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::config::{NetworkConfig, TrainConfig};
use super::output::OutputLayout;
use crate::datasets::{LabelSpace, Modality};
use crate::error::{Error, Result};
use crate::preprocess::Preprocessing;

const MAGIC: &[u8; 8] = b"MTSEG\0\0\x01";
/// Bumped whenever the layout or the metadata changes incompatibly. 2: the network section
/// holds only its architecture's fields ([`NetworkConfig`]); files of version 1 still read.
pub const FORMAT_VERSION: u32 = 2;

/// One task as the model knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskMeta {
    pub name: String,
    pub modality: Modality,
    /// Class names and their ids in the task's own dataset.json.
    pub classes: Vec<(String, u16)>,
    pub preprocessing: Preprocessing,
    /// What the task's training scans were like, with margins: what a segmentation's quality
    /// verdict compares with (absent in models written before it).
    #[serde(default)]
    pub expected: Option<Expected>,
}

/// The ranges a task's scans and segmentations are expected in: those of its training cases
/// (train and validation), widened by [`Expected::VOLUME_MARGIN`] and
/// [`Expected::EXTENT_MARGIN`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Expected {
    /// A scan's largest extent along any axis (mm), smallest to largest.
    pub extent_mm: [f64; 2],
    /// Per class name, its volume (ml).
    pub class_ml: BTreeMap<String, [f64; 2]>,
    /// The task's classes together (ml).
    pub total_ml: [f64; 2],
}

impl Expected {
    /// Volumes from this share of the smallest training volume to this multiple of the
    /// largest: room for other people and ages, not for a segmentation several times off.
    pub const VOLUME_MARGIN: [f64; 2] = [0.5, 2.0];
    /// Extents from this share of the smallest to this multiple of the largest.
    pub const EXTENT_MARGIN: [f64; 2] = [0.5, 2.0];

    /// From the training cases' extents (mm), and their class volumes (ml, per case in the
    /// order of `classes`).
    pub fn from_cases(extents: &[f64], volumes: &[Vec<f64>], classes: &[(String, u16)]) -> Self {
        let range = |values: &mut dyn Iterator<Item = f64>, margin: [f64; 2]| {
            let (low, high) = values.fold((f64::INFINITY, 0f64), |(a, b), v| (a.min(v), b.max(v)));
            [low * margin[0], high * margin[1]]
        };
        let class_ml = classes
            .iter()
            .enumerate()
            .map(|(c, (name, _))| {
                let r = range(&mut volumes.iter().map(|v| v[c]), Self::VOLUME_MARGIN);
                (name.clone(), r)
            })
            .collect();
        Expected {
            extent_mm: range(&mut extents.iter().copied(), Self::EXTENT_MARGIN),
            class_ml,
            total_ml: range(
                &mut volumes.iter().map(|v| v.iter().sum()),
                Self::VOLUME_MARGIN,
            ),
        }
    }
}

/// What a model file says about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub format_version: u32,
    /// The mtseg version that wrote the file.
    pub written_by: String,
    pub network: NetworkConfig,
    pub training: TrainConfig,
    pub label_space: LabelSpace,
    pub layout: OutputLayout,
    pub tasks: Vec<TaskMeta>,
    /// Iterations trained, and validation results when there were held-out cases.
    pub iterations: usize,
    #[serde(default)]
    pub validation_dice: Option<f64>,
    /// Per task: whether `segment` keeps only its largest connected object, chosen on the
    /// validation cases when training ends. Empty (no validation cases, or a file written
    /// before the choice existed): every task.
    #[serde(default)]
    pub largest_component: Vec<bool>,
}

impl ModelMeta {
    /// The tasks whose labels `segment` reduces to their largest connected object.
    pub fn largest_component_tasks(&self) -> Vec<usize> {
        (0..self.tasks.len())
            .filter(|&t| self.largest_component.get(t).copied().unwrap_or(true))
            .collect()
    }

    pub fn task_index(&self, name: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t.name == name)
    }

    pub fn task_names(&self) -> Vec<String> {
        self.tasks.iter().map(|t| t.name.clone()).collect()
    }
}

/// The contents of a model or checkpoint file.
#[derive(Clone, Debug)]
pub struct ModelFile {
    pub meta: ModelMeta,
    pub weights: Vec<u8>,
    pub optimizer: Vec<u8>,
    pub trainer_state: Vec<u8>,
}

/// Settings added after a file was written (the U-Net's, for one) take their defaults, which
/// are what that file's network was trained with.
fn with_default_settings(mut meta: serde_json::Value) -> serde_json::Value {
    // (The network's own defaults are filled in as it is read: NetworkConfig's Deserialize.)
    let defaults = [("training", serde_json::to_value(TrainConfig::new()))];
    for (section, default) in defaults {
        let written = meta.get_mut(section).and_then(|s| s.as_object_mut());
        if let (Some(written), Ok(serde_json::Value::Object(default))) = (written, default) {
            for (key, value) in default {
                written.entry(key).or_insert(value);
            }
        }
    }
    meta
}

impl ModelFile {
    pub fn to_bytes(&self) -> Vec<u8> {
        let meta = serde_json::to_vec(&self.meta).expect("metadata serialises");
        let mut out =
            Vec::with_capacity(meta.len() + self.weights.len() + self.optimizer.len() + 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        for section in [&meta, &self.weights, &self.optimizer, &self.trainer_state] {
            out.extend_from_slice(&(section.len() as u64).to_le_bytes());
            out.extend_from_slice(section);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        let bad = |m: &str| Error::invalid(path, m.to_string());
        if bytes.len() < MAGIC.len() + 4 + 4 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(bad("not an mtseg model file (wrong magic)"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
        if version > FORMAT_VERSION {
            return Err(Error::invalid(
                path,
                format!(
                    "model format version {version} is newer than this mtseg reads ({FORMAT_VERSION}): update mtseg"
                ),
            ));
        }
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(bad("checksum mismatch: the file is truncated or corrupted"));
        }
        let mut rest = &body[12..];
        let mut sections = Vec::new();
        for _ in 0..4 {
            if rest.len() < 8 {
                return Err(bad("truncated section table"));
            }
            let len = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")) as usize;
            rest = &rest[8..];
            if len > rest.len() {
                return Err(bad("a section runs past the end of the file"));
            }
            sections.push(rest[..len].to_vec());
            rest = &rest[len..];
        }
        let mut meta: ModelMeta = serde_json::from_slice(&sections[0])
            .map(with_default_settings)
            .and_then(serde_json::from_value)
            .map_err(|e| Error::invalid(path, format!("unreadable model metadata: {e}")))?;
        if meta.format_version != version {
            return Err(bad("metadata and header disagree on the format version"));
        }
        // Read into this version's form: written again (a resumed checkpoint), it is this
        // version's file.
        meta.format_version = FORMAT_VERSION;
        let [_, weights, optimizer, trainer_state] =
            <[Vec<u8>; 4]>::try_from(sections).expect("4 sections");
        Ok(ModelFile {
            meta,
            weights,
            optimizer,
            trainer_state,
        })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::io::atomic::write_bytes(path, &self.to_bytes())
    }

    pub fn load(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Err(Error::invalid(path, "is a folder, expected a model file"));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(path, &bytes)
    }
}
