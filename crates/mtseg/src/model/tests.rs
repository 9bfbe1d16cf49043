use burn::prelude::*;
use burn::tensor::Distribution;

use super::*;
use crate::test_support::{tiny_network, two_task_meta, unet_meta};

fn meta(network: impl Into<NetworkConfig>) -> ModelMeta {
    two_task_meta(network, &[(0, "a", 1), (1, "b", 1)])
}

#[test]
fn a_patch_of_the_receptive_field_gives_one_voxel_and_larger_patches_give_tiles() {
    let device = Device::flex();
    for network in [Preset::paper().network, Preset::small().network] {
        let m = meta(network.clone());
        let net = init_network(&m, 1, &device).valid();
        let network = network.as_triplanar().unwrap();
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

/// Gradients of the loss with respect to the input and to a weight, against central finite
/// differences, on a tiny network in training mode (batch norm with batch statistics).
#[test]
fn gradients_match_finite_differences() {
    let m = meta(tiny_network());
    let device = Device::flex().autodiff();
    let net = init_network(&m, 3, &device);
    let k = 2;
    let side = m.network.as_triplanar().unwrap().patch_size() + k - 1;
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

/// A file of format version 1 written before the U-Net existed (no architecture, no U-Net
/// settings, no crop) reads as the triplanar network it is, in this version's form.
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
    json["format_version"] = 1.into();
    json["network"]
        .as_object_mut()
        .unwrap()
        .remove("architecture");
    json["training"].as_object_mut().unwrap().remove("crop");
    let old = serde_json::to_vec(&json).unwrap();
    // Rebuild the file around the old metadata (the layout of ModelFile::to_bytes).
    let new = serde_json::to_vec(&m).unwrap();
    let bytes = file.to_bytes();
    let start = 8 + 4 + 8;
    let mut rebuilt = bytes[..8].to_vec();
    rebuilt.extend_from_slice(&1u32.to_le_bytes());
    rebuilt.extend_from_slice(&(old.len() as u64).to_le_bytes());
    rebuilt.extend_from_slice(&old);
    rebuilt.extend_from_slice(&bytes[start + new.len()..bytes.len() - 4]);
    let crc = crc32fast::hash(&rebuilt);
    rebuilt.extend_from_slice(&crc.to_le_bytes());
    let read = ModelFile::from_bytes(std::path::Path::new("old.mtseg"), &rebuilt).unwrap();
    assert_eq!(read.meta, m);
    assert_eq!(read.meta.network.architecture(), Architecture::Triplanar);
}
