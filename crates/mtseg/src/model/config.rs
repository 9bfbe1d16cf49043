//! Sizes of the network and settings of its training, with the `paper` and `small` presets.

use std::collections::BTreeMap;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the class layer covers several tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputMode {
    /// The paper's single softmax over background plus every task's classes. Right when the
    /// tasks never see the same anatomy.
    Union,
    /// One softmax group per task (its own background plus its classes) over the shared
    /// trunk, the loss only on the group of the sample's task, and a task head that
    /// recognises the task. For tasks that label the same anatomy differently.
    PerTask,
}

impl OutputMode {
    pub fn has_task_head(self) -> bool {
        self == OutputMode::PerTask
    }
}

/// How the tasks of a mini-batch share the loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskShare {
    /// Every task present weighs the same, however many samples it has: more samples make a
    /// task's share less noisy, not larger.
    Equal,
    /// A task weighs by its share of the samples (`samples_by_task`), as if every sample were
    /// one term of the mean: a task with one training case can be given a small share.
    Samples,
}

impl TaskShare {
    /// Each of `count` tasks' share of a mini-batch whose samples have the tasks `tasks`;
    /// absent tasks get 0, and the shares sum to 1.
    pub fn shares(self, tasks: &[usize], count: usize) -> Vec<f64> {
        let samples: Vec<usize> = (0..count)
            .map(|t| tasks.iter().filter(|&&x| x == t).count())
            .collect();
        let present = samples.iter().filter(|&&n| n > 0).count();
        samples
            .iter()
            .map(|&n| match (n, self) {
                (0, _) => 0.0,
                (_, TaskShare::Equal) => 1.0 / present as f64,
                (_, TaskShare::Samples) => n as f64 / tasks.len() as f64,
            })
            .collect()
    }
}

/// Which network segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// The paper's network: three orthogonal patches, valid convolutions, a shared head.
    Triplanar,
    /// A 2.5-D U-Net (see [`crate::model::unet`]): whole slices with their neighbours, run
    /// over all three orientations and averaged. Stronger on the real brain data. Written
    /// `u_net`; `unet`, the preset's name, reads too.
    #[serde(alias = "unet")]
    UNet,
}

/// The paper's triplanar network: its receptive field per orientation is `1 + 2 * depth`.
#[derive(Config, Debug, PartialEq)]
pub struct TriplanarConfig {
    /// Convolution layers per orientation branch (paper: 25).
    #[config(default = 25)]
    pub depth: usize,
    /// Kernels per convolution layer (paper: 32).
    #[config(default = 32)]
    pub kernels: usize,
    /// Width of the two fully connected layers (paper: 256).
    #[config(default = 256)]
    pub fc_width: usize,
    /// Dropout after each fully connected layer (paper: 0.5).
    #[config(default = 0.5)]
    pub dropout: f64,
    #[config(default = "OutputMode::Union")]
    pub output_mode: OutputMode,
}

impl TriplanarConfig {
    /// Patch side that gives one output voxel: the receptive field.
    pub fn patch_size(&self) -> usize {
        1 + 2 * self.depth
    }
}

/// The 2.5-D U-Net (see [`crate::model::unet`]).
#[derive(Config, Debug, PartialEq)]
pub struct UNetConfig {
    /// Resolution levels (one fewer 2x2 poolings).
    #[config(default = 4)]
    pub levels: usize,
    /// Feature maps at full resolution, doubled at each level below.
    #[config(default = 16)]
    pub width: usize,
    #[config(default = "OutputMode::Union")]
    pub output_mode: OutputMode,
}

impl UNetConfig {
    /// Slice sides must be a multiple of this (one halving per pooling).
    pub fn multiple(&self) -> usize {
        1 << (self.levels.max(1) - 1)
    }
}

/// The network: its architecture, carrying that architecture's own sizes. Written
/// `architecture = "u_net"` (or `"triplanar"`, the default) with the architecture's fields
/// beside it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "architecture", rename_all = "snake_case")]
pub enum NetworkConfig {
    Triplanar(TriplanarConfig),
    UNet(UNetConfig),
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig::Triplanar(TriplanarConfig::new())
    }
}

