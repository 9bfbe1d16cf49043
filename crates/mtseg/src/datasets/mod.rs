//! Stage 2, datasets: nnU-Net v2 raw dataset folders read as they are, each one a *task*.
//!
//! A folder holds `dataset.json`, `imagesTr/<case>_0000<ending>`, `labelsTr/<case><ending>`
//! and optionally `imagesTs/`. A program can hold a task's cases in memory instead
//! ([`Task::in_memory`]), with the same dataset.json contract. Several tasks together form a
//! [`TaskSet`] with one joint [`LabelSpace`]: background 0 shared, then every task's classes,
//! named `task/class`.

mod label_space;
mod splits;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use label_space::{ClassInfo, LabelSpace, TaskInfo};
pub use splits::{Split, Splits, hold_out_validation};

use crate::error::{Error, Result};
use crate::io::{self, Grid, Image, LabelMap};

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

impl DatasetJson {
    /// The contract of a task held in memory: its name, the channel's name ("CT" means CT,
    /// anything else MR, as in nnU-Net) and the labels, background 0 included.
    ///
    /// ```
    /// let json = mtseg::datasets::DatasetJson::new(
    ///     "Hippocampus",
    ///     "MRI",
    ///     &[("background", 0), ("anterior", 1), ("posterior", 2)],
    /// );
    /// assert_eq!(json.labels.len(), 3);
    /// ```
    pub fn new(name: &str, channel: &str, labels: &[(&str, u16)]) -> Self {
        DatasetJson {
            name: Some(name.to_string()),
            description: None,
            channel_names: BTreeMap::from([("0".to_string(), channel.to_string())]),
            labels: labels
                .iter()
                .map(|&(label, id)| (label.to_string(), LabelId::Single(id.into())))
                .collect(),
            num_training: 0,
            file_ending: ".nii.gz".to_string(),
            other: BTreeMap::new(),
        }
    }
}

/// One case of a task: its image and, for training cases, its label map.
#[derive(Clone, Debug)]
pub struct Case {
    pub id: String,
    pub data: CaseData,
}

/// Where a case's voxels are.
#[derive(Clone)]
pub enum CaseData {
    /// Files of an nnU-Net folder: the image and, for a labelled case, its label map.
    Files {
        image: PathBuf,
        label: Option<PathBuf>,
    },
    /// A labelled case a program holds ([`Task::in_memory`]); shared, not copied, when the
    /// task is cloned.
    Memory {
        image: Arc<Image>,
        labels: Arc<LabelMap>,
    },
}

impl fmt::Debug for CaseData {
    /// Files by path, held volumes by shape (not their voxels).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaseData::Files { image, label } => f
                .debug_struct("Files")
                .field("image", image)
                .field("label", label)
                .finish(),
            CaseData::Memory { image, .. } => f
                .debug_struct("Memory")
                .field("shape", &image.grid.shape)
                .finish(),
        }
    }
}

impl Case {
    /// A case of an nnU-Net folder.
    pub fn files(id: &str, image: PathBuf, label: Option<PathBuf>) -> Case {
        Case {
            id: id.to_string(),
            data: CaseData::Files { image, label },
        }
    }

    /// The image file, for a case of a folder.
    pub fn image_file(&self) -> Option<&Path> {
        match &self.data {
            CaseData::Files { image, .. } => Some(image),
            CaseData::Memory { .. } => None,
        }
    }

    /// The label file, for a labelled case of a folder.
    pub fn label_file(&self) -> Option<&Path> {
        match &self.data {
            CaseData::Files { label, .. } => label.as_deref(),
            CaseData::Memory { .. } => None,
        }
    }

    pub fn is_labelled(&self) -> bool {
        match &self.data {
            CaseData::Files { label, .. } => label.is_some(),
            CaseData::Memory { .. } => true,
        }
    }
}

/// What errors about a held case name in place of a file: `<memory>/<task>/<case>`.
fn memory_case_path(task: &str, id: &str) -> PathBuf {
    PathBuf::from(format!("<memory>/{task}/{id}"))
}

