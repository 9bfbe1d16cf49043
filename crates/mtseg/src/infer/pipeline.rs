//! Segmenting a file: read, reorient and resample as the model was trained, normalise,
//! segment densely, bring the label map back to the input's exact grid, write it with the
//! input's header geometry, and describe the result in a JSON sidecar.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::postprocess::keep_largest_component;
use super::{
    Dense, DenseSettings, NetworkInput, Recognition, Segmentation, TaskChoice, dense_engine,
    segment,
};
use crate::datasets::Modality;
use crate::device::Hardware;
use crate::error::{Error, Result};
use crate::io::{self, Image};
use crate::model::{Model, ModelMeta, OutputMode};
use crate::preprocess::{self, Preprocessing, normalize::percentiles};

/// A model ready to segment, on the CPU kernels or on a GPU.
pub struct Segmenter {
    pub meta: ModelMeta,
    pub engine: Box<dyn Dense + Send>,
    pub settings: DenseSettings,
    pub source: PathBuf,
    /// Keep only each task's largest connected object ([`keep_largest_component`]) for the
    /// tasks whose validation cases chose it (`ModelMeta::largest_component_tasks`).
    pub largest_component: bool,
    /// Tasks whose classes also get a pass over the scan mirrored left-right, averaged in
    /// (test-time augmentation; left-right symmetric anatomy only).
    pub mirrored_tasks: Vec<usize>,
}

impl Segmenter {
    /// Loads a model file to segment on `hardware`.
    pub fn load(path: &Path, hardware: Hardware) -> Result<Self> {
        Segmenter::new(Model::load_cpu(path)?, path, hardware)
    }

    /// The model shipped with mtseg (models/README.md).
    pub fn shipped(hardware: Hardware) -> Result<Self> {
        Segmenter::new(
            crate::model::load_shipped()?,
            Path::new(crate::model::SHIPPED_MODEL),
            hardware,
        )
    }

    pub fn new(model: Model, source: &Path, hardware: Hardware) -> Result<Self> {
        let (engine, settings) = dense_engine(&model.net, hardware, &hardware.burn_device()?);
        Ok(Segmenter {
            engine,
            meta: model.meta,
            settings,
            source: source.to_path_buf(),
            largest_component: true,
            mirrored_tasks: Vec::new(),
        })
    }

    /// The index of a task by name, with a helpful error listing the model's tasks.
    pub fn task_index(&self, name: &str) -> Result<usize> {
        self.meta.task_index(name).ok_or_else(|| {
            Error::usage(format!(
                "the model knows no task '{name}'; its tasks are: {}",
                self.meta.task_names().join(", ")
            ))
        })
    }
}

/// What `segment` did with one file (also written as the JSON sidecar).
#[derive(Clone, Debug, Serialize)]
pub struct SegmentReport {
    pub input: PathBuf,
    pub output: PathBuf,
    pub model: PathBuf,
    /// The task whose classes the labels belong to, when a single one is clear.
    pub task: Option<String>,
    /// `"dataset"`: values are the task's own dataset.json ids; `"joint"`: values are the
    /// model's joint label space (background 0, then every task's classes).
    pub label_values: &'static str,
    /// Label value -> class name, for every value the output can hold.
    pub labels: BTreeMap<u16, String>,
    /// How the task was chosen: `given` (--task), `network` (the union softmax decided every
    /// voxel), or `task head` (per-task output mode).
    pub task_selection: &'static str,
    /// Tasks whose classes averaged a pass over the scan mirrored left-right (test-time
    /// augmentation, `--mirror`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrored_left_right: Vec<String>,
    pub recognition: Option<RecognitionReport>,
    /// Voxels given a class of each task (joint decisions), by task name.
    pub voxels_per_task: BTreeMap<String, usize>,
    /// What was done to the network's labels before they were written, per task (`None`:
    /// nothing).
    pub postprocessing: Option<Vec<String>>,
    /// Voxels (on the model's grid) that post-processing set to background.
    pub voxels_removed_by_postprocessing: usize,
    /// Mean probability of the winning class, before post-processing.
    pub mean_probability: f32,
    pub seconds: f64,
    pub written_by: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct RecognitionReport {
    pub task: String,
    pub confidence: f32,
    pub probabilities: BTreeMap<String, f32>,
}

/// Where the sidecar of an output goes: `seg.nii.gz` -> `seg.json`.
pub fn sidecar_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(".nii.gz")
        .or_else(|| name.strip_suffix(".nii"))
        .unwrap_or(&name);
    output.with_file_name(format!("{stem}.json"))
}

