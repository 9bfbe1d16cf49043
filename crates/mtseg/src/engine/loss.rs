//! Cross-entropy over the joint label space (union mode) or within each task's softmax group
//! (per-task mode), optionally class-weighted and with a soft Dice term (`dice_weight`), plus
//! the task-recognition loss. The U-Net's crops add nnU-Net's soft Dice term to the
//! cross-entropy ([`crop_loss`]).

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};

use crate::data::{Batch, Crops};
use crate::model::network::CubeOutput;
use crate::model::{OutputLayout, OutputMode, TrainConfig};

/// `[b, c, k, k*k]` to `[b * k^3, c]`, voxels in the batch's target order.
fn per_voxel(t: Tensor<4>) -> Tensor<2> {
    let [b, c, k, kk] = t.dims();
    t.permute([0, 2, 3, 1]).reshape([b * k * kk, c])
}

/// Weighted sum of the negative log-likelihood of `targets` under `logits` (the weights sum
/// to the share of the loss these voxels carry).
fn nll(logits: Tensor<2>, targets: Tensor<1, Int>, weights: Tensor<1>) -> Tensor<1> {
    let m = targets.dims()[0];
    let picked = log_softmax(logits, 1)
        .gather(1, targets.reshape([m, 1]))
        .reshape([m])
        .neg();
    (picked * weights).sum()
}

/// The weight of every voxel of a batch in the loss; the weights sum to 1, each task's cubes
/// to its share (`task_share`). Within a task, a voxel whose label has n voxels in the task's
/// cubes weighs proportionally to n^-`class_balance`: 0 weighs every voxel the same, 1 gives
/// every label present (background included) the same total weight, the paper's balance.
pub fn voxel_weights(batch: &Batch, tasks: usize, config: &TrainConfig) -> Vec<f32> {
    let per_cube = batch.targets.len() / batch.cubes;
    let shares = config.task_share.shares(&batch.tasks, tasks);
    let mut weights = vec![0f32; batch.targets.len()];
    for (t, share) in shares.into_iter().enumerate() {
        let voxels: Vec<usize> = (0..batch.cubes)
            .filter(|&c| batch.tasks[c] == t)
            .flat_map(|c| c * per_cube..(c + 1) * per_cube)
            .collect();
        if voxels.is_empty() {
            continue;
        }
        let mut counts = std::collections::BTreeMap::new();
        for &v in &voxels {
            *counts.entry(batch.labels[v]).or_insert(0usize) += 1;
        }
        let raw = |v: usize| (counts[&batch.labels[v]] as f64).powf(-config.class_balance);
        let total: f64 = voxels.iter().map(|&v| raw(v)).sum();
        for &v in &voxels {
            weights[v] = (share * raw(v) / total) as f32;
        }
    }
    weights
}

/// The loss of a batch: segmentation cross-entropy (joint space or per task group), each
/// task's soft Dice term over its classes when `dice_weight` > 0 (in sharded training each
/// shard's Dice is taken over its own voxels), plus, in per-task mode, the weighted
/// task-recognition cross-entropy.
pub fn batch_loss(
    output: CubeOutput,
    batch: &Batch,
    layout: &OutputLayout,
    config: &TrainConfig,
    device: &Device,
) -> Tensor<1> {
    let voxels = batch.targets.len();
    let per_cube = voxels / batch.cubes;
    let tasks = layout.groups.len();
    let targets =
        Tensor::<1, Int>::from_data(TensorData::new(batch.targets.clone(), [voxels]), device);
    let weights = Tensor::<1>::from_data(
        TensorData::new(voxel_weights(batch, tasks, config), [voxels]),
        device,
    );
    let logits = per_voxel(output.logits);
    let runs = task_runs(&batch.tasks, tasks);
    let mut seg = match layout.mode {
        OutputMode::Union => nll(logits.clone(), targets, weights),
        OutputMode::PerTask => {
            // The batch is task-major: each task's voxels are one contiguous range, scored
            // only within the task's own softmax group.
            let mut total: Option<Tensor<1>> = None;
            for (group, run) in layout.groups.iter().zip(&runs) {
                if run.is_empty() {
                    continue;
                }
                let rows = run.start * per_cube..run.end * per_cube;
                let (part, _) = group_part(&logits, group, rows.clone(), layout.mode);
                let loss = nll(
                    part,
                    targets.clone().narrow(0, rows.start, rows.len()),
                    weights.clone().narrow(0, rows.start, rows.len()),
                );
                total = Some(match total {
                    Some(acc) => acc + loss,
                    None => loss,
                });
            }
            total.expect("at least one task")
        }
    };
    if config.dice_weight > 0.0 {
        let shares = config.task_share.shares(&batch.tasks, tasks);
        for ((group, run), share) in layout.groups.iter().zip(&runs).zip(shares) {
            if run.is_empty() {
                continue;
            }
            let rows = run.start * per_cube..run.end * per_cube;
            let (part, channels) = group_part(&logits, group, rows.clone(), layout.mode);
            let width = part.dims()[1];
            let one_hot = one_hot(&batch.targets[rows], width, device);
            seg = seg
                + dice_loss(softmax(part, 1), one_hot, &channels[1..], device)
                    * (share * config.dice_weight) as f32;
        }
    }
    match output.task_logits {
        Some(task_logits) => seg + task_loss(task_logits, &batch.tasks, per_cube, config, device),
        None => seg,
    }
}

