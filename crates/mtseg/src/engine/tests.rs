//! The CPU kernels against burn: same outputs in inference, same loss, gradients and
//! running statistics in training.

use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::Distribution;

use super::params::ParamStore;
use super::*;
use crate::data::{BalancedSampler, TaskDraw, TrainingVolume};
use crate::model::{
    self, ModelMeta, NetworkConfig, Orientation, OutputMode, TrainConfig, TriplanarConfig,
    TriplanarNet,
};
use crate::test_support::{tiny_network, two_task_meta, unet_meta};

fn meta(network: impl Into<NetworkConfig>) -> ModelMeta {
    two_task_meta(network, &[(0, "a1", 1), (0, "a2", 2), (1, "b", 1)])
}

/// A network whose batch-norm running statistics are not the initial 0 and 1.
fn network(m: &ModelMeta, seed: u64) -> TriplanarNet {
    let device = Device::flex().autodiff();
    let net = model::init_network(m, seed, &device);
    for _ in 0..2 {
        for o in Orientation::ALL {
            let side = 2 * m.network.as_triplanar().unwrap().depth + 4;
            let x =
                Tensor::<4>::random([2, 1, side, side], Distribution::Normal(0.3, 1.5), &device);
            let _ = net.branch(o).forward(x);
        }
    }
    net.valid()
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn inference_matches_burn_to_1e_4() {
    burn_on_device_matches_the_kernels(Device::flex());
}

/// With `--features gpu`: burn on the GPU (the `--device gpu` path) gives the CPU kernels'
/// outputs. Without a GPU it says so loudly and passes, unless MTSEG_REQUIRE_GPU is set.
#[cfg(feature = "gpu")]
#[test]
fn inference_on_the_gpu_matches_the_kernels() {
    on_the_gpu(burn_on_device_matches_the_kernels);
}

/// Runs `check` on the GPU; without one, says so loudly (or fails under MTSEG_REQUIRE_GPU).
#[cfg(feature = "gpu")]
fn on_the_gpu(check: fn(Device)) {
    match crate::device::Hardware::Gpu.burn_device() {
        Ok(device) => check(device),
        Err(e) if std::env::var_os("MTSEG_REQUIRE_GPU").is_some() => panic!("{e}"),
        Err(e) => eprintln!("\n*** NOT CHECKED: no GPU here ({e}) ***\n"),
    }
}

fn burn_on_device_matches_the_kernels(device: Device) {
    for network_config in [
        TriplanarConfig::new()
            .with_depth(3)
            .with_kernels(5)
            .with_fc_width(12),
        TriplanarConfig::new()
            .with_depth(8)
            .with_kernels(16)
            .with_fc_width(64)
            .with_output_mode(OutputMode::PerTask),
    ] {
        let m = meta(network_config);
        let net = network(&m, 11);
        let burn = TriplanarEngine::on_device(&net, device.clone());
        let ours = TriplanarEngine::on_cpu(&net);
        let (n, h, w) = (
            3,
            2 * m.network.as_triplanar().unwrap().depth + 7,
            2 * m.network.as_triplanar().unwrap().depth + 4,
        );
        let slices: Vec<f32> = (0..n * h * w)
            .map(|i| ((i * 7919) % 211) as f32 / 60.0 - 1.5)
            .collect();
        for o in Orientation::ALL {
            let a = burn.branch(o, slices.clone(), n, h, w);
            let b = ours.branch(o, slices.clone(), n, h, w);
            assert!(
                max_difference(&a, &b) < 1e-4,
                "branch {o:?}: {}",
                max_difference(&a, &b)
            );
        }
        let features: Vec<f32> = (0..50 * 3 * m.network.as_triplanar().unwrap().kernels)
            .map(|i| ((i * 31) % 97) as f32 / 40.0 - 1.0)
            .collect();
        let (la, ta) = burn.head(features.clone(), 50);
        let (lb, tb) = ours.head(features, 50);
        assert!(max_difference(&la, &lb) < 1e-4);
        assert!(max_difference(&ta, &tb) < 1e-4);
        assert_eq!(ta.is_empty(), m.network.output_mode() == OutputMode::Union);
    }
}

fn volume(task: usize, seed: usize) -> TrainingVolume {
    let shape = [14, 13, 12];
    let n: usize = shape.iter().product();
    let labels: Vec<u16> = (0..n)
        .map(|i| match (task, (i * 13 + seed) % 7) {
            (0, 0) => 1,
            (0, 1) => 2,
            (1, 0..=2) => 3,
            _ => 0,
        })
        .collect();
    let classes: Vec<u16> = if task == 0 { vec![1, 2] } else { vec![3] };
    TrainingVolume {
        case: format!("{task}"),
        task,
        shape,
        spacing: [1.0; 3],
        image: (0..n)
            .map(|i| ((i * 2654435761 + seed) % 1000) as f32 / 300.0 - 1.5 + labels[i] as f32)
            .collect(),
        class_voxels: classes
            .iter()
            .map(|&c| (0..n as u32).filter(|&i| labels[i as usize] == c).collect())
            .collect(),
        labels,
        pad: -2.0,
        generation: Vec::new(),
    }
}

/// A tiny network without dropout, so that two implementations see the same forward pass.
fn training_meta(mode: OutputMode) -> ModelMeta {
    training_meta_with_kernels(mode, 3)
}

fn training_meta_with_kernels(mode: OutputMode, kernels: usize) -> ModelMeta {
    meta(
        TriplanarConfig::new()
            .with_depth(2)
            .with_kernels(kernels)
            .with_fc_width(6)
            .with_dropout(0.0)
            .with_output_mode(mode),
    )
}

/// A batch of cubes of 3^3 voxels, two per task, from two small volumes.
fn two_task_batch(m: &ModelMeta, class_balance: f64) -> (TrainConfig, crate::data::Batch) {
    let volumes = vec![volume(0, 1), volume(1, 2)];
    let config = TrainConfig::new()
        .with_tile(3)
        .with_class_balance(class_balance);
    let draws = [(2, 2), (1, 2)].map(|(classes, samples)| TaskDraw {
        classes,
        samples,
        randomised: None,
    });
    let batch = BalancedSampler::new(9).next_batch(
        &volumes,
        &draws,
        m.network.as_triplanar().unwrap().patch_size(),
        &config,
        &m.layout,
    );
    (config, batch)
}

/// A training step on `batch` without dropout, learning rate 1e-2.
fn step_input<'a>(
    m: &'a ModelMeta,
    config: &'a TrainConfig,
    batch: &'a crate::data::Batch,
) -> StepInput<'a> {
    StepInput {
        batch,
        layout: &m.layout,
        config,
        dropout: 0.0,
        lr: 1e-2,
        seed: 1,
    }
}

