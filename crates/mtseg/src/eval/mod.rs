//! Stage 8, eval: segmentations against references: per class Dice, HD95 and ASSD in mm,
//! volumes; per case and summarised; and the cross-task confusion of multi-task models.

pub mod edt;
pub mod metrics;

pub use metrics::{ClassMetrics, class_metrics, dice};
