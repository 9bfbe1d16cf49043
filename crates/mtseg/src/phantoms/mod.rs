//! Synthetic phantoms of the paper's three tasks, written as nnU-Net raw datasets:
//! brain T1 MRI (six tissues), breast T1 MRI (pectoral muscle) and cardiac CT angiography
//! (coronary arteries). Each phantom is an [`Anatomy`]: a function from a world point to a
//! label and a clean intensity; image formation (blur, bias field, noise) is added per
//! modality. Deterministic per seed, varied per case.

pub mod brain;
pub mod breast;
pub mod cardiac;
pub mod shapes;

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::datasets::{DatasetJson, LabelId, Split, write_dataset_json};
use crate::error::{Error, Result};
use crate::io::{self, DataType, Grid, Image, LabelMap, Volume};
use crate::preprocess::filter::gaussian_blur;
use crate::report::overlay::{View, save_png, stacked};
use shapes::{SmoothField, Vec3, gaussian, rician_noise, uniform};

/// What an anatomy says about one world point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub label: u16,
    pub intensity: f64,
}

impl Sample {
    pub fn new(label: u16, intensity: f64) -> Self {
        Sample { label, intensity }
    }
}

pub trait Anatomy: Sync {
    fn sample(&self, p: Vec3) -> Sample;
}

/// The paper's three tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum PhantomTask {
    Brain,
    Breast,
    Cardiac,
}

impl PhantomTask {
    pub const ALL: [PhantomTask; 3] = [
        PhantomTask::Brain,
        PhantomTask::Breast,
        PhantomTask::Cardiac,
    ];

    /// The nnU-Net folder name; the task name is what follows `DatasetNNN_`.
    pub fn folder_name(self) -> &'static str {
        match self {
            PhantomTask::Brain => "Dataset901_PhantomBrainMRI",
            PhantomTask::Breast => "Dataset902_PhantomBreastMRI",
            PhantomTask::Cardiac => "Dataset903_PhantomCardiacCTA",
        }
    }

    pub fn classes(self) -> &'static [&'static str] {
        match self {
            PhantomTask::Brain => &brain::CLASSES,
            PhantomTask::Breast => &breast::CLASSES,
            PhantomTask::Cardiac => &cardiac::CLASSES,
        }
    }

    fn channel_name(self) -> &'static str {
        match self {
            PhantomTask::Cardiac => "CT",
            _ => "T1",
        }
    }

    fn fov_mm(self) -> f64 {
        match self {
            PhantomTask::Brain => brain::FOV_MM,
            PhantomTask::Breast => breast::FOV_MM,
            PhantomTask::Cardiac => cardiac::FOV_MM,
        }
    }

    fn description(self) -> &'static str {
        match self {
            PhantomTask::Brain => "mtseg phantom: brain T1 MRI, six tissue classes",
            PhantomTask::Breast => "mtseg phantom: breast T1 MRI, pectoral muscle",
            PhantomTask::Cardiac => "mtseg phantom: cardiac CT angiography, coronary arteries",
        }
    }

    fn case_id(self, index: usize) -> String {
        let prefix = match self {
            PhantomTask::Brain => "brain",
            PhantomTask::Breast => "breast",
            PhantomTask::Cardiac => "cardiac",
        };
        format!("{prefix}_{index:03}")
    }
}

/// The phantom grid: isotropic, RAS axes, centred on the world origin.
pub fn phantom_grid(task: PhantomTask, size: usize) -> Grid {
    let spacing = task.fov_mm() / size as f64;
    let mut grid = Grid::axis_aligned([size; 3], [spacing; 3]);
    for axis in 0..3 {
        grid.affine[(axis, 3)] = -(size as f64 - 1.0) / 2.0 * spacing;
    }
    grid
}

/// One phantom case: the image (as the modality stores it) and its label map.
pub fn generate_case(task: PhantomTask, size: usize, seed: u64, index: usize) -> (Image, LabelMap) {
    let task_code = PhantomTask::ALL
        .iter()
        .position(|&t| t == task)
        .unwrap_or(0) as u64;
    let mut rng = ChaCha8Rng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (task_code << 48) ^ index as u64,
    );
    let grid = phantom_grid(task, size);
    let spacing = grid.spacing()[0];
    let (labels, mut intensity) = match task {
        PhantomTask::Brain => render(&brain::Brain::new(&mut rng), &grid),
        PhantomTask::Breast => render(&breast::Breast::new(&mut rng), &grid),
        PhantomTask::Cardiac => render(&cardiac::Cardiac::new(&mut rng, spacing), &grid),
    };
    // The scanner's point-spread function: partial volume at every edge.
    gaussian_blur(&mut intensity, grid.shape, 0.55);
    let datatype = DataType::I16;
    match task {
        PhantomTask::Cardiac => {
            let sigma = uniform(&mut rng, 15.0, 35.0);
            for v in intensity.iter_mut() {
                *v = (*v as f64 + sigma * gaussian(&mut rng))
                    .clamp(-1024.0, 3071.0)
                    .round() as f32;
            }
        }
        _ => {
            // Coil sensitivity: a smooth multiplicative bias field; then Rician noise.
            let strength = if task == PhantomTask::Breast {
                0.3
            } else {
                0.15
            };
            let bias = SmoothField::new(&mut rng, 2.0 * task.fov_mm(), 3);
            let gain = uniform(&mut rng, 600.0, 1400.0);
            for (i, v) in intensity.iter_mut().enumerate() {
                let p = grid.world(grid.coords(i).map(|c| c as f64));
                *v = (*v as f64 * gain * (strength * bias.at(p)).exp()) as f32;
            }
            let noise = gain * uniform(&mut rng, 0.02, 0.04);
            rician_noise(&mut intensity, noise, &mut rng);
            for v in intensity.iter_mut() {
                *v = v.round();
            }
        }
    }
    let image = Volume::filled(grid.clone(), 0f32, datatype).with_data(intensity);
    let labels = Volume::filled(grid, 0u16, DataType::U8).with_data(labels);
    (image, labels)
}

