//! Evaluation of a set of cases: metrics per case and class, their summary (mean, standard
//! deviation, minimum), the cross-task confusion of multi-task models, written as CSV, JSON
//! and a Markdown summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::metrics::{ClassMetrics, class_metrics};
use crate::error::Result;
use crate::io::{Grid, atomic};

/// A class to evaluate: its id in the label maps and its name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassSpec {
    pub id: u16,
    pub name: String,
}

/// Where a multi-task model put a scan's voxels.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CaseConfusion {
    /// The task the scan belongs to.
    pub scan_task: String,
    pub scan_voxels: usize,
    /// Voxels given any foreground class.
    pub foreground_voxels: usize,
    /// Voxels given a class of each task.
    pub voxels_by_task: BTreeMap<String, usize>,
}

impl CaseConfusion {
    /// Voxels given a class of another task than the scan's.
    pub fn other_task_voxels(&self) -> usize {
        self.voxels_by_task
            .iter()
            .filter(|(t, _)| **t != self.scan_task)
            .map(|(_, v)| v)
            .sum()
    }

    /// Share of the scan's foreground voxels given another task's classes.
    pub fn share_of_foreground(&self) -> f64 {
        self.other_task_voxels() as f64 / self.foreground_voxels.max(1) as f64
    }

    /// Share of all the scan's voxels given another task's classes.
    pub fn share_of_scan(&self) -> f64 {
        self.other_task_voxels() as f64 / self.scan_voxels.max(1) as f64
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseEvaluation {
    pub case: String,
    pub task: String,
    pub classes: Vec<(ClassSpec, ClassMetrics)>,
    pub confusion: Option<CaseConfusion>,
}

/// Metrics of every class of one case (`predicted` and `reference` in the task's ids).
pub fn evaluate_case(
    case: &str,
    task: &str,
    predicted: &[u16],
    reference: &[u16],
    classes: &[ClassSpec],
    grid: &Grid,
    confusion: Option<CaseConfusion>,
) -> CaseEvaluation {
    let spacing = grid.spacing();
    CaseEvaluation {
        case: case.to_string(),
        task: task.to_string(),
        classes: classes
            .iter()
            .map(|c| {
                (
                    c.clone(),
                    class_metrics(predicted, reference, c.id, grid.shape, spacing),
                )
            })
            .collect(),
        confusion,
    }
}

/// Mean, standard deviation and minimum of a metric over cases (absent values skipped).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Statistic {
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub count: usize,
}

impl Statistic {
    pub fn of(values: impl Iterator<Item = Option<f64>>) -> Self {
        let v: Vec<f64> = values.flatten().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Statistic::default();
        }
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        Statistic {
            mean: Some(mean),
            std: Some(var.sqrt()),
            min: Some(v.iter().cloned().fold(f64::INFINITY, f64::min)),
            max: Some(v.iter().cloned().fold(f64::NEG_INFINITY, f64::max)),
            count: v.len(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassSummary {
    pub task: String,
    pub class: ClassSpec,
    pub dice: Statistic,
    pub hd95_mm: Statistic,
    pub assd_mm: Statistic,
}

/// Cross-task confusion of the scans of one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfusionSummary {
    pub scan_task: String,
    pub scans: usize,
    /// Mean share of each scan's voxels given each task's classes.
    pub share_of_scan_by_task: BTreeMap<String, f64>,
    /// Other-task voxels over all foreground voxels of these scans.
    pub share_of_foreground: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvaluationReport {
    pub cases: Vec<CaseEvaluation>,
    pub classes: Vec<ClassSummary>,
    pub confusion: Vec<ConfusionSummary>,
}

impl EvaluationReport {
    pub fn new(cases: Vec<CaseEvaluation>) -> Self {
        let mut classes: Vec<ClassSummary> = Vec::new();
        for case in &cases {
            for (spec, _) in &case.classes {
                if !classes
                    .iter()
                    .any(|c| c.task == case.task && c.class == *spec)
                {
                    classes.push(ClassSummary {
                        task: case.task.clone(),
                        class: spec.clone(),
                        dice: Statistic::default(),
                        hd95_mm: Statistic::default(),
                        assd_mm: Statistic::default(),
                    });
                }
            }
        }
        for summary in &mut classes {
            let metrics: Vec<&ClassMetrics> = cases
                .iter()
                .filter(|c| c.task == summary.task)
                .flat_map(|c| {
                    c.classes
                        .iter()
                        .filter(|(s, _)| *s == summary.class)
                        .map(|(_, m)| m)
                })
                .collect();
            summary.dice = Statistic::of(metrics.iter().map(|m| Some(m.dice)));
            summary.hd95_mm = Statistic::of(metrics.iter().map(|m| m.hd95_mm));
            summary.assd_mm = Statistic::of(metrics.iter().map(|m| m.assd_mm));
        }
        let mut confusion: Vec<ConfusionSummary> = Vec::new();
        for case in &cases {
            let Some(c) = &case.confusion else { continue };
            if confusion.iter().any(|s| s.scan_task == c.scan_task) {
                continue;
            }
            let of_task: Vec<&CaseConfusion> = cases
                .iter()
                .filter_map(|k| k.confusion.as_ref())
                .filter(|k| k.scan_task == c.scan_task)
                .collect();
            let mut share: BTreeMap<String, f64> = BTreeMap::new();
            for k in &of_task {
                for (t, v) in &k.voxels_by_task {
                    *share.entry(t.clone()).or_default() +=
                        *v as f64 / k.scan_voxels.max(1) as f64 / of_task.len() as f64;
                }
            }
            let other: usize = of_task.iter().map(|k| k.other_task_voxels()).sum();
            let foreground: usize = of_task.iter().map(|k| k.foreground_voxels).sum();
            confusion.push(ConfusionSummary {
                scan_task: c.scan_task.clone(),
                scans: of_task.len(),
                share_of_scan_by_task: share,
                share_of_foreground: other as f64 / foreground.max(1) as f64,
            });
        }
        EvaluationReport {
            cases,
            classes,
            confusion,
        }
    }

    pub fn to_csv(&self) -> String {
        let mut out =
            String::from("case,task,label,class,dice,hd95_mm,assd_mm,reference_ml,predicted_ml\n");
        let opt = |v: Option<f64>| v.map_or("NA".to_string(), |x| format!("{x:.4}"));
        for case in &self.cases {
            for (spec, m) in &case.classes {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{:.4},{},{},{:.3},{:.3}",
                    case.case,
                    case.task,
                    spec.id,
                    spec.name,
                    m.dice,
                    opt(m.hd95_mm),
                    opt(m.assd_mm),
                    m.reference_ml,
                    m.predicted_ml
                );
            }
        }
        out
    }

    pub fn to_markdown(&self) -> String {
        let f = |v: Option<f64>, d: usize| v.map_or("n/a".to_string(), |x| format!("{x:.d$}"));
        let mut md = String::from("# Evaluation\n\n");
        let _ = writeln!(
            md,
            "{} cases. Dice, and surface distances in mm (HD95: 95th-percentile Hausdorff; ASSD: average symmetric surface distance; not defined when a mask is empty).\n",
            self.cases.len()
        );
        md.push_str("| task | class | Dice mean | Dice std | Dice min | HD95 mean | ASSD mean | cases |\n|---|---|---|---|---|---|---|---|\n");
        for c in &self.classes {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                c.task,
                c.class.name,
                f(c.dice.mean, 3),
                f(c.dice.std, 3),
                f(c.dice.min, 3),
                f(c.hd95_mm.mean, 2),
                f(c.assd_mm.mean, 2),
                c.dice.count
            );
        }
        if !self.confusion.is_empty() {
            md.push_str("\n## Cross-task confusion\n\nShare of each scan's voxels given the classes of each task (mean over scans), and other-task voxels as a share of all foreground voxels.\n\n");
            let tasks: Vec<String> = self
                .confusion
                .iter()
                .flat_map(|c| c.share_of_scan_by_task.keys().cloned())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let _ = writeln!(
                md,
                "| scans of | {} | other-task share of foreground |",
                tasks.join(" | ")
            );
            let _ = writeln!(md, "|---|{}---|", "---|".repeat(tasks.len()));
            for c in &self.confusion {
                let cells: Vec<String> = tasks
                    .iter()
                    .map(|t| {
                        format!(
                            "{:.4}%",
                            100.0 * c.share_of_scan_by_task.get(t).copied().unwrap_or(0.0)
                        )
                    })
                    .collect();
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.4}% |",
                    c.scan_task,
                    cells.join(" | "),
                    100.0 * c.share_of_foreground
                );
            }
        }
        md
    }