/// A task's `rows` of `logits` as its softmax sees them (every channel in union mode, its own
/// group in per-task mode), and the positions of its group's channels among them.
fn group_part(
    logits: &Tensor<2>,
    group: &[usize],
    rows: std::ops::Range<usize>,
    mode: OutputMode,
) -> (Tensor<2>, Vec<usize>) {
    let part = logits.clone().narrow(0, rows.start, rows.len());
    match mode {
        OutputMode::Union => (part, group.to_vec()),
        OutputMode::PerTask => (
            part.narrow(1, group[0], group.len()),
            (0..group.len()).collect(),
        ),
    }
}

/// `[targets, width]`: a 1 at each target's position.
fn one_hot(targets: &[i64], width: usize, device: &Device) -> Tensor<2> {
    let mut values = vec![0f32; targets.len() * width];
    for (row, &target) in targets.iter().enumerate() {
        values[row * width + target as usize] = 1.0;
    }
    Tensor::<2>::from_data(TensorData::new(values, [targets.len(), width]), device)
}

/// 1 - the mean soft Dice of `channels` of `probabilities` (`[voxels, width]`) against
/// `one_hot`, each channel's overlap and sizes summed over all the voxels and smoothed by 1
/// (nnU-Net's batch Dice). `engine::train` computes the same by hand.
fn dice_loss(
    probabilities: Tensor<2>,
    one_hot: Tensor<2>,
    channels: &[usize],
    device: &Device,
) -> Tensor<1> {
    let width = probabilities.dims()[1];
    let overlap = (probabilities.clone() * one_hot.clone())
        .sum_dim(0)
        .reshape([width]);
    let sizes = (probabilities.sum_dim(0) + one_hot.sum_dim(0)).reshape([width]);
    let dice = (overlap * 2.0 + 1.0) / (sizes + 1.0);
    let chosen: Vec<i64> = channels.iter().map(|&c| c as i64).collect();
    let chosen = Tensor::<1, Int>::from_data(TensorData::new(chosen, [channels.len()]), device);
    dice.select(0, chosen).mean().neg() + 1.0
}

/// Per task below `count`: the run of samples of a task-major batch (`tasks` holds each
/// sample's task) that belong to it, empty when the batch has none.
pub(crate) fn task_runs(tasks: &[usize], count: usize) -> Vec<std::ops::Range<usize>> {
    (0..count)
        .map(|t| tasks.partition_point(|&x| x < t)..tasks.partition_point(|&x| x <= t))
        .collect()
}

/// The weighted task-recognition cross-entropy, every voxel (`per_sample` per sample of
/// `tasks`) weighing the same.
fn task_loss(
    task_logits: Tensor<4>,
    tasks: &[usize],
    per_sample: usize,
    config: &TrainConfig,
    device: &Device,
) -> Tensor<1> {
    let voxels = tasks.len() * per_sample;
    let targets: Vec<i64> = tasks
        .iter()
        .flat_map(|&t| std::iter::repeat_n(t as i64, per_sample))
        .collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [voxels]), device);
    let uniform = Tensor::<1>::full([voxels], 1.0 / voxels as f64, device);
    nll(per_voxel(task_logits), targets, uniform) * config.task_loss_weight
}