/// CT images hold Hounsfield units: air at -1000. MR intensities are never that negative.
fn looks_like_ct(image: &Image) -> bool {
    percentiles(&image.data, &[1.0])[0] < -500.0
}

/// A network-layout segmentation with the preprocessing that made it.
struct Run {
    segmentation: Segmentation,
    prepared: preprocess::Prepared,
    preprocessing: Preprocessing,
}

fn run(
    segmenter: &Segmenter,
    image: &Image,
    preprocessing: &Preprocessing,
    choice: TaskChoice,
) -> Run {
    let prepared = preprocess::prepare_image(image, preprocessing);
    let pad = prepared
        .image
        .data
        .iter()
        .cloned()
        .fold(f32::INFINITY, f32::min);
    let input = NetworkInput {
        image: &prepared.image.data,
        shape: prepared.image.grid.shape,
        pad,
    };
    let segmentation = segment(
        segmenter.engine.as_ref(),
        &segmenter.meta.layout,
        &input,
        choice,
        &segmenter.settings,
        &segmenter.mirrored_tasks,
    );
    Run {
        segmentation,
        prepared,
        preprocessing: preprocessing.clone(),
    }
}

fn mean_foreground_probability(s: &Segmentation) -> f32 {
    let (sum, n) = s
        .labels
        .iter()
        .zip(&s.probability)
        .filter(|(l, _)| **l > 0)
        .fold((0f64, 0usize), |(a, n), (_, p)| (a + *p as f64, n + 1));
    if n == 0 { 0.0 } else { (sum / n as f64) as f32 }
}

