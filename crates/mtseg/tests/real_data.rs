//! Tests on the real scans in `../shared/data` (nnU-Net layout; CI has it). When the folder
//! is missing they print SKIPPED loudly, and fail if MTSEG_REQUIRE_SHARED_DATA=1 (CI sets it).

use std::path::{Path, PathBuf};

use mtseg::datasets::{Task, TaskSet};
use mtseg::io;

fn shared_data() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("MTSEG_REQUIRE_SHARED_DATA").as_deref() == Ok("1") {
        panic!("../shared/data is missing but MTSEG_REQUIRE_SHARED_DATA=1");
    }
    eprintln!("SKIPPED: ../shared/data not found; real-data tests did not run");
    None
}

fn dataset_folders(root: &Path) -> Vec<PathBuf> {
    let mut folders: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("dataset.json").is_file())
        .collect();
    folders.sort();
    folders
}

#[test]
fn every_dataset_checks_and_every_file_round_trips() {
    let Some(root) = shared_data() else { return };
    let folders = dataset_folders(&root);
    assert!(
        folders.len() >= 6,
        "expected the six datasets of ../shared/data"
    );
    let out = tempfile::tempdir().unwrap();
    for folder in &folders {
        let task = Task::open(folder).unwrap();
        let summary = task.check().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(summary.len(), task.training.len() + task.test.len());
        for case in &task.training {
            for (path, is_label) in [(&case.image, false), (case.label.as_ref().unwrap(), true)] {
                let raw = io::read_raw(path).unwrap();
                let written = out.path().join("roundtrip.nii.gz");
                if is_label {
                    let labels = io::read_labels(path).unwrap();
                    io::write_labels(&written, &labels).unwrap();
                    let back = io::read_labels(&written).unwrap();
                    assert_eq!(back.data, labels.data, "{}", path.display());
                } else {
                    io::write_raw(&written, &raw).unwrap();
                }
                let back = io::read_raw(&written).unwrap();
                assert_eq!(back.grid.shape, raw.grid.shape, "{}", path.display());
                let diff = (back.grid.affine - raw.grid.affine).abs().max();
                assert!(diff < 1e-5, "{}: affine changed by {diff}", path.display());
                assert_eq!(
                    back.voxels.to_f32(back.scaling),
                    raw.voxels.to_f32(raw.scaling)
                );
            }
        }
    }
    // All six together form one label space: background plus every class.
    let set = TaskSet::open(&folders).unwrap();
    let classes: usize = set.tasks.iter().map(|t| t.classes.len()).sum();
    assert_eq!(set.space.num_classes(), classes + 1);
}

#[test]
fn nrrd_pair_matches_its_nifti_conversion() {
    let Some(root) = shared_data() else { return };
    let dir = root.join("Dataset006_BreastMRILesion");
    for (nrrd, nifti) in [
        ("breast1_image.nrrd", "imagesTr/breast_001_0000.nii.gz"),
        ("breast1_label.nrrd", "labelsTr/breast_001.nii.gz"),
    ] {
        let a = io::read_raw(&dir.join(nrrd)).unwrap();
        let b = io::read_raw(&dir.join(nifti)).unwrap();
        assert_eq!(a.grid.shape, b.grid.shape);
        assert_eq!(a.voxels.to_f32(None), b.voxels.to_f32(b.scaling));
        // Same voxel grid: every corner at the same world point within 1e-3 mm.
        let distance = a.grid.max_corner_distance(&b.grid);
        assert!(distance < 1e-3, "{nrrd}: corners {distance} mm apart");
    }
}

#[test]
fn the_float_label_map_of_the_hippocampus_set_is_valid() {
    let Some(root) = shared_data() else { return };
    let path = root.join("Dataset002_HippocampusMSD/labelsTr/hippocampus_003.nii.gz");
    let raw = io::read_raw(&path).unwrap();
    assert_eq!(raw.voxels.datatype, io::DataType::F32);
    let labels = io::read_labels(&path).unwrap();
    assert_eq!(labels.label_values(), vec![0, 1, 2]);
}
