use burn::prelude::*;
use burn::tensor::Distribution;

use super::*;
use crate::data::{BalancedSampler, TrainingVolume};
use crate::infer::{BurnEngine, DenseSettings, NetworkInput, dense};
use crate::test_support::{tiny_network, two_task_meta};

fn meta(network: NetworkConfig) -> ModelMeta {
    two_task_meta(network, &[(0, "a", 1), (1, "b", 1)])
}

#[test]
fn a_patch_of_the_receptive_field_gives_one_voxel_and_larger_patches_give_tiles() {
    let device = Device::flex();
    for network in [Preset::paper().network, Preset::small().network] {
        let m = meta(network.clone());
        let net = init_network(&m, 1, &device).valid();
        let p = network.patch_size();
        assert_eq!(p, 1 + 2 * network.depth);
        for k in [1, 3] {
            let x =
                Tensor::<4>::random([2, 1, p + k - 1, p + k - 1], Distribution::Default, &device);
            let dims = net.branch(Orientation::Coronal).forward(x).dims();
            assert_eq!(dims, [2, network.kernels, k, k]);
        }
    }
}

/// A random network with non-trivial batch-norm statistics, in evaluation mode.
fn trained_looking_network(m: &ModelMeta) -> TriplanarNet {
    let device = Device::flex().autodiff();
    let net = init_network(m, 7, &device);
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
    let m = meta(tiny_network());
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
    let engine = BurnEngine::new(&net, device.clone());
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
    let all = dense::dense_logits(&engine, &input, &settings);
    let c = m.layout.channels();
    let rf = m.network.patch_size();
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

/// Gradients of the loss with respect to the input and to a weight, against central finite
/// differences, on a tiny network in training mode (batch norm with batch statistics).
#[test]
fn gradients_match_finite_differences() {
    let m = meta(tiny_network());
    let device = Device::flex().autodiff();
    let net = init_network(&m, 3, &device);
    let k = 2;
    let side = m.network.patch_size() + k - 1;
    let base: Vec<Vec<f32>> = (0..3)
        .map(|o| {
            (0..k * side * side)
                .map(|i| (((i + 31 * o) * 2654435761usize) % 1000) as f32 / 500.0 - 1.0)
                .collect()
        })
        .collect();
    let weights: Vec<f32> = (0..m.layout.channels() * k * k * k)
        .map(|i| ((i * 37) % 11) as f32 / 11.0 - 0.5)
        .collect();
    let loss_of = |patches: &[Vec<f32>], track: bool| -> (f32, Option<Vec<f32>>) {
        let make = |p: &Vec<f32>| {
            Tensor::<4>::from_data(TensorData::new(p.clone(), [k, 1, side, side]), &device)
        };
        let axial = if track {
            make(&patches[0]).require_grad()
        } else {
            make(&patches[0])
        };
        let out = net.forward_cubes([axial.clone(), make(&patches[1]), make(&patches[2])], 1, k);
        let w =
            Tensor::<4>::from_data(TensorData::new(weights.clone(), out.logits.dims()), &device);
        let loss = (out.logits * w).sum();
        if track {
            let grads = loss.backward();
            let g = axial
                .grad(&grads)
                .unwrap()
                .into_data()
                .try_into_vec::<f32>()
                .unwrap();
            (0.0, Some(g))
        } else {
            (loss.into_scalar::<f32>(), None)
        }
    };
    let (_, grad) = loss_of(&base, true);
    let grad = grad.unwrap();
    let h = 1e-2;
    for &i in &[0usize, side + 3, k * side * side / 2, k * side * side - 1] {
        let mut plus = base.clone();
        plus[0][i] += h;
        let mut minus = base.clone();
        minus[0][i] -= h;
        let numeric = (loss_of(&plus, false).0 - loss_of(&minus, false).0) / (2.0 * h);
        let tolerance = 2e-2 * numeric.abs().max(1.0);
        assert!(
            (numeric - grad[i]).abs() < tolerance,
            "input {i}: analytic {} numeric {numeric}",
            grad[i]
        );
    }
}

#[test]
fn model_files_round_trip_and_detect_damage() {
    let m = meta(tiny_network());
    let device = Device::flex();
    let net = init_network(&m, 5, &device);
    let file = ModelFile {
        meta: m.clone(),
        weights: weights_to_bytes(&net).unwrap(),
        optimizer: vec![],
        trainer_state: vec![],
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.mtseg");
    file.save(&path).unwrap();
    let model = Model::load(&path, &device).unwrap();
    assert_eq!(model.meta, m);
    let x = Tensor::<4>::random([1, 1, 9, 9], Distribution::Default, &device);
    let a: Vec<f32> = net
        .valid()
        .branch(Orientation::Axial)
        .forward(x.clone())
        .into_data()
        .try_into_vec()
        .unwrap();
    let Network::Triplanar(loaded) = &model.net else {
        panic!("a triplanar model file loads a triplanar network")
    };
    let b: Vec<f32> = loaded
        .branch(Orientation::Axial)
        .forward(x)
        .into_data()
        .try_into_vec()
        .unwrap();
    assert_eq!(a, b);

    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = Model::load(&path, &device).err().unwrap().to_string();
    assert!(err.contains("checksum"), "{err}");
    std::fs::write(&path, &bytes[..100]).unwrap();
    assert!(Model::load(&path, &device).is_err());
}

#[test]
fn every_task_keeps_its_largest_object_unless_training_chose_otherwise() {
    let mut m = meta(tiny_network());
    assert_eq!(m.largest_component_tasks(), vec![0, 1]);
    m.largest_component = vec![false, true];
    assert_eq!(m.largest_component_tasks(), vec![1]);
}

fn unet_meta() -> ModelMeta {
    let network = NetworkConfig::new()
        .with_architecture(Architecture::UNet)
        .with_unet_levels(2)
        .with_unet_width(4)
        .with_output_mode(OutputMode::PerTask);
    meta(network)
}

/// The U-Net engine's logits at a voxel are the mean of the three orientations' logits at
/// that voxel, each from the slice through it with its neighbours (padded outside).
#[test]
fn unet_logits_are_the_mean_of_the_three_orientations() {
    use crate::data::slices::stack;
    use crate::infer::{Dense, UNetEngine};
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

#[test]
fn unet_model_files_round_trip() {
    let m = unet_meta();
    let device = Device::flex();
    let net = Network::init(&m, 5, &device);
    let file = ModelFile {
        meta: m.clone(),
        weights: net.to_bytes().unwrap(),
        optimizer: vec![],
        trainer_state: vec![],
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u.mtseg");
    file.save(&path).unwrap();
    let model = Model::load(&path, &device).unwrap();
    let (Network::UNet(a), Network::UNet(b)) = (net.valid(), &model.net) else {
        panic!("a U-Net model file loads a U-Net")
    };
    let x = Tensor::<4>::random([1, 3, 8, 6], Distribution::Default, &device);
    let a: Vec<f32> = a.forward(x.clone()).0.into_data().try_into_vec().unwrap();
    let b: Vec<f32> = b.forward(x).0.into_data().try_into_vec().unwrap();
    assert_eq!(a, b);
    // The triplanar network's weights do not fit a U-Net.
    let mut wrong = file.clone();
    wrong.weights = weights_to_bytes(&init_network(&meta(tiny_network()), 1, &device)).unwrap();
    wrong.save(&path).unwrap();
    let err = Model::load(&path, &device).err().unwrap().to_string();
    assert!(err.contains("do not fit"), "{err}");
}

/// A file written before the U-Net settings existed reads as the triplanar network it is.
#[test]
fn files_without_newer_settings_read_with_their_defaults() {
    let m = meta(tiny_network());
    let file = ModelFile {
        meta: m.clone(),
        weights: weights_to_bytes(&init_network(&m, 2, &Device::flex())).unwrap(),
        optimizer: vec![],
        trainer_state: vec![],
    };
    let mut json = serde_json::to_value(&m).unwrap();
    for (section, key) in [
        ("network", "architecture"),
        ("network", "unet_levels"),
        ("network", "unet_width"),
        ("training", "crop"),
    ] {
        json[section].as_object_mut().unwrap().remove(key);
    }
    let old = serde_json::to_vec(&json).unwrap();
    // Rebuild the file around the old metadata (the layout of ModelFile::to_bytes).
    let new = serde_json::to_vec(&m).unwrap();
    let bytes = file.to_bytes();
    let start = 8 + 4 + 8;
    let mut rebuilt = bytes[..12].to_vec();
    rebuilt.extend_from_slice(&(old.len() as u64).to_le_bytes());
    rebuilt.extend_from_slice(&old);
    rebuilt.extend_from_slice(&bytes[start + new.len()..bytes.len() - 4]);
    let crc = crc32fast::hash(&rebuilt);
    rebuilt.extend_from_slice(&crc.to_le_bytes());
    let read = ModelFile::from_bytes(std::path::Path::new("old.mtseg"), &rebuilt).unwrap();
    assert_eq!(read.meta, m);
    assert_eq!(read.meta.network.architecture, Architecture::Triplanar);
}
