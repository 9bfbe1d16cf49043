//! Stage 4, data: training cases preprocessed once and held in memory, and the balanced
//! sampler that cuts mini-batches of cubes out of them (see [`sampler`]).

pub mod augment;
pub mod sampler;

use rayon::prelude::*;

use crate::datasets::{Case, LabelSpace, Modality, Task};
use crate::error::{Error, Result};
use crate::io::{Image, LabelMap};
use crate::preprocess::{self, Normalization, Prepared, Preprocessing, normalize};

pub use sampler::{BalancedSampler, Batch, Crops, RandomisedTask, TaskDraw};

/// One preprocessed labelled case: canonical RAS layout, the task's spacing, normalised.
#[derive(Clone, Debug)]
pub struct TrainingVolume {
    pub case: String,
    pub task: usize,
    pub shape: [usize; 3],
    pub spacing: [f64; 3],
    pub image: Vec<f32>,
    /// Joint label ids.
    pub labels: Vec<u16>,
    /// The intensity of "nothing" (the image minimum), used to pad outside the volume.
    pub pad: f32,
    /// For each foreground class of the task (in task order), the indices of its voxels.
    /// Background voxels are drawn by rejection: they are the majority everywhere.
    pub class_voxels: Vec<Vec<u32>>,
    /// The labels images are synthesised from ([`augment::generation_labels`]), for tasks
    /// with domain randomisation; empty otherwise.
    pub generation: Vec<u8>,
}

impl TrainingVolume {
    pub fn index(&self, x: usize, y: usize, z: usize) -> usize {
        x + self.shape[0] * (y + self.shape[1] * z)
    }
}

/// Reads a task's cases once, with their label maps in joint ids.
pub fn read_cases(
    task: &Task,
    task_index: usize,
    ids: &[String],
    space: &LabelSpace,
) -> Result<Vec<(String, Image, LabelMap)>> {
    let table = space.joint_table(task_index);
    ids.par_iter()
        .map(|id| {
            let case: &Case = task
                .case(id)
                .ok_or_else(|| Error::usage(format!("task {}: no case '{id}'", task.name)))?;
            let (image, labels) = task.load_case(case)?;
            let mut labels = labels.ok_or_else(|| {
                Error::usage(format!(
                    "task {}: case '{id}' has no label map, which training needs",
                    task.name
                ))
            })?;
            for l in labels.data.iter_mut() {
                *l = table[*l as usize].expect("label values were checked against dataset.json");
            }
            Ok((id.clone(), image, labels))
        })
        .collect()
}

/// How a task's images will be prepared, measured on its training cases: nnU-Net's median
/// spacing, and for CT a window and statistics measured over the body (see
/// [`Normalization::ct_from_body`]).
pub fn plan_preprocessing(
    modality: Modality,
    cases: &[(String, Image, LabelMap)],
) -> Preprocessing {
    let grids: Vec<_> = cases
        .iter()
        .map(|(_, image, _)| image.grid.clone())
        .collect();
    let target_spacing = preprocess::median_spacing(&grids);
    let normalization = match modality {
        Modality::MR => Normalization::MrRobustZ,
        Modality::CT => {
            // A subsample is enough for percentiles and moments.
            let total: usize = cases.iter().map(|(_, image, _)| image.data.len()).sum();
            let stride = (total / 4_000_000).max(1);
            let body: Vec<f32> = cases
                .iter()
                .flat_map(|(_, image, _)| image.data.iter().step_by(stride).copied())
                .filter(|&v| v > normalize::CT_AIR_HU)
                .collect();
            if body.is_empty() {
                Normalization::default_for(Modality::CT)
            } else {
                Normalization::ct_from_body(&body)
            }
        }
    };
    Preprocessing {
        target_spacing,
        normalization,
    }
}

/// Prepares cases read by [`read_cases`] for training; with `randomised`, with the labels
/// their domain randomisation synthesises images from. A task normalised over its
/// foreground takes it from the label maps.
pub fn prepare_cases(
    task_index: usize,
    cases: Vec<(String, Image, LabelMap)>,
    preprocessing: &Preprocessing,
    space: &LabelSpace,
    randomised: bool,
) -> Vec<TrainingVolume> {
    let classes = space.task_classes(task_index);
    cases
        .into_par_iter()
        .map(|(case, image, labels)| {
            let prepared: Prepared = preprocess::prepare_image(&image, preprocessing);
            let labels = preprocess::prepare_labels(&labels, &prepared);
            let mut class_voxels = vec![Vec::new(); classes.len()];
            for (i, &l) in labels.iter().enumerate() {
                if let Some(c) = classes.iter().position(|&j| j == l) {
                    class_voxels[c].push(i as u32);
                }
            }
            let mut image = prepared.image;
            let (shape, spacing) = (image.grid.shape, image.grid.spacing());
            if preprocessing.normalization.needs_foreground() {
                normalize::normalise_over(
                    &mut image.data,
                    &normalize::foreground_mask(&labels, shape, spacing),
                );
            }
            let pad = image.data.iter().cloned().fold(f32::INFINITY, f32::min);
            let mut volume = TrainingVolume {
                case,
                task: task_index,
                shape,
                spacing,
                pad,
                image: image.data,
                labels,
                class_voxels,
                generation: Vec::new(),
            };
            if randomised {
                volume.generation = augment::generation_labels(&volume, &classes);
            }
            volume
        })
        .collect()
}