/// One nnU-Net dataset folder, or cases a program holds, read as a segmentation task.
#[derive(Clone, Debug)]
pub struct Task {
    pub name: String,
    /// The dataset folder; `None` for a task held in memory.
    pub folder: Option<PathBuf>,
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

    /// A task whose labelled cases a program holds: `(id, image, label map)`, every label map
    /// on its image's grid and holding only ids of `json`'s labels. Training uses every case
    /// (a few held out for validation) unless it is given a split.
    ///
    /// ```
    /// use mtseg::datasets::{DatasetJson, Task};
    /// use mtseg::io::{DataType, Grid, Image, LabelMap};
    ///
    /// let grid = Grid::axis_aligned([8, 8, 8], [1.0; 3]);
    /// let image = Image::filled(grid.clone(), 0.0, DataType::F32);
    /// let mut labels = LabelMap::filled(grid, 0, DataType::U8);
    /// labels.data[0] = 1;
    /// let json = DatasetJson::new("Toy", "MRI", &[("background", 0), ("blob", 1)]);
    /// let task = Task::in_memory(json, vec![("case1".into(), image, labels)])?;
    /// assert_eq!(task.training.len(), 1);
    /// # Ok::<(), mtseg::Error>(())
    /// ```
    pub fn in_memory(mut json: DatasetJson, cases: Vec<(String, Image, LabelMap)>) -> Result<Task> {
        let Some(name) = json.name.clone() else {
            return Err(Error::usage(
                "a task held in memory needs a name (DatasetJson's `name`)",
            ));
        };
        json.num_training = cases.len();
        let place = PathBuf::from(format!("<memory>/{name}/dataset.json"));
        let (modality, classes) = check_json(&place, &name, &json)?;
        if cases.is_empty() {
            return Err(Error::usage(format!("task {name} has no case")));
        }
        let mut training = Vec::with_capacity(cases.len());
        for (id, mut image, labels) in cases {
            if id.is_empty() || id.contains(['/', '\\']) {
                return Err(Error::usage(format!(
                    "task {name}: case id '{id}' must be non-empty and contain no '/' or '\\'"
                )));
            }
            if training.iter().any(|c: &Case| c.id == id) {
                return Err(Error::usage(format!(
                    "task {name}: case '{id}' is given twice"
                )));
            }
            let place = memory_case_path(&name, &id);
            image.check(&place)?;
            labels.check(&place)?;
            // As the readers do with a file's voxels.
            let bad = io::voxels::replace_non_finite(&mut image.data);
            if bad > 0 {
                tracing::warn!(
                    "{}: {bad} voxels are NaN or infinite; they are taken as 0",
                    place.display()
                );
            }
            training.push(Case {
                id,
                data: CaseData::Memory {
                    image: Arc::new(image),
                    labels: Arc::new(labels),
                },
            });
        }
        training.sort_by(|a, b| a.id.cmp(&b.id));
        let task = Task {
            name,
            folder: None,
            modality,
            classes,
            file_ending: json.file_ending.clone(),
            training,
            test: Vec::new(),
            json,
        };
        task.check()?;
        Ok(task)
    }