impl From<TriplanarConfig> for NetworkConfig {
    fn from(config: TriplanarConfig) -> Self {
        NetworkConfig::Triplanar(config)
    }
}

impl From<UNetConfig> for NetworkConfig {
    fn from(config: UNetConfig) -> Self {
        NetworkConfig::UNet(config)
    }
}

impl NetworkConfig {
    pub fn architecture(&self) -> Architecture {
        match self {
            NetworkConfig::Triplanar(_) => Architecture::Triplanar,
            NetworkConfig::UNet(_) => Architecture::UNet,
        }
    }

    pub fn output_mode(&self) -> OutputMode {
        match self {
            NetworkConfig::Triplanar(c) => c.output_mode,
            NetworkConfig::UNet(c) => c.output_mode,
        }
    }

    pub fn set_output_mode(&mut self, mode: OutputMode) {
        match self {
            NetworkConfig::Triplanar(c) => c.output_mode = mode,
            NetworkConfig::UNet(c) => c.output_mode = mode,
        }
    }

    /// The triplanar network's sizes, if this is the triplanar network.
    pub fn as_triplanar(&self) -> Option<&TriplanarConfig> {
        match self {
            NetworkConfig::Triplanar(c) => Some(c),
            NetworkConfig::UNet(_) => None,
        }
    }

    /// `architecture` with its default sizes.
    pub fn default_for(architecture: Architecture) -> Self {
        match architecture {
            Architecture::Triplanar => TriplanarConfig::new().into(),
            Architecture::UNet => UNetConfig::new().into(),
        }
    }
}

/// The network section as written, in this version's form or a model file's of before the
/// configs were split by architecture (every field of both beside each other, the U-Net's
/// prefixed `unet_`, no `architecture` in files older than the U-Net). The fields of the
/// other architecture are ignored: old files carry them all. Settings files are checked
/// for them before this ([`Preset::named_or_file`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenNetwork {
    architecture: Option<Architecture>,
    depth: Option<usize>,
    kernels: Option<usize>,
    fc_width: Option<usize>,
    dropout: Option<f64>,
    output_mode: Option<OutputMode>,
    #[serde(alias = "unet_levels")]
    levels: Option<usize>,
    #[serde(alias = "unet_width")]
    width: Option<usize>,
}

impl<'de> Deserialize<'de> for NetworkConfig {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let w = WrittenNetwork::deserialize(deserializer)?;
        Ok(match w.architecture.unwrap_or(Architecture::Triplanar) {
            Architecture::Triplanar => {
                let d = TriplanarConfig::new();
                TriplanarConfig {
                    depth: w.depth.unwrap_or(d.depth),
                    kernels: w.kernels.unwrap_or(d.kernels),
                    fc_width: w.fc_width.unwrap_or(d.fc_width),
                    dropout: w.dropout.unwrap_or(d.dropout),
                    output_mode: w.output_mode.unwrap_or(d.output_mode),
                }
                .into()
            }
            Architecture::UNet => {
                let d = UNetConfig::new();
                UNetConfig {
                    levels: w.levels.unwrap_or(d.levels),
                    width: w.width.unwrap_or(d.width),
                    output_mode: w.output_mode.unwrap_or(d.output_mode),
                }
                .into()
            }
        })
    }
}

