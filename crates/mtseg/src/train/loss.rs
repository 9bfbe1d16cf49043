//! Cross-entropy over the joint label space (union mode) or within each task's softmax group
//! (per-task mode), optionally class-weighted, plus the task-recognition loss.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::data::Batch;
use crate::model::network::CubeOutput;
use crate::model::{OutputLayout, OutputMode, TrainConfig};

/// `[b, c, k, k*k]` to `[b * k^3, c]`, voxels in the batch's target order.
fn per_voxel(t: Tensor<4>) -> Tensor<2> {
    let [b, c, k, kk] = t.dims();
    t.permute([0, 2, 3, 1]).reshape([b * k * kk, c])
}

/// Mean (optionally weighted) negative log-likelihood of `targets` under `logits`.
fn nll(logits: Tensor<2>, targets: Tensor<1, Int>, weights: Option<Tensor<1>>) -> Tensor<1> {
    let m = targets.dims()[0];
    let picked = log_softmax(logits, 1)
        .gather(1, targets.reshape([m, 1]))
        .reshape([m])
        .neg();
    match weights {
        Some(w) => (picked * w.clone()).sum() / w.sum(),
        None => picked.mean(),
    }
}

/// Per-voxel weights that give every label present in the batch the same total weight.
fn class_weights(labels: &[u16]) -> Vec<f32> {
    let mut counts = std::collections::HashMap::new();
    for &l in labels {
        *counts.entry(l).or_insert(0usize) += 1;
    }
    labels.iter().map(|l| 1.0 / counts[l] as f32).collect()
}

/// The total loss of a batch and its parts (segmentation, task).
pub fn batch_loss(
    output: CubeOutput,
    batch: &Batch,
    layout: &OutputLayout,
    config: &TrainConfig,
    device: &Device,
) -> Tensor<1> {
    let voxels = batch.targets.len();
    let per_cube = voxels / batch.cubes;
    let targets =
        Tensor::<1, Int>::from_data(TensorData::new(batch.targets.clone(), [voxels]), device);
    let weights = config.class_weighted.then(|| {
        Tensor::<1>::from_data(
            TensorData::new(class_weights(&batch.labels), [voxels]),
            device,
        )
    });
    let logits = per_voxel(output.logits);
    let seg = match layout.mode {
        OutputMode::Union => nll(logits, targets, weights),
        OutputMode::PerTask => {
            // The batch is task-major: each task's voxels are one contiguous range, scored
            // only within the task's own softmax group.
            let tasks = layout.groups.len();
            let per_task = voxels / tasks;
            let mut total: Option<Tensor<1>> = None;
            for (t, group) in layout.groups.iter().enumerate() {
                let rows = t * per_task;
                let part =
                    logits
                        .clone()
                        .narrow(0, rows, per_task)
                        .narrow(1, group[0], group.len());
                let loss = nll(
                    part,
                    targets.clone().narrow(0, rows, per_task),
                    weights.clone().map(|w| w.narrow(0, rows, per_task)),
                );
                total = Some(match total {
                    Some(acc) => acc + loss,
                    None => loss,
                });
            }
            total.expect("at least one task") / tasks as f64
        }
    };
    match output.task_logits {
        Some(task_logits) => {
            let task_targets: Vec<i64> = batch
                .tasks
                .iter()
                .flat_map(|&t| std::iter::repeat_n(t as i64, per_cube))
                .collect();
            let task_targets =
                Tensor::<1, Int>::from_data(TensorData::new(task_targets, [voxels]), device);
            seg + nll(per_voxel(task_logits), task_targets, None) * config.task_loss_weight
        }
        None => seg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_weights_equalise_labels() {
        let w = class_weights(&[0, 0, 0, 1]);
        assert_eq!(w, vec![1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 1.0]);
    }

    #[test]
    fn nll_of_uniform_logits_is_log_classes() {
        let device = Device::flex();
        let logits = Tensor::<2>::zeros([4, 3], &device);
        let targets =
            Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 0], [4]), &device);
        let v = nll(logits, targets, None).into_scalar::<f32>();
        assert!((v - 3f32.ln()).abs() < 1e-6);
    }
}