    fn from_json(folder: &Path, json: DatasetJson) -> Result<Task> {
        let json_path = folder.join("dataset.json");
        let name = json
            .name
            .clone()
            .unwrap_or_else(|| task_name_from_folder(folder));
        let (modality, classes) = check_json(&json_path, &name, &json)?;
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
            folder: Some(folder.to_path_buf()),
            modality,
            classes,
            file_ending: ending,
            training,
            test,
            json,
        })
    }

    /// Where the task comes from, for messages: its folder, or `<memory>/<name>`.
    pub fn origin(&self) -> String {
        match &self.folder {
            Some(folder) => folder.display().to_string(),
            None => format!("<memory>/{}", self.name),
        }
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
    pub fn load_case(&self, case: &Case) -> Result<(Image, Option<LabelMap>)> {
        match &case.data {
            CaseData::Files { image, label } => {
                let image = io::read_image(image)?;
                let Some(label_path) = label else {
                    return Ok((image, None));
                };
                let labels = io::read_labels(label_path)?;
                self.check_labels(label_path, &labels, &image)?;
                Ok((image, Some(labels)))
            }
            CaseData::Memory { image, labels } => {
                self.check_labels(&memory_case_path(&self.name, &case.id), labels, image)?;
                Ok(((**image).clone(), Some((**labels).clone())))
            }
        }
    }

    /// A label map lies on its image's grid and holds only ids listed in dataset.json.
    fn check_labels(&self, path: &Path, labels: &LabelMap, image: &Image) -> Result<()> {
        check_same_grid(path, &labels.grid, &image.grid)?;
        let allowed = self.allowed_ids();
        if let Some(bad) = labels
            .label_values()
            .into_iter()
            .find(|v| !allowed.contains(v))
        {
            return Err(Error::invalid(
                path,
                format!("label value {bad} is not in dataset.json's labels (allowed: {allowed:?})"),
            ));
        }
        Ok(())
    }

    /// Reads every case once and checks it (see [`Task::load_case`]). Returns one line per
    /// case for a report.
    pub fn check(&self) -> Result<Vec<CaseSummary>> {
        self.training
            .iter()
            .chain(&self.test)
            .map(|case| {
                let summary = |image: &Image, labels: Option<&LabelMap>| CaseSummary {
                    id: case.id.clone(),
                    shape: image.grid.shape,
                    spacing: image.grid.spacing(),
                    axcodes: io::orientation::axcodes(&image.grid.affine),
                    labels: labels.map(|l| l.label_values()),
                };
                match &case.data {
                    // Held volumes are checked where they are, not copied.
                    CaseData::Memory { image, labels } => {
                        let place = memory_case_path(&self.name, &case.id);
                        self.check_labels(&place, labels, image)?;
                        Ok(summary(image, Some(labels)))
                    }
                    CaseData::Files { .. } => {
                        let (image, labels) = self.load_case(case)?;
                        Ok(summary(&image, labels.as_ref()))
                    }
                }
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

/// Checks the parts of dataset.json every task needs; returns the modality and the classes.
fn check_json(
    path: &Path,
    name: &str,
    json: &DatasetJson,
) -> Result<(Modality, Vec<(String, u16)>)> {
    if name.is_empty() || name.contains('/') {
        return Err(Error::invalid(
            path,
            format!("task name '{name}' must be non-empty and contain no '/'"),
        ));
    }
    if json.channel_names.len() != 1 || !json.channel_names.contains_key("0") {
        return Err(Error::invalid(
            path,
            format!(
                "channel_names has {} channels ({:?}): mtseg segments single-channel images (channel \"0\")",
                json.channel_names.len(),
                json.channel_names.keys().collect::<Vec<_>>()
            ),
        ));
    }
    let modality = Modality::from_channel_name(&json.channel_names["0"]);
    Ok((modality, parse_labels(path, &json.labels)?))
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
        cases.push(Case::files(id, entry.path(), label));
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
    /// Opens nnU-Net dataset folders, one task each.
    pub fn open(folders: &[PathBuf]) -> Result<TaskSet> {
        TaskSet::new(
            folders
                .iter()
                .map(|f| Task::open(f))
                .collect::<Result<Vec<_>>>()?,
        )
    }

    /// Tasks from folders or memory, each named once.
    pub fn new(tasks: Vec<Task>) -> Result<TaskSet> {
        if tasks.is_empty() {
            return Err(Error::usage("give at least one task (a dataset folder)"));
        }
        for (i, t) in tasks.iter().enumerate() {
            if let Some(other) = tasks[..i].iter().find(|o| o.name == t.name) {
                return Err(Error::usage(format!(
                    "{} and {} are both task '{}': give each dataset once, or set distinct \"name\" fields",
                    other.origin(),
                    t.origin(),
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