/// Segments one image file into `output`, writes the sidecar (and the probability map when
/// asked) and returns the report.
pub fn segment_file(
    segmenter: &Segmenter,
    input: &Path,
    output: &Path,
    task: Option<usize>,
    probabilities: Option<&Path>,
) -> Result<SegmentReport> {
    let started = Instant::now();
    let image = io::read_image(input)?;
    let meta = &segmenter.meta;
    let (result, selection) = match task {
        Some(t) => (
            run(
                segmenter,
                &image,
                &meta.tasks[t].preprocessing,
                TaskChoice::Task(t),
            ),
            "given",
        ),
        None => (
            recognise(segmenter, &image),
            match meta.layout.mode {
                OutputMode::Union => "network",
                OutputMode::PerTask => "task head",
            },
        ),
    };
    let Run {
        mut segmentation,
        prepared,
        ..
    } = result;
    let space = &meta.label_space;
    let postprocessed = if segmenter.largest_component {
        meta.largest_component_tasks()
    } else {
        Vec::new()
    };
    let removed = keep_largest_component(
        &mut segmentation.labels,
        prepared.image.grid.shape,
        space,
        &postprocessed,
    );
    let mut voxels_per_task = BTreeMap::new();
    for t in &space.tasks {
        voxels_per_task.insert(t.name.clone(), 0usize);
    }
    for &l in segmentation.labels.iter().filter(|&&l| l > 0) {
        if let Some(t) = space.task_of(l) {
            *voxels_per_task
                .get_mut(&space.tasks[t].name)
                .expect("every task listed") += 1;
        }
    }
    let mean_probability =
        segmentation.probability.iter().sum::<f32>() / segmentation.probability.len().max(1) as f32;
    let joint = preprocess::restore_labels(segmentation.labels, &prepared);
    // Dataset ids when one task is clear, joint ids otherwise.
    let (values, label_values, labels): (Vec<u16>, _, BTreeMap<u16, String>) =
        match segmentation.task {
            Some(t) => (
                joint.iter().map(|&j| space.dataset_id(j)).collect(),
                "dataset",
                std::iter::once((0, "background".to_string()))
                    .chain(
                        meta.tasks[t]
                            .classes
                            .iter()
                            .map(|(name, id)| (*id, name.clone())),
                    )
                    .collect(),
            ),
            None => (
                joint,
                "joint",
                (0..space.num_classes() as u16)
                    .map(|j| (j, space.joint_name(j)))
                    .collect(),
            ),
        };
    io::write_labels(output, &image.with_data(values))?;
    if let Some(path) = probabilities {
        let restored = preprocess::restore_values(segmentation.probability, &prepared);
        io::write_image(path, &image.with_data(restored))?;
    }
    let recognition = segmentation
        .recognition
        .as_ref()
        .map(|r: &Recognition| RecognitionReport {
            task: meta.tasks[r.task].name.clone(),
            confidence: r.mean_probabilities[r.task],
            probabilities: meta
                .tasks
                .iter()
                .zip(&r.mean_probabilities)
                .map(|(t, p)| (t.name.clone(), *p))
                .collect(),
        });
    let report = SegmentReport {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        model: segmenter.source.clone(),
        task: segmentation.task.map(|t| meta.tasks[t].name.clone()),
        label_values,
        labels,
        task_selection: selection,
        mirrored_left_right: segmenter
            .mirrored_tasks
            .iter()
            .map(|&t| meta.tasks[t].name.clone())
            .collect(),
        recognition,
        voxels_per_task,
        postprocessing: (!postprocessed.is_empty()).then(|| {
            postprocessed
                .iter()
                .map(|&t| format!("{}: largest connected object", meta.tasks[t].name))
                .collect()
        }),
        voxels_removed_by_postprocessing: removed,
        mean_probability,
        seconds: started.elapsed().as_secs_f64(),
        written_by: format!("mtseg {}", env!("CARGO_PKG_VERSION")),
    };
    io::atomic::write_json(&sidecar_path(output), &report)?;
    Ok(report)
}

/// Without `--task`: the candidate tasks are those of the image's modality (CT is told by
/// its Hounsfield units). Each distinct preprocessing among them is tried, and the run whose
/// foreground the network is most sure of wins. In per-task mode the task head then names
/// the task, and the image is segmented again with that task's preprocessing if it differs.
fn recognise(segmenter: &Segmenter, image: &Image) -> Run {
    let meta = &segmenter.meta;
    let modality = if looks_like_ct(image) {
        Modality::CT
    } else {
        Modality::MR
    };
    let mut candidates: Vec<usize> = (0..meta.tasks.len())
        .filter(|&t| meta.tasks[t].modality == modality)
        .collect();
    if candidates.is_empty() {
        candidates = (0..meta.tasks.len()).collect();
    }
    let mut preprocessings: Vec<&Preprocessing> = Vec::new();
    for &t in &candidates {
        let p = &meta.tasks[t].preprocessing;
        if !preprocessings.contains(&p) {
            preprocessings.push(p);
        }
    }
    let best = preprocessings
        .into_iter()
        .map(|p| run(segmenter, image, p, TaskChoice::Automatic))
        .max_by(|a, b| {
            mean_foreground_probability(&a.segmentation)
                .total_cmp(&mean_foreground_probability(&b.segmentation))
        })
        .expect("a model has at least one task");
    match (meta.layout.mode, best.segmentation.task) {
        (OutputMode::PerTask, Some(t)) if meta.tasks[t].preprocessing != best.preprocessing => {
            let recognition = best.segmentation.recognition.clone();
            let mut again = run(
                segmenter,
                image,
                &meta.tasks[t].preprocessing,
                TaskChoice::Task(t),
            );
            again.segmentation.recognition = recognition;
            again
        }
        _ => best,
    }
}
