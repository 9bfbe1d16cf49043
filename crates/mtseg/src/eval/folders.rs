//! `evaluate` on folders: predictions matched to references by case name, label values
//! translated with the prediction's sidecar (dataset or joint ids), confusion counted when
//! the sidecar shows other tasks' classes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::report::{CaseConfusion, ClassSpec, EvaluationReport, evaluate_case};
use crate::datasets::{DatasetJson, LabelId, check_same_grid, task_name_from_folder};
use crate::error::{Error, Result};
use crate::infer::sidecar_path;
use crate::io;

/// `case.nii.gz` -> `case`, `case_0000.nii.gz` -> `case`.
pub fn case_id(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    let cut = [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"]
        .iter()
        .find(|e| lower.ends_with(*e))
        .map_or(name.len(), |e| name.len() - e.len());
    name[..cut].trim_end_matches("_0000").to_string()
}

fn volumes_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && io::is_volume_file(p))
        .collect();
    files.sort();
    Ok(files)
}

/// The evaluated task's name and classes: from dataset.json when given, else the label
/// values found in the references.
pub struct EvaluationTask {
    pub name: String,
    pub classes: Vec<ClassSpec>,
}

impl EvaluationTask {
    pub fn from_dataset_json(path: &Path, name: Option<String>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: DatasetJson = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(path, format!("not a valid dataset.json: {e}")))?;
        let mut classes: Vec<ClassSpec> = json
            .labels
            .iter()
            .filter_map(|(n, id)| match id {
                LabelId::Single(id) if *id > 0 => Some(ClassSpec {
                    id: *id as u16,
                    name: n.clone(),
                }),
                _ => None,
            })
            .collect();
        classes.sort_by_key(|c| c.id);
        let name = name.or(json.name.clone()).unwrap_or_else(|| {
            path.parent()
                .map(task_name_from_folder)
                .unwrap_or_else(|| "task".into())
        });
        Ok(EvaluationTask { name, classes })
    }
}

/// What a prediction's sidecar says about its values.
struct Sidecar {
    label_values: String,
    task: Option<String>,
    labels: BTreeMap<u16, String>,
}

