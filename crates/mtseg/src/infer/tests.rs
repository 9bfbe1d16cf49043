//! Whole-file segmentation: geometry kept in every orientation, the same anatomy labelled the
//! same whatever the file's axis order, labels in the task's own ids.

use std::path::{Path, PathBuf};

use burn::prelude::*;

use super::*;
use crate::io::{self, DataType, Grid, Image, Volume, orientation::Reorientation};
use crate::model::{self, Model};
use crate::test_support::{tiny_network, two_task_meta};

fn segmenter_with(network: impl Into<model::NetworkConfig>) -> Segmenter {
    let meta = two_task_meta(network, &[(0, "a1", 1), (0, "a2", 2), (1, "b", 1)]);
    // A seed whose random network gives several labels on `ras_image` (the tests check it).
    let net = model::Network::init(&meta, 1, &Device::flex()).valid();
    // A random network's labels are scattered: these tests are about geometry, so they keep
    // every piece (post-processing has its own tests).
    Segmenter::builder()
        .task("A")
        .largest_component(false)
        .build_with(Model { meta, net }, PathBuf::from("test.mtseg"))
        .unwrap()
}

/// A smooth blob with some texture on a RAS grid of 1 mm voxels.
fn ras_image() -> Image {
    let grid = Grid::axis_aligned([14, 12, 10], [1.0; 3]);
    let mut image = Volume::filled(grid.clone(), 0f32, DataType::F32);
    for (i, v) in image.data.iter_mut().enumerate() {
        let [x, y, z] = grid.coords(i).map(|c| c as f32);
        let r2 = (x - 7.0).powi(2) + (y - 6.0).powi(2) + (z - 5.0).powi(2);
        *v = 100.0 * (-r2 / 20.0).exp() + 10.0 * (x * 0.9 + y * 1.7 - z * 0.4).sin();
    }
    image
}

/// The same world content stored with axis `i` of the file along RAS axis `axes[i]`, reversed
/// where `flips[i]`.
fn stored_as(ras: &Image, axes: [usize; 3], flips: [bool; 3]) -> Image {
    let n = ras.grid.shape;
    let shape = [n[axes[0]], n[axes[1]], n[axes[2]]];
    // Stored index -> RAS index, as a 4x4 matrix; the stored affine is the RAS one times it.
    let mut to_ras = nalgebra::Matrix4::<f64>::zeros();
    to_ras[(3, 3)] = 1.0;
    for (i, (&axis, &flip)) in axes.iter().zip(&flips).enumerate() {
        to_ras[(axis, i)] = if flip { -1.0 } else { 1.0 };
        if flip {
            to_ras[(axis, 3)] = (shape[i] - 1) as f64;
        }
    }
    let grid = Grid::new(shape, ras.grid.affine * to_ras);
    let mut stored = Volume::filled(grid.clone(), 0f32, DataType::F32);
    for (i, v) in stored.data.iter_mut().enumerate() {
        let c = grid.coords(i);
        let u = to_ras * nalgebra::Vector4::new(c[0] as f64, c[1] as f64, c[2] as f64, 1.0);
        *v = ras.at(u[0] as usize, u[1] as usize, u[2] as usize);
    }
    stored
}

fn segment_in(dir: &Path, name: &str, image: &Image) -> (io::LabelMap, SegmentReport) {
    let input = dir.join(format!("{name}.nii.gz"));
    let output = dir.join(format!("{name}_seg.nii.gz"));
    io::write_image(&input, image).unwrap();
    let report = segment_file(&segmenter_with(tiny_network()), &input, &output, None).unwrap();
    (io::read_labels(&output).unwrap(), report)
}

#[test]
fn every_orientation_keeps_its_grid_and_gets_the_same_labels() {
    let dir = tempfile::tempdir().unwrap();
    let ras = ras_image();
    let (reference, report) = segment_in(dir.path(), "ras", &ras);
    assert_eq!(reference.grid, ras.grid);
    assert!(
        reference.label_values().len() > 1,
        "a test that sees one label proves nothing"
    );
    assert_eq!(report.summary.task.as_deref(), Some("A"));
    assert_eq!(report.summary.label_values, "dataset");
    assert!(reference.data.iter().all(|&l| l <= 2));

    for (axes, flips) in [
        ([0, 1, 2], [true, false, false]), // LAS, the radiological storage order
        ([1, 2, 0], [false, true, false]), // P, S, R: how the IXI brains are stored
        ([2, 0, 1], [true, true, true]),
    ] {
        let image = stored_as(&ras, axes, flips);
        let (labels, _) = segment_in(dir.path(), &format!("{axes:?}{flips:?}"), &image);
        let read_back = io::read_image(&dir.path().join(format!("{axes:?}{flips:?}.nii.gz")));
        assert_eq!(labels.grid, read_back.unwrap().grid, "{axes:?} {flips:?}");
        // Back in RAS order, the labels are those of the RAS file, voxel for voxel.
        let back = Reorientation::to_ras(&labels.grid).apply(&labels);
        assert_eq!(back.data, reference.data, "{axes:?} {flips:?}");
    }
}

