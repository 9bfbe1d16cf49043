//! Validation during training: dense inference on held-out cases (cropped around their
//! labels to bound the cost) and Dice per task/class.

use crate::data::TrainingVolume;
use crate::datasets::LabelSpace;
use crate::engine::{Dense, DenseSettings, NetworkInput};
use crate::eval::dice;
use crate::infer::postprocess::keep_largest_component;
use crate::infer::{TaskChoice, segment};
use crate::model::{OutputLayout, OutputMode};

use super::log::ValidationRow;

/// A held-out case, cropped to at most `max_extent` voxels per axis around its labels.
pub struct ValidationCase {
    pub task: usize,
    pub image: Vec<f32>,
    pub labels: Vec<u16>,
    pub shape: [usize; 3],
    pub pad: f32,
}

impl ValidationCase {
    pub fn from_volume(v: &TrainingVolume, max_extent: usize) -> Self {
        let [nx, ny, _] = v.shape;
        let mut lo = v.shape;
        let mut hi = [0usize; 3];
        for (i, &l) in v.labels.iter().enumerate() {
            if l > 0 {
                let c = [i % nx, (i / nx) % ny, i / (nx * ny)];
                for a in 0..3 {
                    lo[a] = lo[a].min(c[a]);
                    hi[a] = hi[a].max(c[a] + 1);
                }
            }
        }
        if hi == [0; 3] {
            lo = [0; 3];
            hi = v.shape;
        }
        // A window of at most max_extent centred on the labels' bounding box.
        let mut start = [0usize; 3];
        let mut shape = [0usize; 3];
        for a in 0..3 {
            shape[a] = v.shape[a].min(max_extent);
            let centre = (lo[a] + hi[a]) / 2;
            start[a] = centre
                .saturating_sub(shape[a] / 2)
                .min(v.shape[a] - shape[a]);
        }
        let mut image = Vec::with_capacity(shape.iter().product());
        let mut labels = Vec::with_capacity(image.capacity());
        for z in start[2]..start[2] + shape[2] {
            for y in start[1]..start[1] + shape[1] {
                let row = v.index(start[0], y, z);
                image.extend_from_slice(&v.image[row..row + shape[0]]);
                labels.extend_from_slice(&v.labels[row..row + shape[0]]);
            }
        }
        ValidationCase {
            task: v.task,
            image,
            labels,
            shape,
            pad: v.pad,
        }
    }
}

/// A validation case's joint labels, as training validates: without a task in union mode,
/// with its own task's softmax group in per-task mode.
fn segment_case<E: Dense + ?Sized>(
    engine: &E,
    layout: &OutputLayout,
    case: &ValidationCase,
) -> Vec<u16> {
    let choice = match layout.mode {
        OutputMode::Union => TaskChoice::Automatic,
        OutputMode::PerTask => TaskChoice::Task(case.task),
    };
    let input = NetworkInput {
        image: &case.image,
        shape: case.shape,
        pad: case.pad,
    };
    segment(
        engine,
        layout,
        &input,
        choice,
        &DenseSettings::default(),
        &[],
    )
    .labels
}

/// nnU-Net's post-processing choice: for each task, whether keeping only the largest
/// connected object of its labels keeps or raises the mean Dice of its classes on the
/// validation cases. Tasks without validation cases keep it.
pub fn largest_component_helps<E: Dense + ?Sized>(
    engine: &E,
    layout: &OutputLayout,
    space: &LabelSpace,
    cases: &[ValidationCase],
) -> Vec<bool> {
    let mut raw = vec![0f64; space.tasks.len()];
    let mut kept = vec![0f64; space.tasks.len()];
    for case in cases {
        let labels = segment_case(engine, layout, case);
        let mut largest = labels.clone();
        keep_largest_component(&mut largest, case.shape, space, &[case.task]);
        for joint in space.task_classes(case.task) {
            raw[case.task] += dice(&labels, &case.labels, joint);
            kept[case.task] += dice(&largest, &case.labels, joint);
        }
    }
    kept.iter().zip(&raw).map(|(k, r)| k >= r).collect()
}

/// Mean Dice per joint class over the held-out cases of its task.
pub fn validate<E: Dense + ?Sized>(
    engine: &E,
    layout: &OutputLayout,
    space: &LabelSpace,
    cases: &[ValidationCase],
    iteration: usize,
) -> ValidationRow {
    let mut sums = vec![0f64; space.classes.len()];
    let mut counts = vec![0usize; space.classes.len()];
    for case in cases {
        let labels = segment_case(engine, layout, case);
        for joint in space.task_classes(case.task) {
            let i = joint as usize - 1;
            sums[i] += dice(&labels, &case.labels, joint);
            counts[i] += 1;
        }
    }
    let dice: Vec<f64> = sums
        .iter()
        .zip(&counts)
        .map(|(s, &c)| if c > 0 { s / c as f64 } else { f64::NAN })
        .collect();
    let measured: Vec<f64> = dice.iter().copied().filter(|d| d.is_finite()).collect();
    let mean_dice = if measured.is_empty() {
        f64::NAN
    } else {
        measured.iter().sum::<f64>() / measured.len() as f64
    };
    ValidationRow {
        iteration,
        dice,
        mean_dice,
    }
}
