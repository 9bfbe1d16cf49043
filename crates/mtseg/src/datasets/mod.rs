//! Stage 2, datasets: nnU-Net v2 raw dataset folders read as they are, each one a *task*.
//!
//! A folder holds `dataset.json`, `imagesTr/<case>_0000<ending>`, `labelsTr/<case><ending>`
//! and optionally `imagesTs/`. Several folders together form a [`TaskSet`] with one joint
//! [`LabelSpace`]: background 0 shared, then every task's classes, named `task/class`.

mod label_space;
mod splits;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use label_space::{ClassInfo, LabelSpace, TaskInfo};
pub use splits::{Split, Splits, hold_out_validation};

use crate::error::{Error, Result};
use crate::io::{self, Grid};

/// Imaging modality, which decides the intensity normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Modality {
    CT,
    MR,
}

impl Modality {
    /// nnU-Net's rule: the channel name "CT" means CT, anything else is treated as MR.
    pub fn from_channel_name(name: &str) -> Self {
        if name.trim().eq_ignore_ascii_case("CT") {
            Modality::CT
        } else {
            Modality::MR
        }
    }
}

/// A label id in dataset.json: nnU-Net allows a plain id or, for region-based training, a
/// list of ids.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LabelId {
    Single(i64),
    Region(Vec<i64>),
}

/// The fields of nnU-Net's dataset.json that mtseg uses (others are kept when rewriting).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub channel_names: BTreeMap<String, String>,
    pub labels: BTreeMap<String, LabelId>,
    #[serde(rename = "numTraining")]
    pub num_training: usize,
    pub file_ending: String,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// One case of a dataset: its image and, for training cases, its label map.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    pub id: String,
    pub image: PathBuf,
    pub label: Option<PathBuf>,
}

/// One nnU-Net dataset folder, read as a segmentation task.
#[derive(Clone, Debug)]
pub struct Task {
    pub name: String,
    pub folder: PathBuf,
    pub modality: Modality,
    /// Foreground classes (background excluded) as (name, dataset.json id), sorted by id.
    pub classes: Vec<(String, u16)>,
    pub file_ending: String,
    /// Labelled cases of imagesTr/labelsTr, sorted by id.
    pub training: Vec<Case>,
    /// Unlabelled cases of imagesTs (labelled if labelsTs exists), sorted by id.
    pub test: Vec<Case>,
    pub json: DatasetJson,
}

impl Task {
    /// Reads dataset.json and lists the cases. Files are not opened; see [`Task::check`].
    pub fn open(folder: &Path) -> Result<Task> {
        if !folder.is_dir() {
            return Err(Error::invalid(
                folder,
                "not a dataset folder (expected a folder with dataset.json, imagesTr/, labelsTr/)",
            ));
        }
        let json_path = folder.join("dataset.json");
        let text = std::fs::read_to_string(&json_path).map_err(|e| Error::io(&json_path, e))?;
        let json: DatasetJson = serde_json::from_str(&text).map_err(|e| {
            Error::invalid(&json_path, format!("not a valid nnU-Net dataset.json: {e}"))
        })?;
        Self::from_json(folder, json)
    }

    fn from_json(folder: &Path, json: DatasetJson) -> Result<Task> {
        let json_path = folder.join("dataset.json");
        let name = json
            .name
            .clone()
            .unwrap_or_else(|| task_name_from_folder(folder));
        if name.is_empty() || name.contains('/') {
            return Err(Error::invalid(
                &json_path,
                format!("task name '{name}' must be non-empty and contain no '/'"),
            ));
        }
        if json.channel_names.len() != 1 || !json.channel_names.contains_key("0") {
            return Err(Error::invalid(
                &json_path,
                format!(
                    "channel_names has {} channels ({:?}): mtseg segments single-channel images (channel \"0\")",
                    json.channel_names.len(),
                    json.channel_names.keys().collect::<Vec<_>>()
                ),
            ));
        }
        let modality = Modality::from_channel_name(&json.channel_names["0"]);
        let classes = parse_labels(&json_path, &json.labels)?;
        if !json.file_ending.starts_with('.') {
            return Err(Error::invalid(
                &json_path,
                format!(
                    "file_ending '{}' must start with a dot, e.g. \".nii.gz\"",
                    json.file_ending
                ),
            ));
        }
        let ending = json.file_ending.clone();
        let training = list_cases(folder, "imagesTr", Some("labelsTr"), &ending)?;
        if training.is_empty() {
            return Err(Error::invalid(
                folder.join("imagesTr"),
                format!("no training images named <case>_0000{ending}"),
            ));
        }
        if training.len() != json.num_training {
            tracing::warn!(
                "{}: numTraining is {} but imagesTr holds {} cases",
                json_path.display(),
                json.num_training,
                training.len()
            );
        }
        let labels_ts = folder.join("labelsTs").is_dir().then_some("labelsTs");
        let test = list_cases(folder, "imagesTs", labels_ts, &ending)?;
        Ok(Task {
            name,
            folder: folder.to_path_buf(),
            modality,
            classes,
            file_ending: ending,
            training,
            test,
            json,
        })
    }