fn read_sidecar(prediction: &Path) -> Option<Sidecar> {
    let text = std::fs::read_to_string(sidecar_path(prediction)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let labels = v
        .get("labels")?
        .as_object()?
        .iter()
        .filter_map(|(k, n)| Some((k.parse().ok()?, n.as_str()?.to_string())))
        .collect();
    Some(Sidecar {
        label_values: v.get("label_values")?.as_str()?.to_string(),
        task: v.get("task").and_then(|t| t.as_str()).map(String::from),
        labels,
    })
}

/// The prediction in the evaluated task's ids, and the confusion when the sidecar allows it.
fn translate(
    predicted: Vec<u16>,
    sidecar: Option<&Sidecar>,
    task: &EvaluationTask,
) -> (Vec<u16>, Option<CaseConfusion>) {
    let Some(sidecar) = sidecar else {
        return (predicted, None);
    };
    let scan_voxels = predicted.len();
    let foreground_voxels = predicted.iter().filter(|&&l| l > 0).count();
    let confusion = |voxels_by_task| CaseConfusion {
        scan_task: task.name.clone(),
        scan_voxels,
        foreground_voxels,
        voxels_by_task,
    };
    match (sidecar.label_values.as_str(), &sidecar.task) {
        ("dataset", Some(t)) if *t == task.name => {
            let by_task = [(t.clone(), foreground_voxels)].into();
            (predicted, Some(confusion(by_task)))
        }
        ("dataset", Some(t)) => {
            // Every foreground voxel was given another task's class.
            let by_task = [(t.clone(), foreground_voxels), (task.name.clone(), 0)].into();
            (vec![0; scan_voxels], Some(confusion(by_task)))
        }
        _ => {
            // Joint ids: "Task/class" names tell each value's task.
            let mut lookup: BTreeMap<u16, (String, u16)> = BTreeMap::new();
            for (value, name) in &sidecar.labels {
                if let Some((t, class)) = name.split_once('/') {
                    let id = if t == task.name {
                        task.classes
                            .iter()
                            .find(|c| c.name == class)
                            .map_or(0, |c| c.id)
                    } else {
                        0
                    };
                    lookup.insert(*value, (t.to_string(), id));
                }
            }
            let mut by_task: BTreeMap<String, usize> = BTreeMap::new();
            by_task.insert(task.name.clone(), 0);
            let translated = predicted
                .iter()
                .map(|v| match lookup.get(v) {
                    Some((t, id)) => {
                        *by_task.entry(t.clone()).or_default() += 1;
                        *id
                    }
                    None => 0,
                })
                .collect();
            (translated, Some(confusion(by_task)))
        }
    }
}

/// Evaluates every reference in `references` against the prediction of the same case.
pub fn evaluate_folders(
    predictions: &Path,
    references: &Path,
    task: Option<EvaluationTask>,
) -> Result<EvaluationReport> {
    let refs = volumes_in(references)?;
    if refs.is_empty() {
        return Err(Error::invalid(
            references,
            "no reference label maps in this folder",
        ));
    }
    let preds = volumes_in(predictions)?;
    let pairs: Vec<(PathBuf, PathBuf)> = refs
        .iter()
        .map(|r| {
            let id = case_id(r);
            preds
                .iter()
                .find(|p| case_id(p) == id)
                .map(|p| (p.clone(), r.clone()))
                .ok_or_else(|| {
                    Error::invalid(
                        predictions,
                        format!("no prediction for case '{id}' (expected {id}.nii.gz)"),
                    )
                })
        })
        .collect::<Result<_>>()?;
    let task = match task {
        Some(t) => t,
        None => {
            // Classes from the label values found in the references.
            let mut values = std::collections::BTreeSet::new();
            for (_, r) in &pairs {
                values.extend(io::read_labels(r)?.label_values());
            }
            EvaluationTask {
                name: references
                    .parent()
                    .map(task_name_from_folder)
                    .unwrap_or_else(|| "task".into()),
                classes: values
                    .into_iter()
                    .filter(|&v| v > 0)
                    .map(|v| ClassSpec {
                        id: v,
                        name: format!("label_{v}"),
                    })
                    .collect(),
            }
        }
    };
    evaluate_pairs(&pairs, &task)
}

/// Evaluates (prediction, reference) file pairs of one task.
pub fn evaluate_pairs(
    pairs: &[(PathBuf, PathBuf)],
    task: &EvaluationTask,
) -> Result<EvaluationReport> {
    let cases = pairs
        .par_iter()
        .map(|(p, r)| {
            let reference = io::read_labels(r)?;
            let predicted = io::read_labels(p)?;
            check_same_grid(p, &predicted.grid, &reference.grid)?;
            let sidecar = read_sidecar(p);
            let (values, confusion) = translate(predicted.data, sidecar.as_ref(), task);
            Ok(evaluate_case(
                &case_id(r),
                &task.name,
                &values,
                &reference.data,
                &task.classes,
                &reference.grid,
                confusion,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(EvaluationReport::new(cases))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joint_predictions_translate_and_count_confusion() {
        let task = EvaluationTask {
            name: "Brain".into(),
            classes: vec![
                ClassSpec {
                    id: 1,
                    name: "gm".into(),
                },
                ClassSpec {
                    id: 2,
                    name: "wm".into(),
                },
            ],
        };
        let sidecar = Sidecar {
            label_values: "joint".into(),
            task: None,
            labels: [
                (0, "background".into()),
                (1, "Brain/gm".into()),
                (2, "Brain/wm".into()),
                (3, "Heart/vessel".into()),
            ]
            .into(),
        };
        let (values, confusion) = translate(vec![0, 1, 2, 3, 3], Some(&sidecar), &task);
        assert_eq!(values, vec![0, 1, 2, 0, 0]);
        let c = confusion.unwrap();
        assert_eq!(c.other_task_voxels(), 2);
        assert_eq!(c.foreground_voxels, 4);
        assert_eq!(c.voxels_by_task["Brain"], 2);
    }

    #[test]
    fn case_ids_drop_endings_and_channel_suffix() {
        assert_eq!(case_id(Path::new("x/IXI012_0000.nii.gz")), "IXI012");
        assert_eq!(case_id(Path::new("IXI012.nii")), "IXI012");
    }
}