/// The network saved as `bytes`, on `device` with autodiff, ready to train with Adam.
fn trainable(m: &ModelMeta, bytes: &[u8], device: &Device) -> TriplanarNet {
    let device = device.clone().autodiff();
    model::network_from_bytes(m, bytes, &device, std::path::Path::new("t")).unwrap()
}

fn adam() -> burn::optim::ModuleOptimizer {
    burn::optim::AdamConfig::new().init()
}

/// burn's autodiff gradients of the same loss on the same batch.
fn burn_gradients(
    net: &TriplanarNet,
    m: &ModelMeta,
    batch: &crate::data::Batch,
    config: &TrainConfig,
) -> (f64, std::collections::BTreeMap<String, Vec<f32>>) {
    let device = Device::flex().autodiff();
    let net = net.clone().train();
    let net = model::network_from_bytes(
        m,
        &model::weights_to_bytes(&net).unwrap(),
        &device,
        std::path::Path::new("t"),
    )
    .unwrap();
    let loss = crate::engine::step::burn_loss(&net, batch, &m.layout, config);
    let grads = loss.backward();
    let value = loss.into_scalar::<f32>() as f64;
    let grads = GradientsParams::from_grads(grads, &net);
    (value, by_path(&net, &grads))
}

/// The gradients of `net`'s parameters (not its running statistics) keyed by module path,
/// zeros where `grads` has none.
fn by_path(
    net: &TriplanarNet,
    grads: &GradientsParams,
) -> std::collections::BTreeMap<String, Vec<f32>> {
    let mut out = std::collections::BTreeMap::new();
    for (path, p) in &ParamStore::read(net).tensors {
        if path.contains("running") {
            continue;
        }
        let g = match p.shape.len() {
            1 => grads
                .get::<1>(p.id)
                .map(|t| t.into_data().try_into_vec::<f32>().unwrap()),
            4 => grads
                .get::<4>(p.id)
                .map(|t| t.into_data().try_into_vec::<f32>().unwrap()),
            _ => None,
        };
        out.insert(path.clone(), g.unwrap_or_else(|| vec![0.0; p.values.len()]));
    }
    out
}