    /// The dataset.json ids allowed in label maps: background 0 and every class.
    pub fn allowed_ids(&self) -> Vec<u16> {
        std::iter::once(0)
            .chain(self.classes.iter().map(|(_, id)| *id))
            .collect()
    }

    pub fn case(&self, id: &str) -> Option<&Case> {
        self.training.iter().chain(&self.test).find(|c| c.id == id)
    }

    /// Reads one labelled case and checks it: the label map has the image's grid, and holds
    /// only ids listed in dataset.json.
    pub fn load_case(&self, case: &Case) -> Result<(io::Image, Option<io::LabelMap>)> {
        let image = io::read_image(&case.image)?;
        let Some(label_path) = &case.label else {
            return Ok((image, None));
        };
        let labels = io::read_labels(label_path)?;
        check_same_grid(label_path, &labels.grid, &image.grid)?;
        let allowed = self.allowed_ids();
        if let Some(bad) = labels
            .label_values()
            .into_iter()
            .find(|v| !allowed.contains(v))
        {
            return Err(Error::invalid(
                label_path,
                format!("label value {bad} is not in dataset.json's labels (allowed: {allowed:?})"),
            ));
        }
        Ok((image, Some(labels)))
    }

    /// Reads every case once and checks it (see [`Task::load_case`]). Returns one line per
    /// case for a report.
    pub fn check(&self) -> Result<Vec<CaseSummary>> {
        self.training
            .iter()
            .chain(&self.test)
            .map(|case| {
                let (image, labels) = self.load_case(case)?;
                Ok(CaseSummary {
                    id: case.id.clone(),
                    shape: image.grid.shape,
                    spacing: image.grid.spacing(),
                    axcodes: io::orientation::axcodes(&image.grid.affine),
                    labels: labels.map(|l| l.label_values()),
                })
            })
            .collect()
    }
}

/// What `datasets check` reports per case.
#[derive(Clone, Debug, Serialize)]
pub struct CaseSummary {
    pub id: String,
    pub shape: [usize; 3],
    pub spacing: [f64; 3],
    pub axcodes: [char; 3],
    pub labels: Option<Vec<u16>>,
}

/// Image and label grids must agree: same shape, corners within 1e-3 mm (label maps written
/// by other tools carry float32 affines).
pub fn check_same_grid(path: &Path, grid: &Grid, reference: &Grid) -> Result<()> {
    if grid.shape != reference.shape {
        return Err(Error::invalid(
            path,
            format!(
                "shape {:?} differs from its image's {:?}",
                grid.shape, reference.shape
            ),
        ));
    }
    let distance = grid.max_corner_distance(reference);
    let tolerance = 1e-3 * reference.spacing().iter().cloned().fold(1.0, f64::max);
    if distance > tolerance {
        return Err(Error::invalid(
            path,
            format!("affine differs from its image's: voxel corners lie {distance:.4} mm apart"),
        ));
    }
    Ok(())
}

/// `Dataset001_BrainTissueIXI` -> `BrainTissueIXI`; other names are kept.
pub fn task_name_from_folder(folder: &Path) -> String {
    let name = folder
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.strip_prefix("Dataset") {
        Some(rest)
            if rest.len() > 4
                && rest[..3].bytes().all(|b| b.is_ascii_digit())
                && &rest[3..4] == "_" =>
        {
            rest[4..].to_string()
        }
        _ => name,
    }
}

