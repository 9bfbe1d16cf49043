//! Stage 8, eval: segmentations against references: per class Dice, HD95 and ASSD in mm,
//! volumes; per case and summarised; and the cross-task confusion of multi-task models.

pub mod edt;
pub mod folders;
pub mod metrics;
pub mod report;

pub use folders::{EvaluationTask, case_id, evaluate_folders, evaluate_pairs};
pub use metrics::{ClassMetrics, class_metrics, dice};
pub use report::{CaseConfusion, CaseEvaluation, ClassSpec, EvaluationReport, evaluate_case};