/// How training runs.
#[derive(Config, Debug, PartialEq)]
pub struct TrainConfig {
    /// Side k of the cube of output voxels per sample: each orientation gets k patches of
    /// (P + k - 1)^2. k = 1 is the paper's sampling (one voxel, three P x P patches).
    #[config(default = 8)]
    pub tile: usize,
    /// Samples (cubes, or U-Net crops) per task in each mini-batch.
    #[config(default = 4)]
    pub samples_per_task: usize,
    /// Samples per mini-batch for the tasks named here instead (`BrainTissueIXI = 8`): more
    /// for a task with many classes, fewer for one with a single training case. What that
    /// does to a task's share of the loss is `task_share`'s choice.
    #[config(default = "BTreeMap::new()")]
    pub samples_by_task: BTreeMap<String, usize>,
    /// How the tasks of a mini-batch share the loss: `equal` (every task the same) or
    /// `samples` (by their samples, so `samples_by_task` sets the shares).
    #[config(default = "TaskShare::Equal")]
    pub task_share: TaskShare,
    #[config(default = 2000)]
    pub iterations: usize,
    #[config(default = 1e-3)]
    pub learning_rate: f64,
    #[config(default = 0.9)]
    pub beta1: f64,
    #[config(default = 0.999)]
    pub beta2: f64,
    #[config(default = 1e-8)]
    pub epsilon: f64,
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// Learning rate decays as (1 - t / iterations)^power (nnU-Net's "poly" schedule).
    #[config(default = 0.9)]
    pub lr_decay_power: f64,
    /// How far the loss carries the paper's class balance from the cube centres to all the
    /// voxels of the cubes: within a task, a label with n voxels in the batch weighs
    /// n^-balance each. 0: every voxel weighs the same; 1: every label of a task gets the
    /// same total weight (the paper's balance, which over-segments thin structures).
    #[config(default = 0.0)]
    pub class_balance: f64,
    /// Weight of a soft Dice term added to the cross-entropy of the cubes: per task, 1 - the
    /// mean soft Dice of its classes (background left out, as in nnU-Net's loss) over the
    /// batch's voxels of the task, times the task's share. Dice is what validation measures,
    /// and the term weighs a thin structure as much as a large one. (The U-Net's crops always
    /// carry a Dice term, background included, at weight 1.)
    #[config(default = 0.0)]
    pub dice_weight: f64,
    /// Weight of the task-recognition loss (per-task output mode).
    #[config(default = 0.2)]
    pub task_loss_weight: f64,
    /// Validation Dice on held-out cases every this many iterations (0: never).
    #[config(default = 100)]
    pub validate_every: usize,
    /// Stop when validation mean Dice has not improved for this many validations (0: never).
    #[config(default = 5)]
    pub patience: usize,
    /// Checkpoint every this many iterations.
    #[config(default = 100)]
    pub checkpoint_every: usize,
    /// Augmentation: intensity scale (1 +- this) and shift (+- this, in z-score units).
    #[config(default = 0.1)]
    pub intensity_jitter: f64,
    /// Augmentation: rotation about each axis within +- this many degrees.
    #[config(default = 10.0)]
    pub rotation_degrees: f64,
    /// Augmentation: isotropic scaling within 1 +- this.
    #[config(default = 0.1)]
    pub scaling: f64,
    /// Augmentation: mirror left-right (only for anatomy that is left-right symmetric).
    #[config(default = false)]
    pub flip_left_right: bool,
    /// Augmentation (U-Net crops): this share of the crops is blurred by a Gaussian, so the
    /// network also segments scans that were resampled (interpolation blurs: 2 -> 1 -> 2 mm
    /// is about sigma 0.5 voxel) or come from a scanner with a wider point-spread function.
    #[config(default = 0.0)]
    pub blur_probability: f64,
    /// Augmentation (U-Net crops): the blur's sigma is drawn in [0, this] voxels.
    #[config(default = 1.0)]
    pub blur_sigma: f64,
    /// U-Net: the tasks whose crops are domain randomised (`data::augment`: deformed,
    /// acquired again at a random resolution with a bias field, noise and gamma, sometimes
    /// skull-stripped, normalised over the foreground), each with the share of its crops
    /// synthesised from its label maps instead of cut from its scans (`BrainTissueIXI = 0.5`).
    /// MR tasks only; their images are then normalised over their foreground
    /// (`MrForegroundZ`). The crops' rotation and scaling are `rotation_degrees` and
    /// `scaling`.
    #[config(default = "BTreeMap::new()")]
    pub domain_randomisation: BTreeMap<String, f64>,
    /// U-Net: side of the square crops it trains on (a multiple of `unet_multiple`); a
    /// sample is one crop through the drawn voxel, and `tile` is not used.
    #[config(default = 96)]
    pub crop: usize,
    #[config(default = 1)]
    pub seed: u64,
}

impl TrainConfig {
    /// Samples per mini-batch of the task called `task`.
    pub fn samples_of(&self, task: &str) -> usize {
        self.samples_by_task
            .get(task)
            .copied()
            .unwrap_or(self.samples_per_task)
    }
}

/// A named set of network and training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preset {
    pub network: NetworkConfig,
    pub training: TrainConfig,
}

