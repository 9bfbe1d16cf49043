//! Train/test splits. A `splits.json` beside the dataset folders (or inside one) fixes them:
//! `{"Dataset001_X": {"train": [...], "test": [...]}}`, keyed by folder or task name. Without
//! one, a deterministic split puts every fifth case (sorted by id) in the test set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Task;
use crate::error::{Error, Result};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Split {
    pub train: Vec<String>,
    pub test: Vec<String>,
}

/// The splits of a collection of datasets, read from `splits.json` when there is one.
#[derive(Clone, Debug, Default)]
pub struct Splits {
    pub source: Option<PathBuf>,
    entries: BTreeMap<String, Split>,
}

impl Splits {
    /// Looks for `splits.json` inside the dataset folder, then in its parent (none for a
    /// task held in memory).
    pub fn find_for(task: &Task) -> Result<Splits> {
        let Some(folder) = &task.folder else {
            return Ok(Splits::default());
        };
        let candidates = [
            Some(folder.join("splits.json")),
            folder.parent().map(|p| p.join("splits.json")),
        ];
        for path in candidates.into_iter().flatten() {
            if path.is_file() {
                return Splits::read(&path);
            }
        }
        Ok(Splits::default())
    }

    pub fn read(path: &Path) -> Result<Splits> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let entries: BTreeMap<String, Split> = serde_json::from_str(&text).map_err(|e| {
            Error::invalid(
                path,
                format!("not a splits file ({{\"<dataset>\": {{\"train\": [...], \"test\": [...]}}}}): {e}"),
            )
        })?;
        Ok(Splits {
            source: Some(path.to_path_buf()),
            entries,
        })
    }

    /// The split of a task: from the file (by folder name, then task name), else the
    /// deterministic one. Every listed case must exist, and no case may be in both parts.
    pub fn split_for(&self, task: &Task) -> Result<Split> {
        let folder_name = task
            .folder
            .as_deref()
            .and_then(Path::file_name)
            .map_or_else(|| task.name.clone(), |n| n.to_string_lossy().into_owned());
        let listed = self
            .entries
            .get(&folder_name)
            .or_else(|| self.entries.get(&task.name));
        let Some(split) = listed else {
            return Ok(default_split(task));
        };
        let source = self.source.as_deref().unwrap_or(Path::new("splits.json"));
        for id in split.train.iter().chain(&split.test) {
            if !task.training.iter().any(|c| &c.id == id) {
                return Err(Error::invalid(
                    source,
                    format!(
                        "case '{id}' of {folder_name} is not a labelled case of {}",
                        task.origin()
                    ),
                ));
            }
        }
        if let Some(id) = split.train.iter().find(|id| split.test.contains(id)) {
            return Err(Error::invalid(
                source,
                format!("case '{id}' of {folder_name} is in both train and test"),
            ));
        }
        Ok(split.clone())
    }
}

/// Every fifth labelled case (sorted by id) is a test case; datasets of fewer than two cases
/// have no test set. A task held in memory trains on every case: the program chose them.
pub fn default_split(task: &Task) -> Split {
    let mut split = Split::default();
    if task.folder.is_none() {
        split.train = task.training.iter().map(|c| c.id.clone()).collect();
        return split;
    }
    let n = task.training.len();
    for (i, case) in task.training.iter().enumerate() {
        if n >= 2 && (i % 5 == 4 || (n < 5 && i == n - 1)) {
            split.test.push(case.id.clone());
        } else {
            split.train.push(case.id.clone());
        }
    }
    split
}

/// Takes held-out validation cases from a training list: about 10%, at least one when three
/// or more cases are left for training, none otherwise. Returns (train, validation).
pub fn hold_out_validation(train: &[String]) -> (Vec<String>, Vec<String>) {
    let n = train.len();
    let k = if n >= 3 { (n / 10).max(1) } else { 0 };
    (train[..n - k].to_vec(), train[n - k..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_takes_a_tenth_but_never_everything() {
        let ids: Vec<String> = (0..20).map(|i| format!("c{i:02}")).collect();
        let (t, v) = hold_out_validation(&ids);
        assert_eq!((t.len(), v.len()), (18, 2));
        let (t, v) = hold_out_validation(&ids[..2]);
        assert_eq!((t.len(), v.len()), (2, 0));
        let (t, v) = hold_out_validation(&ids[..7]);
        assert_eq!((t.len(), v.len()), (6, 1));
    }
}
