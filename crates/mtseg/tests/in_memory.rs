//! Training from cases a program holds: the same model as training from the same cases
//! written as an nnU-Net folder, and bad cases refused with the case named.

use std::path::Path;

use mtseg::datasets::{self, DatasetJson, Split, Task};
use mtseg::io::{self, DataType, Grid, Image, LabelMap};
use mtseg::model::Preset;
use mtseg::train::{self, Quiet, TrainRequest};

const SIZE: usize = 24;

/// A bright ball (label 1) and a dimmer slab (label 2) in a noisy background; 1 mm voxels
/// and an integer origin, which NIfTI's single-precision affine stores exactly.
fn case(index: usize) -> (String, Image, LabelMap) {
    let mut grid = Grid::axis_aligned([SIZE; 3], [1.0; 3]);
    grid.affine[(0, 3)] = -12.0;
    let mut image = Image::filled(grid.clone(), 0.0, DataType::F32);
    let mut labels = LabelMap::filled(grid, 0, DataType::U8);
    let centre = 8.0 + index as f64;
    let mut noise = (index as u32).wrapping_mul(2_654_435_761).wrapping_add(1);
    for z in 0..SIZE {
        for y in 0..SIZE {
            for x in 0..SIZE {
                let i = x + SIZE * (y + SIZE * z);
                let d2 = [x, y, z]
                    .iter()
                    .map(|&c| (c as f64 - centre).powi(2))
                    .sum::<f64>();
                noise = noise.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let jitter = (noise >> 16) as f32 / 65_536.0 * 20.0;
                let (label, value) = if d2 < 25.0 {
                    (1, 200.0)
                } else if z >= 18 {
                    (2, 120.0)
                } else {
                    (0, 40.0)
                };
                labels.data[i] = label;
                image.data[i] = value + jitter;
            }
        }
    }
    (format!("toy_{index:03}"), image, labels)
}

fn json() -> DatasetJson {
    DatasetJson::new("Toy", "MRI", &[("background", 0), ("ball", 1), ("slab", 2)])
}

/// The same cases as an nnU-Net raw folder.
fn write_folder(root: &Path, cases: &[(String, Image, LabelMap)]) -> std::path::PathBuf {
    let folder = root.join("Dataset901_Toy");
    for sub in ["imagesTr", "labelsTr"] {
        std::fs::create_dir_all(folder.join(sub)).unwrap();
    }
    for (id, image, labels) in cases {
        let image_path = folder.join("imagesTr").join(format!("{id}_0000.nii.gz"));
        io::write_image(&image_path, image).unwrap();
        io::write_labels(
            &folder.join("labelsTr").join(format!("{id}.nii.gz")),
            labels,
        )
        .unwrap();
    }
    let mut json = json();
    json.num_training = cases.len();
    datasets::write_dataset_json(&folder, &json).unwrap();
    folder
}

fn request(task: Task, out: &Path, train_ids: &[String]) -> TrainRequest {
    let mut preset = Preset::small();
    preset.training.iterations = 6;
    preset.training.validate_every = 3;
    let mut request = TrainRequest::new(vec![task], out, preset);
    request.splits = Some(vec![Split {
        train: train_ids.to_vec(),
        test: Vec::new(),
    }]);
    request
}

#[test]
fn training_from_memory_gives_the_model_of_the_same_cases_in_a_folder() {
    let cases: Vec<_> = (0..4).map(case).collect();
    let ids: Vec<String> = cases.iter().map(|(id, _, _)| id.clone()).collect();
    let dir = tempfile::tempdir().unwrap();
    let folder = write_folder(dir.path(), &cases);

    let held = Task::in_memory(json(), cases).unwrap();
    assert!(held.folder.is_none());
    let from_memory =
        train::train(&request(held, &dir.path().join("memory"), &ids), &mut Quiet).unwrap();
    let from_folder = train::train(
        &request(
            Task::open(&folder).unwrap(),
            &dir.path().join("folder"),
            &ids,
        ),
        &mut Quiet,
    )
    .unwrap();

    assert_eq!(from_memory.iterations, 6);
    // The files differ in burn's random parameter ids; the weights must not: both models
    // give the same probabilities on a case.
    let probe = case(7).1;
    let segment = |model: &Path| {
        mtseg::infer::Segmenter::builder()
            .model(model)
            .largest_component(false)
            .probabilities(true)
            .build()
            .unwrap()
            .segment(&probe)
            .unwrap()
    };
    let (memory, folder) = (segment(&from_memory.model), segment(&from_folder.model));
    assert_eq!(memory.labels.data, folder.labels.data);
    assert_eq!(
        memory.probabilities.unwrap().data,
        folder.probabilities.unwrap().data
    );
    let log = |run: &str| {
        let text = std::fs::read_to_string(dir.path().join(run).join("log.csv")).unwrap();
        // Columns 3 to 5 are speeds and wall time, which differ between runs.
        text.lines()
            .map(|l| {
                let fields: Vec<&str> = l.split(',').collect();
                [&fields[..3], &fields[6..]].concat().join(",")
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(log("memory"), log("folder"));
}

#[test]
fn a_task_in_memory_without_a_split_trains_on_every_case() {
    let held = Task::in_memory(json(), (0..5).map(case).collect()).unwrap();
    let split = datasets::Splits::find_for(&held)
        .unwrap()
        .split_for(&held)
        .unwrap();
    assert_eq!(split.train.len(), 5);
    assert!(split.test.is_empty());
}

/// Asserts that `Task::in_memory` refuses `cases` with an error holding every one of `parts`.
fn assert_refused(json: DatasetJson, cases: Vec<(String, Image, LabelMap)>, parts: &[&str]) {
    let error = Task::in_memory(json, cases).unwrap_err().to_string();
    assert!(parts.iter().all(|p| error.contains(p)), "{error}");
}

#[test]
fn bad_cases_in_memory_are_refused_with_the_case_named() {
    let (id, image, mut labels) = case(0);
    labels.data[0] = 7;
    assert_refused(
        json(),
        vec![(id, image, labels)],
        &["<memory>/Toy/toy_000", "label value 7"],
    );

    let (id, image, _) = case(1);
    let small = LabelMap::filled(Grid::axis_aligned([8; 3], [1.0; 3]), 0, DataType::U8);
    assert_refused(
        json(),
        vec![(id, image, small)],
        &["<memory>/Toy/toy_001", "shape"],
    );

    assert_refused(
        json(),
        vec![case(2), case(2)],
        &["'toy_002' is given twice"],
    );

    let (id, mut image, labels) = case(4);
    image.data.pop();
    assert_refused(
        json(),
        vec![(id, image, labels)],
        &["<memory>/Toy/toy_004", "voxels"],
    );

    let (_, image, labels) = case(5);
    assert_refused(
        json(),
        vec![("a/b".into(), image, labels)],
        &["case id 'a/b'"],
    );

    let mut unnamed = json();
    unnamed.name = None;
    assert_refused(unnamed, vec![case(3)], &["needs a name"]);
}