#[test]
fn training_gradients_match_burn_autodiff() {
    // 8 kernels take the vector path of the batch-norm sums, 3 the other; the last number
    // is the weight of the soft Dice term.
    let cases = [
        (OutputMode::Union, false, 3, 0.0),
        (OutputMode::Union, true, 3, 1.5),
        (OutputMode::PerTask, true, 3, 0.0),
        (OutputMode::PerTask, false, 8, 0.7),
    ];
    for (mode, weighted, kernels, dice_weight) in cases {
        let m = training_meta_with_kernels(mode, kernels);
        let net = network(&m, 5);
        let (config, batch) = two_task_batch(&m, if weighted { 1.0 } else { 0.0 });
        let config = config.with_dice_weight(dice_weight);
        let (burn_loss, burn_grads) = burn_gradients(&net, &m, &batch, &config);
        let ours = train_step(
            &CpuNetwork::from_burn(&net, 0.0),
            &batch,
            &m.layout,
            &config,
            1,
            &Workspace::default(),
        );
        assert!(
            (ours.loss - burn_loss).abs() < 1e-4 * burn_loss.abs().max(1.0),
            "loss {} vs {burn_loss}",
            ours.loss
        );
        let ours_by_path = by_path(&net, &ours.gradients(&net, &Device::flex()));
        for (path, expected) in &burn_grads {
            let got = ours_by_path
                .get(path)
                .unwrap_or_else(|| panic!("no gradient for {path}"));
            let scale = expected.iter().fold(1e-3f32, |a, v| a.max(v.abs()));
            let diff = max_difference(got, expected);
            assert!(
                diff < 2e-3 * scale,
                "{mode:?} dice {dice_weight}: {path}: max difference {diff} (scale {scale})"
            );
        }
        assert_eq!(ours.branches.len(), 3);
        assert!(
            ours.branches
                .iter()
                .all(|b| b.len() == m.network.as_triplanar().unwrap().depth)
        );
    }
}

/// A workspace handed on from a step of another network (its buffers full of that step's
/// values) gives the same step, bit for bit, as a fresh one.
#[test]
fn a_reused_workspace_gives_the_same_step() {
    let m = training_meta(OutputMode::PerTask);
    let (config, batch) = two_task_batch(&m, 1.0);
    // Each network built once: building draws from burn's random stream, which other tests
    // share.
    let (net, other) = [5, 6]
        .map(|seed| CpuNetwork::from_burn(&network(&m, seed), 0.0))
        .into();
    let step = |net: &CpuNetwork, workspace: &Workspace| {
        train_step(net, &batch, &m.layout, &config, 1, workspace)
    };
    let used = Workspace::default();
    step(&other, &used);
    let again = step(&net, &used);
    let fresh = step(&net, &Workspace::default());
    assert_eq!(again, fresh);
}

/// `mtseg train --device gpu` steps with burn's autodiff instead of these kernels: run on
/// the CPU device, its first step must see the same loss and batch statistics as theirs, and
/// repeated steps must lower the loss.
#[test]
fn the_burn_training_step_of_the_gpu_path_agrees_with_the_kernels() {
    burn_training_step_agrees_with_the_kernels(Device::flex());
}

/// The same on the GPU (with `--features gpu`; see `inference_on_the_gpu_matches_the_kernels`).
#[cfg(feature = "gpu")]
#[test]
fn the_burn_training_step_on_the_gpu_agrees_with_the_kernels() {
    on_the_gpu(burn_training_step_agrees_with_the_kernels);
}

fn burn_training_step_agrees_with_the_kernels(burn_device: Device) {
    use burn::optim::ModuleOptimizer;

    let m = training_meta(OutputMode::PerTask);
    let bytes = model::weights_to_bytes(&network(&m, 5).train()).unwrap();
    let load = |device: &Device| trainable(&m, &bytes, device);
    let (config, batch) = two_task_batch(&m, 1.0);

    let kernels_net = load(&Device::flex());
    let input = step_input(&m, &config, &batch);
    let (kernels_net, kernels_loss) = Stepper::Kernels(Workspace::default())
        .step(kernels_net, &mut adam(), &input)
        .unwrap();
    let mut optimizer = adam();
    // The GPU path's step, whatever device the network is on.
    let gpu_path = Stepper::Replicas(DataParallel::start(vec![burn_device.clone()]));
    let burn_step =
        |net, optimizer: &mut ModuleOptimizer| gpu_path.step(net, optimizer, &input).unwrap();
    let (mut burn_net, burn_loss) = burn_step(load(&burn_device), &mut optimizer);
    assert!(
        (kernels_loss - burn_loss).abs() < 1e-4 * burn_loss.max(1.0),
        "loss {kernels_loss} vs {burn_loss}"
    );
    let (a, b) = (ParamStore::read(&kernels_net), ParamStore::read(&burn_net));
    let running: Vec<&String> = a.tensors.keys().filter(|k| k.contains("running")).collect();
    assert!(!running.is_empty());
    for path in running {
        let diff = max_difference(&a.tensors[path].values, &b.tensors[path].values);
        assert!(diff < 1e-4, "{path}: running statistics differ by {diff}");
    }

    let mut last = burn_loss;
    for _ in 0..5 {
        let (next, loss) = burn_step(burn_net, &mut optimizer);
        burn_net = next;
        last = loss;
    }
    assert!(last < 0.9 * burn_loss, "loss {burn_loss} -> {last}");
}