impl Preset {
    /// The paper's network and sampling: 25 layers of 32 kernels, fully connected 256,
    /// dropout 0.5, one voxel per sample, 210 samples a batch over three tasks.
    pub fn paper() -> Self {
        Preset {
            network: TriplanarConfig::new().into(),
            training: TrainConfig::new()
                .with_tile(1)
                .with_samples_per_task(70)
                .with_iterations(20000)
                .with_validate_every(500)
                .with_checkpoint_every(500),
        }
    }

    /// A network a 2-core CPU trains in a minute or two: 8 layers (receptive field 17) of
    /// 16 kernels, fully connected 64, trained on cubes of 8^3 voxels.
    pub fn small() -> Self {
        Preset {
            network: TriplanarConfig::new()
                .with_depth(8)
                .with_kernels(16)
                .with_fc_width(64)
                .with_dropout(0.2)
                .into(),
            training: TrainConfig::new()
                .with_tile(8)
                .with_samples_per_task(4)
                .with_iterations(300)
                .with_learning_rate(3e-3)
                .with_class_balance(0.5)
                .with_validate_every(100)
                .with_checkpoint_every(100),
        }
    }

    /// The 2.5-D U-Net: four levels from 16 feature maps, crops of 96^2, CE + Dice loss.
    pub fn unet() -> Self {
        Preset {
            network: UNetConfig::new()
                .with_output_mode(OutputMode::PerTask)
                .into(),
            training: TrainConfig::new()
                .with_samples_per_task(4)
                .with_iterations(2000)
                .with_learning_rate(2e-3)
                .with_blur_probability(0.5)
                .with_validate_every(250)
                .with_checkpoint_every(250),
        }
    }

    /// `paper`, `small`, `unet`, or a JSON/TOML file whose fields override the `small` preset
    /// (`{"network": {"depth": 12}, "training": {"tile": 4}}`; the base can be chosen with a
    /// top-level `"preset": "paper"`).
    pub fn named_or_file(name: &str) -> Result<Self> {
        match name {
            "paper" => Ok(Preset::paper()),
            "small" => Ok(Preset::small()),
            "unet" => Ok(Preset::unet()),
            path => Preset::from_file(std::path::Path::new(path)),
        }
    }

    fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let overrides: serde_json::Value = if path.extension().is_some_and(|e| e == "toml") {
            let value: toml::Value = toml::from_str(&text)
                .map_err(|e| Error::invalid(path, format!("not valid TOML: {e}")))?;
            serde_json::to_value(value).map_err(|e| Error::invalid(path, e.to_string()))?
        } else {
            serde_json::from_str(&text)
                .map_err(|e| Error::invalid(path, format!("not valid JSON: {e}")))?
        };
        let base = match overrides.get("preset").and_then(|p| p.as_str()) {
            Some("paper") => Preset::paper(),
            Some("small") | None => Preset::small(),
            Some("unet") => Preset::unet(),
            Some(other) => {
                return Err(Error::invalid(
                    path,
                    format!("unknown preset '{other}' (paper, small or unet)"),
                ));
            }
        };
        let mut merged = serde_json::to_value(&base).expect("presets serialise");
        // Another architecture than the base's starts from that architecture's defaults.
        let architecture = overrides.get("network").and_then(|n| n.get("architecture"));
        if let Some(architecture) = architecture {
            let architecture: Architecture = serde_json::from_value(architecture.clone())
                .map_err(|e| Error::invalid(path, format!("bad setting: {e}")))?;
            if architecture != base.network.architecture() {
                merged["network"] = serde_json::to_value(NetworkConfig::default_for(architecture))
                    .expect("configs serialise");
            }
        }
        for section in ["network", "training"] {
            if let Some(fields) = overrides.get(section).and_then(|s| s.as_object()) {
                for (key, value) in fields {
                    // The U-Net's fields before the configs were split by architecture.
                    let key = match (section, key.as_str()) {
                        ("network", "unet_levels") => "levels",
                        ("network", "unet_width") => "width",
                        (_, key) => key,
                    };
                    let Some(known) = merged[section].as_object() else {
                        unreachable!("presets serialise to objects")
                    };
                    if !known.contains_key(key) {
                        let names: Vec<&str> = known.keys().map(String::as_str).collect();
                        return Err(Error::invalid(
                            path,
                            format!(
                                "unknown setting {section}.{key} (known: {})",
                                names.join(", ")
                            ),
                        ));
                    }
                    merged[section][key] = value.clone();
                }
            }
        }
        let preset: Preset = serde_json::from_value(merged)
            .map_err(|e| Error::invalid(path, format!("bad setting: {e}")))?;
        preset.validate().map_err(|m| Error::invalid(path, m))?;
        Ok(preset)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.training;
        match &self.network {
            NetworkConfig::Triplanar(n) => {
                if n.depth == 0 || n.kernels == 0 || n.fc_width == 0 {
                    return Err("depth, kernels and fc_width must be at least 1".into());
                }
                if !(0.0..1.0).contains(&n.dropout) {
                    return Err("dropout must be in [0, 1)".into());
                }
                if !t.domain_randomisation.is_empty() {
                    return Err("domain_randomisation is for the U-Net's crops".into());
                }
            }
            NetworkConfig::UNet(n) => {
                if n.levels == 0 || n.levels > 6 || n.width == 0 {
                    return Err("levels must be 1 to 6 and width at least 1".into());
                }
                if t.crop == 0 || !t.crop.is_multiple_of(n.multiple()) {
                    return Err(format!(
                        "crop must be a positive multiple of {} for {} U-Net levels",
                        n.multiple(),
                        n.levels
                    ));
                }
            }
        }
        if t.tile == 0 || t.samples_per_task == 0 || t.samples_by_task.values().any(|&n| n == 0) {
            return Err("tile, samples_per_task and samples_by_task must be at least 1".into());
        }
        if t.learning_rate <= 0.0 || !t.learning_rate.is_finite() {
            return Err("learning_rate must be positive".into());
        }
        // A negative weight would reward a worse Dice.
        if t.dice_weight < 0.0 || !t.dice_weight.is_finite() {
            return Err("dice_weight must be 0 (off) or positive".into());
        }
        if !(0.0..=1.0).contains(&t.blur_probability) || !(0.0..=4.0).contains(&t.blur_sigma) {
            return Err(
                "blur_probability must be in [0, 1] and blur_sigma in [0, 4] voxels".into(),
            );
        }
        if t.domain_randomisation
            .values()
            .any(|share| !(0.0..=1.0).contains(share))
        {
            return Err("domain_randomisation's synthetic shares must be in [0, 1]".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_preset_matches_the_paper() {
        let p = Preset::paper();
        let NetworkConfig::Triplanar(n) = &p.network else {
            panic!("the paper's network is triplanar")
        };
        assert_eq!(n.depth, 25);
        assert_eq!(n.patch_size(), 51);
        assert_eq!(n.kernels, 32);
        assert_eq!(n.fc_width, 256);
        assert_eq!(n.dropout, 0.5);
        assert_eq!(p.training.tile, 1);
        assert_eq!(p.training.samples_per_task * 3, 210);
    }

    #[test]
    fn a_file_overrides_a_preset_and_rejects_unknown_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "preset = \"paper\"\n[training]\ntile = 4\n").unwrap();
        let p = Preset::named_or_file(path.to_str().unwrap()).unwrap();
        assert_eq!(p.network, Preset::paper().network);
        assert_eq!(p.training.tile, 4);
        let bad = dir.path().join("b.json");
        std::fs::write(&bad, r#"{"network": {"depht": 3}}"#).unwrap();
        let err = Preset::named_or_file(bad.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("network.depht"), "{err}");
        let blur = dir.path().join("blur.toml");
        std::fs::write(
            &blur,
            "preset = \"unet\"\n[training]\nblur_probability = 1.5\n",
        )
        .unwrap();
        let err = Preset::named_or_file(blur.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("blur_probability"), "{err}");
        let dice = dir.path().join("dice.toml");
        std::fs::write(&dice, "[training]\ndice_weight = -1.0\n").unwrap();
        let err = Preset::named_or_file(dice.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("dice_weight"), "{err}");
    }

    #[test]
    fn samples_by_task_override_samples_per_task_for_the_named_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let text = "preset = \"unet\"\n[training.samples_by_task]\nBrain = 8\nCT = 2\n";
        std::fs::write(&path, text).unwrap();
        let t = Preset::named_or_file(path.to_str().unwrap())
            .unwrap()
            .training;
        assert_eq!((t.samples_of("Brain"), t.samples_of("CT")), (8, 2));
        assert_eq!(t.samples_of("Hippocampus"), t.samples_per_task);
        std::fs::write(&path, "[training.samples_by_task]\nBrain = 0\n").unwrap();
        let err = Preset::named_or_file(path.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("samples_by_task"), "{err}");
    }

