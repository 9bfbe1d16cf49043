//! Helpers shared by the unit tests of several stages.

use crate::datasets::{ClassInfo, LabelSpace, Modality, TaskInfo};
use crate::model::file::FORMAT_VERSION;
use crate::model::{
    ModelMeta, NetworkConfig, OutputLayout, OutputMode, TaskMeta, TrainConfig, TriplanarConfig,
    UNetConfig,
};
use crate::preprocess::{Normalization, Preprocessing};

/// The metadata of a model of two tasks, `A` (MR) and `B` (CT), with the given classes
/// (task index, name, dataset id), 1 mm spacing and MR normalisation for both.
pub fn two_task_meta(
    network: impl Into<NetworkConfig>,
    classes: &[(usize, &str, u16)],
) -> ModelMeta {
    let network = network.into();
    let space = LabelSpace {
        tasks: [("A", Modality::MR), ("B", Modality::CT)]
            .into_iter()
            .map(|(name, modality)| TaskInfo {
                name: name.into(),
                modality,
            })
            .collect(),
        classes: classes
            .iter()
            .map(|&(task, name, dataset_id)| ClassInfo {
                task,
                name: name.into(),
                dataset_id,
            })
            .collect(),
    };
    let layout = OutputLayout::new(&space, network.output_mode());
    let tasks = space
        .tasks
        .iter()
        .enumerate()
        .map(|(t, info)| TaskMeta {
            name: info.name.clone(),
            modality: info.modality,
            classes: classes
                .iter()
                .filter(|c| c.0 == t)
                .map(|&(_, name, id)| (name.to_string(), id))
                .collect(),
            preprocessing: Preprocessing {
                target_spacing: [1.0; 3],
                normalization: Normalization::MrRobustZ,
            },
            expected: None,
        })
        .collect();
    ModelMeta {
        format_version: FORMAT_VERSION,
        written_by: "test".into(),
        network,
        training: TrainConfig::new(),
        tasks,
        label_space: space,
        layout,
        iterations: 0,
        validation_dice: None,
        largest_component: Vec::new(),
    }
}

/// A network small enough for unit tests.
pub fn tiny_network() -> TriplanarConfig {
    TriplanarConfig::new()
        .with_depth(3)
        .with_kernels(4)
        .with_fc_width(8)
        .with_dropout(0.0)
}

/// A tiny two-level U-Net in per-task mode, two tasks of one class each.
pub fn unet_meta() -> ModelMeta {
    let network = UNetConfig::new()
        .with_levels(2)
        .with_width(4)
        .with_output_mode(OutputMode::PerTask);
    two_task_meta(network, &[(0, "a", 1), (1, "b", 1)])
}