#[test]
fn anisotropic_input_is_resampled_and_comes_back_on_its_own_grid() {
    let dir = tempfile::tempdir().unwrap();
    let mut image = ras_image();
    image.grid = Grid::axis_aligned(image.grid.shape, [0.8, 1.0, 2.5]);
    let (labels, _) = segment_in(dir.path(), "aniso", &image);
    let input = io::read_image(&dir.path().join("aniso.nii.gz")).unwrap();
    assert_eq!(labels.grid, input.grid);
}

/// Test-time mirroring averages a pass over the scan mirrored left-right into the named
/// tasks' logits, so for those tasks a mirrored scan gets exactly the mirrored labels (one
/// plain pass does not); in per-task mode the other tasks' labels stay those of the plain pass.
#[test]
fn mirroring_makes_a_task_left_right_equivariant_and_leaves_the_others() {
    for mode in [OutputMode::Union, OutputMode::PerTask] {
        let mut network = tiny_network();
        network.output_mode = mode;
        let s = segmenter_with(network);
        let image = ras_image();
        let [nx, ..] = image.grid.shape;
        let labels = |data: &[f32], task: usize, mirrored: &[usize]| -> Vec<u16> {
            let input = NetworkInput {
                image: data,
                shape: image.grid.shape,
                pad: 0.0,
            };
            let choice = TaskChoice::Task(task);
            segment(
                s.engine.as_ref(),
                &s.meta.layout,
                &input,
                choice,
                &s.settings,
                mirrored,
            )
            .labels
        };
        let flipped = mirror_rows(&image.data, nx);
        let plain = labels(&image.data, 0, &[0]);
        assert!(
            plain.iter().any(|&l| l != plain[0]),
            "one label proves nothing"
        );
        assert!(
            mirror_rows(&plain, nx) == labels(&flipped, 0, &[0]),
            "{mode:?}"
        );
        assert!(mirror_rows(&labels(&image.data, 0, &[]), nx) != labels(&flipped, 0, &[]));
        if mode == OutputMode::PerTask {
            assert!(labels(&image.data, 1, &[0]) == labels(&image.data, 1, &[]));
        }
    }
}

/// The sidecar's volumes are the label map's voxel counts times the input's voxel volume, and
/// its mean intensities the input's means over them, on the input's own (anisotropic) grid.
#[test]
fn volumes_and_intensities_are_measured_on_the_input_grid() {
    let dir = tempfile::tempdir().unwrap();
    let ras = ras_image();
    let mut affine = ras.grid.affine;
    affine[(2, 2)] = 2.5;
    let mut image = ras.clone();
    image.grid = Grid::new(ras.grid.shape, affine);
    let (labels, report) = segment_in(dir.path(), "thick", &image);
    let voxel_ml = 2.5 / 1000.0;
    let names = &report.summary.labels;
    assert!(!report.summary.volumes_ml.is_empty());
    for (id, name) in names.iter().filter(|(id, _)| **id > 0) {
        let voxels: Vec<usize> = (0..labels.data.len())
            .filter(|&i| labels.data[i] == *id)
            .collect();
        let ml = report.summary.volumes_ml[name];
        assert!((ml - voxels.len() as f64 * voxel_ml).abs() < 1e-9, "{name}");
        if !voxels.is_empty() {
            let mean =
                voxels.iter().map(|&i| image.data[i] as f64).sum::<f64>() / voxels.len() as f64;
            assert!(
                (report.summary.mean_intensity[name] - mean).abs() < 1e-6,
                "{name}"
            );
        }
    }
    assert!(report.summary.volumes_ml.values().any(|&ml| ml > 0.0));
    let sidecar: serde_json::Value = serde_json::from_slice(
        &std::fs::read(sidecar_path(&dir.path().join("thick_seg.nii.gz"))).unwrap(),
    )
    .unwrap();
    assert_eq!(
        sidecar["volumes_ml"].as_object().unwrap().len(),
        report.summary.volumes_ml.len()
    );
    assert!(sidecar["quality"]["ok"].is_boolean());
    assert!(sidecar["quality"]["warnings"].is_array());
}

#[test]
fn a_volume_built_wrong_in_memory_is_refused_not_a_panic() {
    let segmenter = segmenter_with(tiny_network());
    let mut short = ras_image();
    short.data.pop();
    let error = segmenter.segment(&short).err().unwrap().to_string();
    assert!(error.contains("voxels, but its grid"), "{error}");

    let mut flat = ras_image();
    flat.grid.affine[(2, 2)] = 0.0;
    let error = segmenter.segment(&flat).err().unwrap().to_string();
    assert!(error.contains("singular"), "{error}");
}