/// `mtseg train --gpus 2`: two replicas (here both on the CPU device) each take half of the
/// batch's cubes; the step must update the network as one backward pass of the share-weighted
/// sum of the halves' losses does, and report that sum as the loss.
#[test]
fn a_data_parallel_step_sums_the_shares_of_its_replicas() {
    data_parallel_step_sums_the_shares(Device::flex());
}

/// The same with two replicas on one GPU (with `--features gpu`).
#[cfg(feature = "gpu")]
#[test]
fn a_data_parallel_step_on_the_gpu_sums_the_shares_of_its_replicas() {
    on_the_gpu(data_parallel_step_sums_the_shares);
}

fn data_parallel_step_sums_the_shares(replica_device: Device) {
    let m = training_meta(OutputMode::PerTask);
    let (config, batch) = two_task_batch(&m, 0.5);
    let bytes = model::weights_to_bytes(&network(&m, 5).train()).unwrap();
    let load = || trainable(&m, &bytes, &replica_device);

    let replicas = Stepper::Replicas(DataParallel::start(vec![
        replica_device.clone(),
        replica_device.clone(),
    ]));
    let input = step_input(&m, &config, &batch);
    let (parallel, loss) = replicas.step(load(), &mut adam(), &input).unwrap();

    let net = load();
    let halves = [batch.shard(0, 2), batch.shard(1, 2)];
    assert_eq!(halves[0].cubes + halves[1].cubes, batch.cubes);
    let expected = halves
        .iter()
        .map(|h| {
            crate::engine::step::burn_loss(&net, h, &m.layout, &config)
                * (h.cubes as f32 / batch.cubes as f32)
        })
        .reduce(|a, b| a + b)
        .unwrap();
    let expected_loss = expected.clone().into_scalar::<f32>() as f64;
    let grads = GradientsParams::from_grads(expected.backward(), &net);
    let single = adam().step(1e-2, net, grads);

    assert!(
        (loss - expected_loss).abs() < 1e-5,
        "loss {loss} vs {expected_loss}"
    );
    let (a, b) = (ParamStore::read(&parallel), ParamStore::read(&single));
    let mut compared = 0;
    for (path, tensor) in a.tensors.iter().filter(|(k, _)| !k.contains("running")) {
        let diff = max_difference(&tensor.values, &b.tensors[path].values);
        assert!(diff < 1e-5, "{path}: differs by {diff}");
        compared += 1;
    }
    assert!(compared > 10, "only {compared} parameters compared");
    let before = ParamStore::read(&load());
    let moved = before
        .tensors
        .iter()
        .any(|(k, t)| max_difference(&t.values, &a.tensors[k].values) > 1e-4);
    assert!(moved, "the step changed nothing");
}

/// A random network with non-trivial batch-norm statistics, in evaluation mode.
fn trained_looking_network(m: &ModelMeta) -> TriplanarNet {
    let device = Device::flex().autodiff();
    let net = model::init_network(m, 7, &device);
    // A few training-mode forwards move the running statistics away from 0/1.
    for _ in 0..3 {
        let x = Tensor::<4>::random([2, 1, 9, 9], Distribution::Normal(0.5, 2.0), &device);
        let _ = net.branch(Orientation::Axial).forward(x.clone());
        let _ = net.branch(Orientation::Coronal).forward(x.clone());
        let _ = net.branch(Orientation::Sagittal).forward(x);
    }
    net.valid()
}

