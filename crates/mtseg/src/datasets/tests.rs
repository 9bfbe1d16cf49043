use super::*;
use crate::io::{DataType, Volume};

/// Writes a tiny dataset: `n` cases of 4x4x4 with labels 0..=max_label.
fn make_dataset(root: &Path, folder: &str, n: usize, label_value: u16) -> PathBuf {
    let dir = root.join(folder);
    std::fs::create_dir_all(dir.join("imagesTr")).unwrap();
    std::fs::create_dir_all(dir.join("labelsTr")).unwrap();
    let grid = Grid::axis_aligned([4, 4, 4], [1.0; 3]);
    for i in 0..n {
        let image = Volume::filled(grid.clone(), 1.0f32, DataType::F32);
        let mut labels = Volume::filled(grid.clone(), 0u16, DataType::U8);
        labels.data[0] = label_value;
        io::write_image(&dir.join(format!("imagesTr/case{i}_0000.nii.gz")), &image).unwrap();
        io::write_labels(&dir.join(format!("labelsTr/case{i}.nii.gz")), &labels).unwrap();
    }
    let json = serde_json::json!({
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "organ": 1, "vessel": 3},
        "numTraining": n,
        "file_ending": ".nii.gz",
        "licence": "kept as is"
    });
    std::fs::write(dir.join("dataset.json"), json.to_string()).unwrap();
    dir
}

#[test]
fn task_names_come_from_the_folder_without_prefix() {
    assert_eq!(
        task_name_from_folder(Path::new("/d/Dataset001_BrainTissueIXI")),
        "BrainTissueIXI"
    );
    assert_eq!(
        task_name_from_folder(Path::new("Dataset12_X")),
        "Dataset12_X"
    );
    assert_eq!(task_name_from_folder(Path::new("my_data")), "my_data");
}

#[test]
fn a_dataset_opens_and_checks() {
    let root = tempfile::tempdir().unwrap();
    let dir = make_dataset(root.path(), "Dataset007_Organs", 3, 3);
    let task = Task::open(&dir).unwrap();
    assert_eq!(task.name, "Organs");
    assert_eq!(task.modality, Modality::CT);
    assert_eq!(
        task.classes,
        vec![("organ".into(), 1), ("vessel".into(), 3)]
    );
    assert_eq!(task.training.len(), 3);
    assert_eq!(task.json.other["licence"], "kept as is");
    let summary = task.check().unwrap();
    assert_eq!(summary[0].labels, Some(vec![0, 3]));
}

#[test]
fn unlisted_label_values_are_refused_with_the_file_name() {
    let root = tempfile::tempdir().unwrap();
    let dir = make_dataset(root.path(), "Dataset008_Bad", 2, 2);
    let err = Task::open(&dir).unwrap().check().unwrap_err().to_string();
    assert!(
        err.contains("case0.nii.gz") && err.contains("label value 2"),
        "{err}"
    );
}

#[test]
fn missing_label_file_and_fields_are_named() {
    let root = tempfile::tempdir().unwrap();
    let dir = make_dataset(root.path(), "Dataset009_Gap", 2, 1);
    std::fs::remove_file(dir.join("labelsTr/case1.nii.gz")).unwrap();
    let err = Task::open(&dir).unwrap_err().to_string();
    assert!(
        err.contains("case1.nii.gz") && err.contains("missing"),
        "{err}"
    );

    std::fs::write(
        dir.join("dataset.json"),
        r#"{"channel_names": {"0": "MR"}}"#,
    )
    .unwrap();
    let err = Task::open(&dir).unwrap_err().to_string();
    assert!(
        err.contains("dataset.json") && err.contains("labels"),
        "{err}"
    );
}

#[test]
fn shape_mismatch_between_image_and_label_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = make_dataset(root.path(), "Dataset010_Shape", 2, 1);
    let grid = Grid::axis_aligned([4, 4, 5], [1.0; 3]);
    let labels = Volume::filled(grid, 0u16, DataType::U8);
    io::write_labels(&dir.join("labelsTr/case0.nii.gz"), &labels).unwrap();
    let err = Task::open(&dir).unwrap().check().unwrap_err().to_string();
    assert!(err.contains("shape"), "{err}");
}

#[test]
fn task_sets_join_label_spaces_and_refuse_duplicates() {
    let root = tempfile::tempdir().unwrap();
    let a = make_dataset(root.path(), "Dataset001_A", 2, 1);
    let b = make_dataset(root.path(), "Dataset002_B", 2, 1);
    let set = TaskSet::open(&[a.clone(), b]).unwrap();
    assert_eq!(set.space.num_classes(), 5);
    assert_eq!(set.space.joint_name(4), "B/vessel");
    assert!(TaskSet::open(&[a.clone(), a]).is_err());
}

#[test]
fn splits_come_from_the_file_or_a_fixed_rule() {
    let root = tempfile::tempdir().unwrap();
    let dir = make_dataset(root.path(), "Dataset011_S", 6, 1);
    let task = Task::open(&dir).unwrap();
    let split = Splits::find_for(&task).unwrap().split_for(&task).unwrap();
    assert_eq!(split.test, vec!["case4".to_string()]);
    assert_eq!(split.train.len(), 5);

    std::fs::write(
        root.path().join("splits.json"),
        r#"{"Dataset011_S": {"train": ["case0", "case1"], "test": ["case5"]}}"#,
    )
    .unwrap();
    let split = Splits::find_for(&task).unwrap().split_for(&task).unwrap();
    assert_eq!(split.test, vec!["case5".to_string()]);

    std::fs::write(
        root.path().join("splits.json"),
        r#"{"Dataset011_S": {"train": ["case0"], "test": ["case0"]}}"#,
    )
    .unwrap();
    let err = Splits::find_for(&task)
        .unwrap()
        .split_for(&task)
        .unwrap_err();
    assert!(err.to_string().contains("both"), "{err}");
}