fn parse_labels(path: &Path, labels: &BTreeMap<String, LabelId>) -> Result<Vec<(String, u16)>> {
    let mut classes = Vec::new();
    let mut background = false;
    for (name, id) in labels {
        let id = match id {
            LabelId::Single(id) => *id,
            LabelId::Region(_) => {
                return Err(Error::invalid(
                    path,
                    format!(
                        "label '{name}' is a region (a list of ids): region-based labels are not supported"
                    ),
                ));
            }
        };
        if !(0..=u16::MAX as i64).contains(&id) {
            return Err(Error::invalid(
                path,
                format!("label '{name}' has id {id}: ids must be 0 to 65535"),
            ));
        }
        if id == 0 {
            background = true;
        } else {
            classes.push((name.clone(), id as u16));
        }
    }
    if !background {
        return Err(Error::invalid(path, "labels must map \"background\" to 0"));
    }
    if classes.is_empty() {
        return Err(Error::invalid(
            path,
            "labels lists no class besides background",
        ));
    }
    classes.sort_by_key(|(_, id)| *id);
    if let Some(w) = classes.windows(2).find(|w| w[0].1 == w[1].1) {
        return Err(Error::invalid(
            path,
            format!("labels '{}' and '{}' share id {}", w[0].0, w[1].0, w[0].1),
        ));
    }
    Ok(classes)
}

/// Lists `<folder>/<images>/<case>_0000<ending>` with the label `<labels>/<case><ending>`.
fn list_cases(
    folder: &Path,
    images: &str,
    labels: Option<&str>,
    ending: &str,
) -> Result<Vec<Case>> {
    let image_dir = folder.join(images);
    if !image_dir.exists() {
        if images == "imagesTr" {
            return Err(Error::invalid(
                &image_dir,
                "missing: a dataset needs imagesTr/",
            ));
        }
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(&image_dir).map_err(|e| Error::io(&image_dir, e))?;
    let mut cases = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&image_dir, e))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name.starts_with('.') || !file_name.ends_with(ending) {
            continue;
        }
        let stem = &file_name[..file_name.len() - ending.len()];
        let Some(id) = stem.strip_suffix("_0000") else {
            return Err(Error::invalid(
                entry.path(),
                format!("image names must be <case>_0000{ending} (single channel)"),
            ));
        };
        let label = match labels {
            Some(dir) => {
                let path = folder.join(dir).join(format!("{id}{ending}"));
                if !path.is_file() {
                    return Err(Error::invalid(
                        &path,
                        format!("missing: the label map for image {file_name}"),
                    ));
                }
                Some(path)
            }
            None => None,
        };
        cases.push(Case {
            id: id.to_string(),
            image: entry.path(),
            label,
        });
    }
    cases.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(cases)
}

/// Several tasks trained or segmented together, with their joint label space.
#[derive(Clone, Debug)]
pub struct TaskSet {
    pub tasks: Vec<Task>,
    pub space: LabelSpace,
}

impl TaskSet {
    pub fn open(folders: &[PathBuf]) -> Result<TaskSet> {
        if folders.is_empty() {
            return Err(Error::usage("give at least one dataset folder"));
        }
        let tasks = folders
            .iter()
            .map(|f| Task::open(f))
            .collect::<Result<Vec<_>>>()?;
        for (i, t) in tasks.iter().enumerate() {
            if let Some(other) = tasks[..i].iter().find(|o| o.name == t.name) {
                return Err(Error::usage(format!(
                    "{} and {} are both task '{}': give each dataset once, or set distinct \"name\" fields",
                    other.folder.display(),
                    t.folder.display(),
                    t.name
                )));
            }
        }
        let space = LabelSpace::from_tasks(&tasks);
        Ok(TaskSet { tasks, space })
    }
}

/// Writes a dataset.json (atomically).
pub fn write_dataset_json(folder: &Path, json: &DatasetJson) -> Result<()> {
    io::atomic::write_json(&folder.join("dataset.json"), json)
}

#[cfg(test)]
mod tests;