    /// Writes `metrics.csv`, `metrics.json` and `summary.md` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
        atomic::write_bytes(&dir.join("metrics.csv"), self.to_csv().as_bytes())?;
        atomic::write_json(&dir.join("metrics.json"), self)?;
        atomic::write_bytes(&dir.join("summary.md"), self.to_markdown().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_and_confusion() {
        let spec = ClassSpec {
            id: 1,
            name: "organ".into(),
        };
        let grid = Grid::axis_aligned([4, 4, 1], [1.0; 3]);
        let reference: Vec<u16> = (0..16).map(|i| u16::from(i < 8)).collect();
        let perfect = evaluate_case(
            "a",
            "T",
            &reference,
            &reference,
            std::slice::from_ref(&spec),
            &grid,
            None,
        );
        let half: Vec<u16> = (0..16).map(|i| u16::from(i < 4)).collect();
        let confusion = CaseConfusion {
            scan_task: "T".into(),
            scan_voxels: 16,
            foreground_voxels: 5,
            voxels_by_task: [("T".to_string(), 4), ("U".to_string(), 1)].into(),
        };
        let partial = evaluate_case("b", "T", &half, &reference, &[spec], &grid, Some(confusion));
        let report = EvaluationReport::new(vec![perfect, partial]);
        let dice = &report.classes[0].dice;
        assert!((dice.mean.unwrap() - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-9);
        assert!((dice.min.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(report.confusion[0].share_of_foreground, 0.2);
        assert!((report.confusion[0].share_of_scan_by_task["U"] - 1.0 / 16.0).abs() < 1e-12);
        let md = report.to_markdown();
        assert!(md.contains("| T | organ | 0.833 |"), "{md}");
        assert!(report.to_csv().lines().count() == 3);
    }
}
