//! Stage 9, experiment: the paper's experiment in one call. Every combination of the given
//! tasks (each alone, every pair, ..., all together) is trained with identical settings; each
//! network segments the test cases of its tasks with no task given (the paper's setting: it
//! must recognise what it is looking at); the results form the paper-style table. Finished
//! runs are skipped when the experiment is run again.

mod table;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use table::{ResultsTable, Row};

use crate::datasets::{Split, Splits, Task, TaskSet};
use crate::device::Hardware;
use crate::error::{Error, Result};
use crate::eval::{ClassSpec, EvaluationReport, EvaluationTask, evaluate_pairs};
use crate::infer::{Segmenter, segment_file};
use crate::model::{OutputMode, Preset};
use crate::train::{self, Observer, TrainRequest};

/// One network of the experiment: which tasks it learns, and how its outputs are laid out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub tasks: Vec<usize>,
    pub output_mode: OutputMode,
}

impl RunSpec {
    /// `Brain + Breast`, with the mode noted when it is not the preset's.
    pub fn label(&self, names: &[String], default_mode: OutputMode) -> String {
        let mut label = self
            .tasks
            .iter()
            .map(|&t| names[t].as_str())
            .collect::<Vec<_>>()
            .join(" + ");
        if self.output_mode != default_mode {
            label.push_str(match self.output_mode {
                OutputMode::Union => " (union softmax)",
                OutputMode::PerTask => " (per-task outputs)",
            });
        }
        label
    }

    /// A folder name for the run.
    pub fn folder(&self, names: &[String]) -> String {
        let mut name = self
            .tasks
            .iter()
            .map(|&t| names[t].as_str())
            .collect::<Vec<_>>()
            .join("+");
        if self.output_mode == OutputMode::PerTask {
            name.push_str("__per-task");
        }
        name
    }
}

/// All 2^T - 1 combinations of T tasks: singles first, then pairs, ..., then all.
pub fn all_combinations(tasks: usize, mode: OutputMode) -> Vec<RunSpec> {
    let mut subsets: Vec<Vec<usize>> = (1u32..(1 << tasks))
        .map(|mask| (0..tasks).filter(|t| mask & (1 << t) != 0).collect())
        .collect();
    subsets.sort_by(|a, b| a.len().cmp(&b.len()).then(a.cmp(b)));
    subsets
        .into_iter()
        .map(|tasks| RunSpec {
            tasks,
            output_mode: mode,
        })
        .collect()
}

#[derive(Clone, Debug)]
pub struct ExperimentRequest {
    pub datasets: Vec<PathBuf>,
    pub out: PathBuf,
    pub preset: Preset,
    /// The networks to train; [`all_combinations`] by default.
    pub runs: Vec<RunSpec>,
    /// Where to train and segment.
    pub hardware: Hardware,
}

/// What one finished run left behind (stored as `result.json` in its folder).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub spec: RunSpec,
    pub label: String,
    pub folder: PathBuf,
    pub model: PathBuf,
    pub train_seconds: f64,
    pub iterations: usize,
    pub evaluation: EvaluationReport,
}

/// The test cases of a task: from splits.json or the deterministic default split.
pub fn test_split(task: &Task) -> Result<Split> {
    Splits::find_for(task)?.split_for(task)
}

fn evaluation_task(task: &Task) -> EvaluationTask {
    EvaluationTask {
        name: task.name.clone(),
        classes: task
            .classes
            .iter()
            .map(|(name, id)| ClassSpec {
                id: *id,
                name: name.clone(),
            })
            .collect(),
    }
}

/// Receives the experiment's progress.
pub trait ExperimentObserver {
    /// A run starts (or is skipped because it finished before).
    fn run_started(&mut self, _index: usize, _total: usize, _label: &str, _skipped: bool) {}
    /// The observer that follows the run's training.
    fn training(&mut self) -> &mut dyn Observer;
}

