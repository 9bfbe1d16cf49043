use super::*;
use crate::datasets::{ClassInfo, LabelSpace, Modality, TaskInfo};
use crate::model::{OutputMode, TrainConfig};

/// Two tasks: task 0 with classes 1 (10% of voxels) and 2 (one voxel), task 1 with class 3.
fn setup() -> (Vec<TrainingVolume>, OutputLayout) {
    let shape = [12, 12, 12];
    let n = 12 * 12 * 12;
    let volume = |task: usize, labels: Vec<u16>| {
        let classes: Vec<u16> = if task == 0 { vec![1, 2] } else { vec![3] };
        let class_voxels = classes
            .iter()
            .map(|&c| (0..n as u32).filter(|&i| labels[i as usize] == c).collect())
            .collect();
        TrainingVolume {
            case: format!("t{task}"),
            task,
            shape,
            spacing: [1.0; 3],
            image: (0..n).map(|i| i as f32).collect(),
            labels,
            pad: -1.0,
            generation: Vec::new(),
            class_voxels,
        }
    };
    let mut a = vec![0u16; n];
    (0..n).filter(|i| i % 10 == 0).for_each(|i| a[i] = 1);
    a[5 * 144 + 5 * 12 + 5] = 2;
    let mut b = vec![0u16; n];
    (0..n).filter(|i| i % 3 == 0).for_each(|i| b[i] = 3);
    let task = |name: &str| TaskInfo {
        name: name.into(),
        modality: Modality::MR,
    };
    let space = LabelSpace {
        tasks: vec![task("A"), task("B")],
        classes: vec![
            ClassInfo {
                task: 0,
                name: "a1".into(),
                dataset_id: 1,
            },
            ClassInfo {
                task: 0,
                name: "a2".into(),
                dataset_id: 2,
            },
            ClassInfo {
                task: 1,
                name: "b1".into(),
                dataset_id: 1,
            },
        ],
    };
    (
        vec![volume(0, a), volume(1, b)],
        OutputLayout::new(&space, OutputMode::Union),
    )
}

/// Every task drawn `samples` times per mini-batch.
fn draws(classes: &[usize], samples: usize) -> Vec<TaskDraw> {
    classes
        .iter()
        .map(|&classes| TaskDraw {
            classes,
            samples,
            randomised: None,
        })
        .collect()
}

#[test]
fn batches_are_balanced_over_tasks_and_classes() {
    let (volumes, layout) = setup();
    let config = TrainConfig::new()
        .with_tile(1)
        .with_rotation_degrees(0.0)
        .with_scaling(0.0);
    let mut sampler = BalancedSampler::new(3);
    let mut counts = [[0usize; 3]; 2];
    for _ in 0..50 {
        let batch = sampler.next_batch(&volumes, &draws(&[2, 1], 6), 3, &config, &layout);
        assert_eq!(batch.tasks, vec![0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]);
        for (cube, (&t, &c)) in batch.tasks.iter().zip(&batch.centre_classes).enumerate() {
            counts[t][c] += 1;
            // With tile 1 and no augmentation, the target is the drawn class.
            let joint = batch.labels[cube];
            let expected = if c == 0 {
                0
            } else {
                layout.groups[t][c] as u16
            };
            assert_eq!(joint, expected);
        }
    }
    // Task 0: 6 samples over 3 classes -> exactly 2 each per batch; task 1: 3 each.
    assert_eq!(counts[0], [100, 100, 100]);
    assert_eq!(counts[1][0], 150);
    assert_eq!(counts[1][1], 150);
}

#[test]
fn identity_patches_are_the_volume_around_the_centre() {
    let (volumes, layout) = setup();
    let config = TrainConfig::new()
        .with_tile(2)
        .with_rotation_degrees(0.0)
        .with_scaling(0.0)
        .with_intensity_jitter(0.0);
    let mut sampler = BalancedSampler::new(1);
    let rf = 3;
    let batch = sampler.next_batch(&volumes[..1], &draws(&[2], 3), rf, &config, &layout);
    let side = batch.patch_side;
    assert_eq!(side, 4);
    assert_eq!(batch.patches[0].len(), 3 * 2 * side * side);
    // The cube drawn for class 2 is centred on its only voxel, (5, 5, 5); with k = 2 the
    // centre is cube voxel (1, 1, 1): slice 1 of each orientation, patch row and column 2.
    let cube = batch.centre_classes.iter().position(|&c| c == 2).unwrap();
    let v = &volumes[0];
    let at = |o: usize, slice: usize, row: usize, col: usize| {
        batch.patches[o][((cube * 2 + slice) * side + row) * side + col]
    };
    assert_eq!(at(0, 1, 2, 2), v.image[v.index(5, 5, 5)]);
    // Axial: rows x, columns y.
    assert_eq!(at(0, 1, 3, 2), v.image[v.index(6, 5, 5)]);
    assert_eq!(at(0, 1, 2, 3), v.image[v.index(5, 6, 5)]);
    assert_eq!(at(0, 0, 2, 2), v.image[v.index(5, 5, 4)]);
    // Coronal: slices along y, rows x, columns z.
    assert_eq!(at(1, 1, 2, 3), v.image[v.index(5, 5, 6)]);
    assert_eq!(at(1, 0, 2, 2), v.image[v.index(5, 4, 5)]);
    // Sagittal: slices along x, rows y, columns z.
    assert_eq!(at(2, 1, 3, 2), v.image[v.index(5, 6, 5)]);
    assert_eq!(at(2, 0, 2, 2), v.image[v.index(4, 5, 5)]);
    // Cube voxel (1, 1, 1) carries the centre's label, (0, 0, 0) that of (4, 4, 4).
    assert_eq!(batch.labels[cube * 8 + 7], 2);
    assert_eq!(batch.labels[cube * 8], v.labels[v.index(4, 4, 4)]);
}