/// The output at a voxel is the same whether computed from its own patch, from a tile that
/// contains it, or by dense whole-volume inference: training and inference agree.
#[test]
fn own_patch_tile_and_dense_inference_agree() {
    let m = two_task_meta(tiny_network(), &[(0, "a", 1), (1, "b", 1)]);
    let net = trained_looking_network(&m);
    let device = Device::flex();
    let shape = [10, 9, 8];
    let n: usize = shape.iter().product();
    let image: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let volume = TrainingVolume {
        case: "v".into(),
        task: 0,
        shape,
        spacing: [1.0; 3],
        image: image.clone(),
        labels: vec![0; n],
        pad: -1.5,
        generation: Vec::new(),
        class_voxels: vec![vec![]],
    };
    let engine = TriplanarEngine::on_device(&net, device.clone());
    let input = NetworkInput {
        image: &image,
        shape,
        pad: -1.5,
    };
    // Dense, with slabs of one z row to exercise the slab seams too.
    let settings = DenseSettings {
        slab_bytes: 1,
        slice_batch: 3,
        head_voxels: 37,
    };
    let mut all = Vec::new();
    engine.logits_by_slab(&input, &settings, &mut |_, _, logits, _| {
        all.extend_from_slice(logits)
    });
    let c = m.layout.channels();
    let rf = m.network.as_triplanar().unwrap().patch_size();
    for (centre, k) in [([4usize, 4, 3], 1usize), ([4, 4, 3], 4), ([0, 8, 7], 2)] {
        let patches = BalancedSampler::cube_patches(&volume, centre, k, rf);
        let side = rf + k - 1;
        let tensors = patches
            .map(|p| Tensor::<4>::from_data(TensorData::new(p, [k, 1, side, side]), &device));
        let out = net.forward_cubes(tensors, 1, k);
        let logits: Vec<f32> = out.logits.into_data().try_into_vec().unwrap();
        // Cube voxel (x, y, z) -> row x, column y*k + z; volume voxel centre - k/2 + (x, y, z).
        for x in 0..k {
            for y in 0..k {
                for z in 0..k {
                    let v: [isize; 3] =
                        [0, 1, 2].map(|a| (centre[a] + [x, y, z][a]) as isize - (k / 2) as isize);
                    if v.iter().zip(shape).any(|(&p, s)| p < 0 || p >= s as isize) {
                        continue;
                    }
                    let voxel =
                        v[0] as usize + shape[0] * (v[1] as usize + shape[1] * v[2] as usize);
                    for ch in 0..c {
                        let tile = logits[(ch * k + x) * k * k + y * k + z];
                        let dense = all[voxel * c + ch];
                        assert!(
                            (tile - dense).abs() < 1e-4,
                            "k={k} voxel {v:?} channel {ch}: {tile} vs {dense}"
                        );
                    }
                }
            }
        }
    }
}

/// The U-Net engine's logits at a voxel are the mean of the three orientations' logits at
/// that voxel, each from the slice through it with its neighbours (padded outside).
#[test]
fn unet_logits_are_the_mean_of_the_three_orientations() {
    use crate::engine::{Dense, UNetEngine};
    use crate::model::slices::stack;
    use crate::model::unet::INPUT_CHANNELS;

    let m = unet_meta();
    let device = Device::flex();
    let Network::UNet(net) = Network::init(&m, 3, &device).valid() else {
        panic!("a U-Net configuration gives a U-Net")
    };
    let shape = [6, 5, 4];
    let n: usize = shape.iter().product();
    let image: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 / 5.0 - 1.0).collect();
    let input = NetworkInput {
        image: &image,
        shape,
        pad: -1.5,
    };
    let engine = UNetEngine::on_cpu(&net);
    let mut all = Vec::new();
    engine.logits_by_slab(&input, &DenseSettings::default(), &mut |_, _, logits, _| {
        all.extend_from_slice(logits)
    });
    let c = engine.logit_channels();
    assert_eq!(all.len(), n * c);
    let (x, y, z) = (4, 1, 3);
    let mut expected = vec![0f32; c];
    for o in Orientation::ALL {
        let (ra, ca) = o.plane_axes();
        let at = [x, y, z];
        // Slices padded to even sides (two levels), the voxel at (row, column) of its plane.
        let size = [shape[ra].div_ceil(2) * 2, shape[ca].div_ceil(2) * 2];
        let mut slice = Vec::new();
        stack(
            input,
            o,
            at[o.normal_axis()] as isize,
            [0, 0],
            size,
            &mut slice,
        );
        let t = Tensor::<4>::from_data(
            TensorData::new(slice, [1, INPUT_CHANNELS, size[0], size[1]]),
            &device,
        );
        let logits: Vec<f32> = net.forward(t).0.into_data().try_into_vec().unwrap();
        for (k, e) in expected.iter_mut().enumerate() {
            *e += logits[(k * size[0] + at[ra]) * size[1] + at[ca]] / 3.0;
        }
    }
    let voxel = x + shape[0] * (y + shape[1] * z);
    for k in 0..c {
        assert!(
            (all[voxel * c + k] - expected[k]).abs() < 1e-4,
            "channel {k}"
        );
    }
}