/// Runs (or resumes) the experiment and writes `results.md`, `results.csv` and
/// `results.png` into `request.out`.
pub fn run(
    request: &ExperimentRequest,
    observer: &mut dyn ExperimentObserver,
) -> Result<ResultsTable> {
    let set = TaskSet::open(&request.datasets)?;
    let names: Vec<String> = set.tasks.iter().map(|t| t.name.clone()).collect();
    let splits: Vec<Split> = set.tasks.iter().map(test_split).collect::<Result<_>>()?;
    let default_mode = request.preset.network.output_mode();
    let mut results = Vec::new();
    for (index, spec) in request.runs.iter().enumerate() {
        let label = spec.label(&names, default_mode);
        let folder = request.out.join("runs").join(spec.folder(&names));
        let result_path = folder.join("result.json");
        if let Ok(text) = std::fs::read_to_string(&result_path)
            && let Ok(done) = serde_json::from_str::<RunResult>(&text)
            && done.spec == *spec
        {
            observer.run_started(index, request.runs.len(), &label, true);
            results.push(done);
            continue;
        }
        observer.run_started(index, request.runs.len(), &label, false);
        let result = run_one(request, &set, &splits, spec, &label, &folder, observer)?;
        crate::io::atomic::write_json(&result_path, &result)?;
        results.push(result);
    }
    let table = ResultsTable::new(&set, &results);
    table.write(&request.out)?;
    Ok(table)
}

fn run_one(
    request: &ExperimentRequest,
    set: &TaskSet,
    splits: &[Split],
    spec: &RunSpec,
    label: &str,
    folder: &Path,
    observer: &mut dyn ExperimentObserver,
) -> Result<RunResult> {
    let mut preset = request.preset.clone();
    preset.network.set_output_mode(spec.output_mode);
    let train_request = TrainRequest {
        tasks: spec.tasks.iter().map(|&t| set.tasks[t].clone()).collect(),
        out: folder.to_path_buf(),
        preset,
        resume: true,
        init_weights: None,
        time_budget: None,
        splits: Some(spec.tasks.iter().map(|&t| splits[t].clone()).collect()),
        hardware: request.hardware,
        gpus: 1,
    };
    let outcome = train::train(&train_request, observer.training())?;
    let segmenter = Segmenter::builder()
        .model(outcome.model.clone())
        .hardware(request.hardware)
        .build()?;
    let mut cases = Vec::new();
    for &t in &spec.tasks {
        let task = &set.tasks[t];
        let predictions = folder.join("predictions").join(&task.name);
        std::fs::create_dir_all(&predictions).map_err(|e| Error::io(&predictions, e))?;
        let mut pairs = Vec::new();
        for id in &splits[t].test {
            let case = task
                .case(id)
                .ok_or_else(|| Error::usage(format!("task {}: no test case '{id}'", task.name)))?;
            let output = predictions.join(format!("{id}.nii.gz"));
            // No task given: the network must recognise the scan, as in the paper.
            let (Some(image), Some(reference)) = (case.image_file(), case.label_file()) else {
                unreachable!(
                    "the experiment opens its tasks from folders, and test cases are labelled"
                )
            };
            segment_file(&segmenter, image, &output, None)?;
            pairs.push((output, reference.to_path_buf()));
        }
        if !pairs.is_empty() {
            cases.extend(evaluate_pairs(&pairs, &evaluation_task(task))?.cases);
        }
    }
    let evaluation = EvaluationReport::new(cases);
    evaluation.write(&folder.join("evaluation"))?;
    Ok(RunResult {
        spec: spec.clone(),
        label: label.to_string(),
        folder: folder.to_path_buf(),
        model: outcome.model,
        train_seconds: outcome.seconds,
        iterations: outcome.iterations,
        evaluation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations_of_three_tasks_are_seven() {
        let runs = all_combinations(3, OutputMode::Union);
        let tasks: Vec<Vec<usize>> = runs.iter().map(|r| r.tasks.clone()).collect();
        assert_eq!(
            tasks,
            vec![
                vec![0],
                vec![1],
                vec![2],
                vec![0, 1],
                vec![0, 2],
                vec![1, 2],
                vec![0, 1, 2]
            ]
        );
    }
}