/// The loss of a batch of U-Net crops (`[n, channels, side, side]` logits): per task, over its
/// crops, the mean cross-entropy within its softmax group plus 1 - the mean soft Dice of the
/// group's channels (background included); the tasks' sum weighted by their shares
/// (`task_share`), plus the task-recognition cross-entropy in per-task mode. Crops have no
/// class weights: the Dice term balances them.
pub fn crop_loss(
    logits: Tensor<4>,
    task_logits: Option<Tensor<4>>,
    crops: &Crops,
    layout: &OutputLayout,
    config: &TrainConfig,
    device: &Device,
) -> Tensor<1> {
    let pixels = crops.targets.len();
    let per_crop = crops.side * crops.side;
    let logits = per_voxel(logits);
    let shares = config.task_share.shares(&crops.tasks, layout.groups.len());
    let mut total: Option<Tensor<1>> = None;
    for ((group, run), share) in layout
        .groups
        .iter()
        .zip(task_runs(&crops.tasks, layout.groups.len()))
        .zip(shares)
    {
        if run.is_empty() {
            continue;
        }
        let rows = run.start * per_crop..run.end * per_crop;
        let len = rows.len();
        let (part, dice_channels) = group_part(&logits, group, rows.clone(), layout.mode);
        let width = part.dims()[1];
        let one_hot = one_hot(&crops.targets[rows], width, device);
        let cross_entropy =
            (log_softmax(part.clone(), 1) * one_hot.clone()).sum().neg() / len as f32;
        let dice = dice_loss(softmax(part, 1), one_hot, &dice_channels, device);
        let loss = (cross_entropy + dice) * share as f32;
        total = Some(match total {
            Some(acc) => acc + loss,
            None => loss,
        });
    }
    let seg = total.expect("at least one task");
    match task_logits {
        Some(task_logits) => {
            seg + task_loss(
                task_logits,
                &crops.tasks,
                pixels / crops.count,
                config,
                device,
            )
        }
        None => seg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskShare;

    fn batch(labels: Vec<u16>, tasks: Vec<usize>) -> Batch {
        Batch {
            cubes: tasks.len(),
            tile: 1,
            patch_side: 1,
            patches: Default::default(),
            targets: vec![0; labels.len()],
            labels,
            tasks,
            centre_classes: vec![],
        }
    }

    #[test]
    fn soft_dice_is_zero_for_the_targets_and_grows_as_a_class_is_missed() {
        let device = Device::flex();
        let targets = [0, 1, 1, 2];
        let exact = one_hot(&targets, 3, &device);
        let loss = |p: Tensor<2>, channels: &[usize]| {
            dice_loss(p, exact.clone(), channels, &device).into_scalar::<f32>()
        };
        assert!(loss(exact.clone(), &[0, 1, 2]).abs() < 1e-6);
        // Class 2's voxel called 1: its Dice drops to 1/2 (smoothed by 1), class 1's to 5/6.
        let missed = one_hot(&[0, 1, 1, 1], 3, &device);
        let expected = 1.0 - (1.0 + 5.0 / 6.0 + 0.5) / 3.0;
        assert!((loss(missed.clone(), &[0, 1, 2]) - expected).abs() < 1e-6);
        // Only the chosen channels count.
        assert!(loss(missed, &[0]).abs() < 1e-6);
    }

    #[test]
    fn class_weights_balance_labels_within_each_task() {
        // Two cubes of 4 voxels: task 0 with labels 0,0,0,1; task 1 all background.
        let b = batch(vec![0, 0, 0, 1, 0, 0, 0, 0], vec![0, 1]);
        let balance = |b: f64| TrainConfig::new().with_class_balance(b);
        let w = voxel_weights(&b, 2, &balance(1.0));
        let third = 0.5 / 2.0 / 3.0;
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-7);
        assert!(close(&w[..4], &[third, third, third, 0.25]), "{w:?}");
        assert!(close(&w[4..], &[0.125; 4]));
        assert!(close(&voxel_weights(&b, 2, &balance(0.0)), &[0.125; 8]));
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        // Half-way: the rare label weighs more than the common ones, less than balanced.
        let h = voxel_weights(&b, 2, &balance(0.5));
        assert!(h[3] > h[0] && h[3] < 0.25);
    }

    #[test]
    fn tasks_share_the_voxel_weights_equally_or_by_their_cubes() {
        // Three cubes of 2 voxels: two of task 0, one of task 1.
        let b = batch(vec![0; 6], vec![0, 0, 1]);
        let task_total = |share: TaskShare| {
            let w = voxel_weights(&b, 2, &TrainConfig::new().with_task_share(share));
            [w[..4].iter().sum::<f32>(), w[4..].iter().sum::<f32>()]
        };
        let close = |a: [f32; 2], b: [f32; 2]| (a[0] - b[0]).abs() + (a[1] - b[1]).abs() < 1e-6;
        assert!(close(task_total(TaskShare::Equal), [0.5, 0.5]));
        assert!(close(
            task_total(TaskShare::Samples),
            [2.0 / 3.0, 1.0 / 3.0]
        ));
    }

    /// Two tasks of one class each in per-task mode: output channels 0-1 and 2-3.
    fn two_groups_of_two() -> crate::model::ModelMeta {
        use crate::test_support::{tiny_network, two_task_meta};
        two_task_meta(
            tiny_network().with_output_mode(OutputMode::PerTask),
            &[(0, "a", 1), (1, "b", 1)],
        )
    }

    #[test]
    fn crop_loss_rewards_right_answers_in_each_tasks_group() {
        let device = Device::flex();
        let meta = two_groups_of_two();
        let layout = &meta.layout;
        // Two crops of 2 x 2 pixels, one per task; targets are positions in the group.
        let crops = Crops {
            count: 2,
            side: 2,
            images: vec![],
            targets: vec![0, 1, 1, 0, 1, 1, 0, 0],
            tasks: vec![0, 1],
        };
        let logits_for = |crops: &Crops, sign: f32| {
            let mut values = vec![0f32; crops.count * 4 * 4];
            for (crop, &task) in crops.tasks.iter().enumerate() {
                for p in 0..4 {
                    let target = crops.targets[crop * 4 + p] as usize;
                    let channel = layout.groups[task][target];
                    values[(crop * 4 + channel) * 4 + p] = sign * 8.0;
                }
            }
            Tensor::<4>::from_data(TensorData::new(values, [crops.count, 4, 2, 2]), &device)
        };
        let config = TrainConfig::new();
        let loss = |crops: &Crops, sign: f32| {
            crop_loss(
                logits_for(crops, sign),
                None,
                crops,
                layout,
                &config,
                &device,
            )
            .into_scalar::<f32>()
        };
        let (right, wrong) = (loss(&crops, 1.0), loss(&crops, -1.0));
        assert!((0.0..0.05).contains(&right), "{right}");
        assert!(wrong > 1.0, "{wrong}");
        // Tasks drawn unequally often (samples_by_task): each crop still meets its own task's
        // group (a split into equal shares would score half of crop 1 in task 0's group).
        let first_twice = Crops {
            count: 3,
            targets: [
                &crops.targets[..4],
                &crops.targets[..4],
                &crops.targets[4..],
            ]
            .concat(),
            tasks: vec![0, 0, 1],
            ..crops.clone()
        };
        let (right, wrong) = (loss(&first_twice, 1.0), loss(&first_twice, -1.0));
        assert!((0.0..0.05).contains(&right), "{right}");
        assert!(wrong > 1.0, "{wrong}");
    }

    #[test]
    fn crop_loss_weighs_tasks_by_their_crops_when_told() {
        let device = Device::flex();
        let meta = two_groups_of_two();
        // Three crops of 2 x 2 pixels (two of task 0, one of task 1) under fixed random-ish
        // logits, so that each task's loss differs.
        let crops = Crops {
            count: 3,
            side: 2,
            images: vec![],
            targets: vec![0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0],
            tasks: vec![0, 0, 1],
        };
        let values: Vec<f32> = (0..3 * 4 * 4)
            .map(|i| ((i * 7) % 11) as f32 - 5.0)
            .collect();
        let loss = |crops: &Crops, values: &[f32], share: TaskShare| {
            let logits = Tensor::<4>::from_data(
                TensorData::new(values.to_vec(), [crops.count, 4, 2, 2]),
                &device,
            );
            let config = TrainConfig::new().with_task_share(share);
            crop_loss(logits, None, crops, &meta.layout, &config, &device).into_scalar::<f32>()
        };
        // Each task's crops alone, with their logits.
        let only = |range: std::ops::Range<usize>| Crops {
            count: range.len(),
            targets: crops.targets[range.start * 4..range.end * 4].to_vec(),
            tasks: crops.tasks[range.clone()].to_vec(),
            ..crops.clone()
        };
        let first = loss(&only(0..2), &values[..32], TaskShare::Equal);
        let second = loss(&only(2..3), &values[32..], TaskShare::Equal);
        assert!((first - second).abs() > 0.05, "{first} {second}");
        let equal = loss(&crops, &values, TaskShare::Equal);
        assert!((equal - (first + second) / 2.0).abs() < 1e-5, "{equal}");
        let by_crops = loss(&crops, &values, TaskShare::Samples);
        assert!(
            (by_crops - (2.0 * first + second) / 3.0).abs() < 1e-5,
            "{by_crops}"
        );
    }

    #[test]
    fn task_runs_are_the_tasks_contiguous_samples() {
        assert_eq!(task_runs(&[0, 0, 0, 2, 2], 3), vec![0..3, 3..3, 3..5]);
        assert_eq!(task_runs(&[1], 2), vec![0..0, 0..1]);
    }

    #[test]
    fn nll_of_uniform_logits_is_log_classes() {
        let device = Device::flex();
        let logits = Tensor::<2>::zeros([4, 3], &device);
        let targets =
            Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 0], [4]), &device);
        let weights = Tensor::<1>::full([4], 0.25, &device);
        let v = nll(logits, targets, weights).into_scalar::<f32>();
        assert!((v - 3f32.ln()).abs() < 1e-6);
    }
}
