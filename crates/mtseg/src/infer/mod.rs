//! Stage 7, infer: dense segmentation of whole volumes, from network layout back to the
//! input's own grid.

pub mod pipeline;
pub mod postprocess;
pub mod quality;
pub mod statistics;

use serde::Serialize;

use crate::engine::{Dense, DenseSettings, NetworkInput};
use crate::model::output::task_probabilities;
use crate::model::{OutputLayout, OutputMode};
pub use pipeline::{
    SegmentReport, Segmentation, Segmenter, SegmenterBuilder, Source, Summary, segment_and_write,
    segment_file, sidecar_path,
};
pub use quality::Quality;

/// Which classes compete for each voxel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskChoice {
    /// Every class of every task (the paper's behaviour in union mode); in per-task mode the
    /// task head recognises the task and its group decides.
    Automatic,
    /// Only this task's classes and background.
    Task(usize),
}

/// A label map in network layout with its confidence.
#[derive(Clone, Debug)]
pub struct NetworkLabels {
    /// Joint label ids.
    pub labels: Vec<u16>,
    /// Probability of the winning class.
    pub probability: Vec<f32>,
    /// The task the labels belong to, when one was chosen or recognised.
    pub task: Option<usize>,
    /// How the task was decided.
    pub recognition: Option<Recognition>,
}

/// The task head's verdict (per-task output mode without `--task`).
#[derive(Clone, Debug, Serialize)]
pub struct Recognition {
    pub task: usize,
    /// Mean task probability over the volume, per task.
    pub mean_probabilities: Vec<f32>,
}

/// Segments a volume in network layout. The classes of `mirrored_tasks` also average a pass
/// over the volume mirrored left-right (`mirrored_logits`; test-time augmentation).
pub fn segment<E: Dense + ?Sized>(
    engine: &E,
    layout: &OutputLayout,
    input: &NetworkInput,
    choice: TaskChoice,
    settings: &DenseSettings,
    mirrored_tasks: &[usize],
) -> NetworkLabels {
    let total: usize = input.shape.iter().product();
    let c = engine.logit_channels();
    // Candidate groups: one decision per group and voxel; per-task mode without a task keeps
    // every task's decision until the task head has seen the whole volume.
    let groups: Vec<Vec<usize>> = match (choice, layout.mode) {
        (TaskChoice::Task(t), _) => vec![layout.competing(Some(t))],
        (TaskChoice::Automatic, OutputMode::Union) => vec![layout.competing(None)],
        (TaskChoice::Automatic, OutputMode::PerTask) => layout.groups.clone(),
    };
    let mut labels = vec![vec![0u16; total]; groups.len()];
    let mut probability = vec![vec![0f32; total]; groups.len()];
    let tc = engine.task_logit_channels();
    let mut task_sums = vec![0f64; tc];
    let [nx, ny, _] = input.shape;
    // In union mode every task shares one softmax (and its background): all channels or none.
    let mut mirrored_channels: Vec<usize> = match layout.mode {
        OutputMode::Union if !mirrored_tasks.is_empty() => (0..c).collect(),
        _ => mirrored_tasks
            .iter()
            .flat_map(|&t| layout.groups[t].iter().copied())
            .collect(),
    };
    mirrored_channels.sort_unstable();
    mirrored_channels.dedup();
    let mirrored = (!mirrored_channels.is_empty())
        .then(|| mirrored_logits(engine, input, settings, &mirrored_channels));
    let m = mirrored_channels.len();
    let mut voxel_logits = vec![0f32; c];
    engine.logits_by_slab(input, settings, &mut |z0, z1, logits, task_logits| {
        let n = nx * ny * (z1 - z0);
        let offset = nx * ny * z0;
        for v in 0..n {
            voxel_logits.copy_from_slice(&logits[v * c..][..c]);
            if let Some(mirrored) = &mirrored {
                let other = &mirrored[(offset + v) * m..][..m];
                for (&channel, &logit) in mirrored_channels.iter().zip(other) {
                    voxel_logits[channel] = 0.5 * (voxel_logits[channel] + logit);
                }
            }
            for (g, group) in groups.iter().enumerate() {
                let (label, p) = layout.decide(&voxel_logits, group);
                labels[g][offset + v] = label;
                probability[g][offset + v] = p;
            }
            if tc > 0 {
                let voxel_tasks = &task_logits[v * tc..][..tc];
                for (sum, p) in task_sums.iter_mut().zip(task_probabilities(voxel_tasks)) {
                    *sum += p as f64;
                }
            }
        }
    });
    let (pick, task, recognition) = match (choice, layout.mode) {
        (TaskChoice::Task(t), _) => (0, Some(t), None),
        (TaskChoice::Automatic, OutputMode::Union) => (0, dominant_task(layout, &labels[0]), None),
        (TaskChoice::Automatic, OutputMode::PerTask) => {
            let means: Vec<f32> = task_sums
                .iter()
                .map(|s| (*s / total as f64) as f32)
                .collect();
            let t = means
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i);
            (
                t,
                Some(t),
                Some(Recognition {
                    task: t,
                    mean_probabilities: means,
                }),
            )
        }
    };
    NetworkLabels {
        labels: labels.swap_remove(pick),
        probability: probability.swap_remove(pick),
        task,
        recognition,
    }
}

/// Test-time mirroring: the logits of `channels` for `input` mirrored left-right (axis 0 of
/// the RAS network layout), mirrored back to `input`'s voxel order, voxel-major. Only for
/// tasks whose anatomy is left-right symmetric, such as a whole brain.
fn mirrored_logits<E: Dense + ?Sized>(
    engine: &E,
    input: &NetworkInput,
    settings: &DenseSettings,
    channels: &[usize],
) -> Vec<f32> {
    let [nx, ny, nz] = input.shape;
    let image = mirror_rows(input.image, nx);
    let mirror = NetworkInput {
        image: &image,
        ..*input
    };
    let (c, m) = (engine.logit_channels(), channels.len());
    let mut kept = vec![0f32; nx * ny * nz * m];
    engine.logits_by_slab(&mirror, settings, &mut |z0, _, slab, _| {
        for (v, voxel) in slab.chunks_exact(c).enumerate() {
            let x = v % nx;
            let back = nx * ny * z0 + v - x + (nx - 1 - x);
            for (out, &channel) in kept[back * m..][..m].iter_mut().zip(channels) {
                *out = voxel[channel];
            }
        }
    });
    kept
}

/// A volume stored x fastest, mirrored along x (rows of `nx` reversed).
fn mirror_rows<T: Copy>(data: &[T], nx: usize) -> Vec<T> {
    data.chunks(nx)
        .flat_map(|row| row.iter().rev().copied())
        .collect()
}

/// In union mode, the task whose classes hold all foreground voxels, if there is one.
fn dominant_task(layout: &OutputLayout, labels: &[u16]) -> Option<usize> {
    let mut owner = None;
    for &l in labels.iter().filter(|&&l| l > 0) {
        let t = layout
            .groups
            .iter()
            .position(|g| g[1..].iter().any(|&c| layout.joint_of_channel[c] == l));
        match (owner, t) {
            (None, Some(t)) => owner = Some(t),
            (Some(o), Some(t)) if o != t => return None,
            _ => {}
        }
    }
    owner
}

#[cfg(test)]
mod tests;