#[test]
fn shards_split_a_batch_into_disjoint_balanced_shares() {
    let (volumes, layout) = setup();
    let config = TrainConfig::new().with_tile(2);
    let batch =
        BalancedSampler::new(5).next_batch(&volumes, &draws(&[2, 1], 4), 3, &config, &layout);
    let shards: Vec<Batch> = (0..3).map(|i| batch.shard(i, 3)).collect();
    assert_eq!(shards.iter().map(|s| s.cubes).sum::<usize>(), batch.cubes);
    // Cube c goes to shard c % 3, whole: its patches, targets, labels, task and class.
    let patch = 2 * batch.patch_side * batch.patch_side;
    for c in 0..batch.cubes {
        let (shard, at) = (&shards[c % 3], c / 3);
        assert_eq!(shard.tasks[at], batch.tasks[c]);
        assert_eq!(shard.centre_classes[at], batch.centre_classes[c]);
        assert_eq!(shard.targets[at * 8..][..8], batch.targets[c * 8..][..8]);
        assert_eq!(shard.labels[at * 8..][..8], batch.labels[c * 8..][..8]);
        for o in 0..3 {
            assert_eq!(
                shard.patches[o][at * patch..][..patch],
                batch.patches[o][c * patch..][..patch]
            );
        }
    }
    // Both tasks in every share when each task has at least as many cubes as there are shares.
    for shard in &shards {
        assert!(
            shard.tasks.contains(&0) && shard.tasks.contains(&1),
            "{:?}",
            shard.tasks
        );
    }
}

/// U-Net crops: task-major, of the configured side, and each pixel's target is the label of
/// the voxel whose intensity the crop's middle channel holds (intensities are voxel indices).
#[test]
fn crops_pair_every_pixel_with_its_own_label() {
    let (volumes, layout) = setup();
    let config = TrainConfig::new().with_crop(8).with_intensity_jitter(0.0);
    let mut sampler = BalancedSampler::new(4);
    // Tasks may be drawn unequally often (samples_by_task).
    let draws = [
        TaskDraw {
            classes: 2,
            samples: 4,
            randomised: None,
        },
        TaskDraw {
            classes: 1,
            samples: 2,
            randomised: None,
        },
    ];
    let crops = sampler.next_crops(&volumes, &draws, &config, &layout);
    assert_eq!((crops.count, crops.side), (6, 8));
    assert_eq!(crops.tasks, vec![0, 0, 0, 0, 1, 1]);
    assert_eq!(crops.images.len(), 6 * INPUT_CHANNELS * 64);
    assert_eq!(crops.targets.len(), 6 * 64);
    let mut rare_seen = false;
    for c in 0..crops.count {
        let volume = &volumes[crops.tasks[c]];
        let middle = &crops.images[(c * INPUT_CHANNELS + 1) * 64..][..64];
        let mut inside = 0;
        for (p, &value) in middle.iter().enumerate() {
            let target = crops.targets[c * 64 + p];
            if value < 0.0 {
                assert_eq!(target, 0, "outside the volume is background");
            } else {
                inside += 1;
                let label = volume.labels[value as usize];
                assert_eq!(target, layout.target(crops.tasks[c], label) as i64);
                rare_seen |= label == 2;
            }
        }
        assert!(inside > 0, "crop {c} lies outside its volume");
    }
    assert!(rare_seen, "the one-voxel class is drawn like the others");
}

/// Blur augmentation: on a checkerboard volume, neighbouring pixels of sharp crops differ by 1;
/// with every crop blurred (sigma up to 1 voxel) the pattern fades.
#[test]
fn blurred_crops_are_smoother_than_sharp_ones() {
    let (mut volumes, layout) = setup();
    for v in &mut volumes {
        let [nx, ny, _] = v.shape;
        for (i, value) in v.image.iter_mut().enumerate() {
            *value = ((i % nx + (i / nx) % ny + i / (nx * ny)) % 2) as f32;
        }
    }
    let draws = draws(&[2, 1], 4);
    // Mean |difference| of horizontal neighbours inside the volume, over the middle channels.
    let contrast = |blur_probability: f64| {
        let config = TrainConfig::new()
            .with_crop(8)
            .with_intensity_jitter(0.0)
            .with_blur_probability(blur_probability);
        let crops = BalancedSampler::new(5).next_crops(&volumes, &draws, &config, &layout);
        let (mut total, mut pairs) = (0.0, 0);
        for c in 0..crops.count {
            let middle = &crops.images[(c * INPUT_CHANNELS + 1) * 64..][..64];
            for row in middle.chunks(8) {
                for pair in row.windows(2) {
                    if pair.iter().all(|v| (0.0..=1.0).contains(v)) {
                        total += (pair[0] - pair[1]).abs();
                        pairs += 1;
                    }
                }
            }
        }
        total / pairs as f32
    };
    assert_eq!(contrast(0.0), 1.0);
    let blurred = contrast(1.0);
    assert!(blurred < 0.8, "blurred crops keep contrast {blurred}");
}