    /// Model files written before the configs were split by architecture hold every field of
    /// both side by side (and, before the U-Net, no architecture): they read as the network
    /// they describe. The new form reads back as written.
    #[test]
    fn old_and_new_network_sections_read_as_their_architecture() {
        let read = |json: &str| serde_json::from_str::<NetworkConfig>(json).unwrap();
        let unet = read(
            r#"{"architecture": "u_net", "depth": 25, "kernels": 32, "fc_width": 256,
                "dropout": 0.5, "output_mode": "per_task", "unet_levels": 4, "unet_width": 24}"#,
        );
        assert_eq!(
            unet,
            UNetConfig::new()
                .with_width(24)
                .with_output_mode(OutputMode::PerTask)
                .into()
        );
        let triplanar = read(
            r#"{"architecture": "triplanar", "depth": 12, "kernels": 16, "fc_width": 64,
                "dropout": 0.2, "output_mode": "union", "unet_levels": 4, "unet_width": 16}"#,
        );
        let expected: NetworkConfig = TriplanarConfig::new()
            .with_depth(12)
            .with_kernels(16)
            .with_fc_width(64)
            .with_dropout(0.2)
            .into();
        assert_eq!(triplanar, expected);
        let before_the_unet = read(
            r#"{"depth": 12, "kernels": 16, "fc_width": 64, "dropout": 0.2,
                "output_mode": "union"}"#,
        );
        assert_eq!(before_the_unet, expected);
        for config in [unet, expected] {
            let written = serde_json::to_string(&config).unwrap();
            assert_eq!(read(&written), config, "{written}");
        }
        assert!(serde_json::from_str::<NetworkConfig>(r#"{"depht": 3}"#).is_err());
    }

    /// A settings file names only its architecture's fields; another architecture starts
    /// from that architecture's defaults.
    #[test]
    fn a_settings_file_may_switch_the_architecture_but_not_mix_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[network]\narchitecture = \"unet\"\nwidth = 8\n").unwrap();
        let p = Preset::named_or_file(path.to_str().unwrap()).unwrap();
        assert_eq!(p.network, UNetConfig::new().with_width(8).into());
        std::fs::write(&path, "preset = \"unet\"\n[network]\ndepth = 8\n").unwrap();
        let err = Preset::named_or_file(path.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("network.depth"), "{err}");
        assert!(err.to_string().contains("width"), "{err}");
    }

    /// The settings files that the model card and the results' commands train with still load.
    #[test]
    fn the_repositorys_settings_files_load() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let (unet, triplanar) = (Architecture::UNet, Architecture::Triplanar);
        for (file, architecture, blur) in [
            ("models/unet.toml", unet, 0.5),
            ("models/unet-finetune.toml", unet, 0.5),
            ("models/triplanar.toml", triplanar, 0.0),
            ("docs/results/real-data.toml", triplanar, 0.0),
            ("docs/results/unet-brain-only.toml", unet, 0.5),
            ("docs/results/unet-hippocampus-only.toml", unet, 0.5),
            ("docs/results/unet-brain-hippocampus.toml", unet, 0.5),
        ] {
            let p = Preset::named_or_file(root.join(file).to_str().unwrap())
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(p.network.architecture(), architecture, "{file}");
            assert_eq!(p.training.blur_probability, blur, "{file}");
        }
        // The fine-tuning starts from unet.toml's model, so it must describe the same network.
        let network = |file: &str| {
            Preset::named_or_file(root.join(file).to_str().unwrap())
                .unwrap()
                .network
        };
        assert_eq!(
            network("models/unet-finetune.toml"),
            network("models/unet.toml")
        );
    }
}