fn render(anatomy: &impl Anatomy, grid: &Grid) -> (Vec<u16>, Vec<f32>) {
    let samples: Vec<Sample> = (0..grid.len())
        .into_par_iter()
        .map(|i| anatomy.sample(grid.world(grid.coords(i).map(|c| c as f64))))
        .collect();
    let labels = samples.iter().map(|s| s.label).collect();
    let intensity = samples.iter().map(|s| s.intensity as f32).collect();
    (labels, intensity)
}

/// Settings of `mtseg phantoms`.
#[derive(Clone, Debug)]
pub struct PhantomOptions {
    pub cases: usize,
    pub size: usize,
    pub seed: u64,
    pub tasks: Vec<PhantomTask>,
}

/// Writes one nnU-Net raw dataset per task under `out`, and a `splits.json` beside them
/// (the last third of the cases, at least one, are test cases). Returns the folders.
pub fn write_datasets(
    out: &Path,
    options: &PhantomOptions,
    mut on_case: impl FnMut(),
) -> Result<Vec<PathBuf>> {
    if options.cases == 0 || options.size < 8 {
        return Err(Error::usage(
            "phantoms need at least 1 case and a size of at least 8",
        ));
    }
    if options.size > 512 {
        return Err(Error::usage(
            "phantom size is limited to 512 voxels per side",
        ));
    }
    let mut folders = Vec::new();
    let mut splits = serde_json::Map::new();
    for &task in &options.tasks {
        let folder = out.join(task.folder_name());
        for sub in ["imagesTr", "labelsTr"] {
            let dir = folder.join(sub);
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        let mut split = Split::default();
        let n_test = if options.cases >= 2 {
            (options.cases / 3).max(1)
        } else {
            0
        };
        for index in 0..options.cases {
            let id = task.case_id(index);
            let (image, labels) = generate_case(task, options.size, options.seed, index);
            io::write_image_as(
                &folder.join(format!("imagesTr/{id}_0000.nii.gz")),
                &image,
                DataType::I16,
            )?;
            io::write_labels(&folder.join(format!("labelsTr/{id}.nii.gz")), &labels)?;
            if index >= options.cases - n_test {
                split.test.push(id);
            } else {
                split.train.push(id);
            }
            on_case();
        }
        let json = DatasetJson {
            name: None,
            description: Some(task.description().to_string()),
            channel_names: [("0".to_string(), task.channel_name().to_string())].into(),
            labels: std::iter::once(("background".to_string(), LabelId::Single(0)))
                .chain(
                    task.classes()
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (c.to_string(), LabelId::Single(i as i64 + 1))),
                )
                .collect(),
            num_training: options.cases,
            file_ending: ".nii.gz".to_string(),
            other: [
                (
                    "licence".to_string(),
                    serde_json::json!("CC0 (synthetic, made by mtseg)"),
                ),
                (
                    "mtseg_phantom".to_string(),
                    serde_json::json!({"size": options.size, "seed": options.seed}),
                ),
            ]
            .into(),
        };
        write_dataset_json(&folder, &json)?;
        splits.insert(
            task.folder_name().to_string(),
            serde_json::to_value(&split).expect("a split serialises"),
        );
        folders.push(folder);
    }
    io::atomic::write_json(&out.join("splits.json"), &serde_json::Value::Object(splits))?;
    Ok(folders)
}

/// A PNG montage of a phantom dataset: one row per case (at most three), each with the
/// axial, coronal and sagittal slices through the centre, labels overlaid.
pub fn write_preview(
    folder: &Path,
    task: PhantomTask,
    options: &PhantomOptions,
) -> Result<PathBuf> {
    let rows = (0..options.cases.min(3))
        .map(|index| {
            let id = task.case_id(index);
            let image = io::read_image(&folder.join(format!("imagesTr/{id}_0000.nii.gz")))?;
            let labels = io::read_labels(&folder.join(format!("labelsTr/{id}.nii.gz")))?;
            let view = View::new(&image, Some(&labels))?;
            Ok(view.three_planes(image.grid.shape.map(|s| s / 2), 200))
        })
        .collect::<Result<Vec<_>>>()?;
    let path = folder.join("preview.png");
    save_png(&path, &stacked(&rows, 4))?;
    Ok(path)
}

/// Share of the voxels of each label value (index = label).
pub fn label_fractions(labels: &LabelMap, classes: usize) -> Vec<f64> {
    let mut counts = vec![0usize; classes + 1];
    for &l in &labels.data {
        if (l as usize) <= classes {
            counts[l as usize] += 1;
        }
    }
    counts
        .iter()
        .map(|&c| c as f64 / labels.data.len() as f64)
        .collect()
}

#[cfg(test)]
mod tests;
