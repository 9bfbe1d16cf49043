//! The quality verdict every segmentation carries: whether it is likely right, and if not,
//! why. A segmentation is `ok` when none of these warns:
//! - the task was recognised with low confidence among the tasks the scan could be, the task
//!   head finds little of the chosen task in the scan, or the scan's extent is unlike any
//!   task's;
//! - a class's volume, or the task's total, is outside the range of the training scans with
//!   margins ([`Expected`]);
//! - many of the labelled voxels were labelled with a low probability;
//! - the scan does not look like the task: its extent is unlike the training scans', a first
//!   look found no foreground to normalise over, or nothing was labelled.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::file::Expected;

/// A recognised task whose share of the task head's probability, among the tasks the scan
/// could be (modality and extent), is below this is uncertain.
pub const RECOGNITION_MIN: f32 = 0.8;
/// A chosen task whose task-head probability over the scan's body is below this is unlike
/// the scan. Set from the training split: the built-in model's lowest on its training scans
/// is 0.53 (a hippocampus crop; whole heads 1.00), a synthetic QA phantom's 0.35.
pub const LIKENESS_MIN: f32 = 0.4;
/// A winning probability below this is a low-confidence decision.
pub const LOW_PROBABILITY: f32 = 0.5;
/// More than this share of the labelled voxels decided with a low probability warns.
pub const LOW_CONFIDENCE_SHARE: f64 = 0.25;

/// The verdict, as the sidecar's `"quality"`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Quality {
    pub ok: bool,
    pub warnings: Vec<String>,
}

/// What the verdict is drawn from.
pub struct Evidence<'a> {
    /// The task the labels belong to, and what its training scans were like (`None` for
    /// models written before the ranges were stored).
    pub task: &'a str,
    pub expected: Option<&'a Expected>,
    /// Without `--task`: the recognised task's probability and every task's that was tried.
    pub recognition: Option<(f32, &'a BTreeMap<String, f32>)>,
    /// No task's training scans had an extent like this scan's.
    pub unlike_every_task: bool,
    /// Volumes on the scan's own grid (ml), per class name.
    pub volumes_ml: &'a BTreeMap<String, f64>,
    /// The scan's largest extent (mm).
    pub extent_mm: f64,
    /// Share of the labelled voxels whose winning probability was below
    /// [`LOW_PROBABILITY`].
    pub low_confidence_share: f64,
    /// For tasks normalised over their foreground: the foreground voxels the first look
    /// found (too few, and the body's normalisation was used).
    pub foreground_found: Option<usize>,
}

pub fn verdict(e: &Evidence) -> Quality {
    let mut warnings = Vec::new();
    if e.unlike_every_task {
        warnings.push(format!(
            "no task of the model was trained on scans of this extent ({:.0} mm): it is \
             segmented as {}, the closest guess",
            e.extent_mm, e.task
        ));
    }
    if let Some((confidence, probabilities)) = e.recognition {
        let tried: f32 = probabilities.values().sum();
        let share = if tried > 0.0 { confidence / tried } else { 0.0 };
        if probabilities.len() > 1 && share < RECOGNITION_MIN {
            let all: Vec<String> = probabilities
                .iter()
                .map(|(t, p)| format!("{t} {p:.2}"))
                .collect();
            warnings.push(format!(
                "task recognition uncertain: {} with {:.0}% of the probability of the tasks \
                 the scan could be ({})",
                e.task,
                100.0 * share,
                all.join(", ")
            ));
        }
        if confidence < LIKENESS_MIN {
            warnings.push(format!(
                "the task head finds little of {} in the scan (probability {confidence:.2}, \
                 under {LIKENESS_MIN})",
                e.task
            ));
        }
    }
    if let Some(found) = e.foreground_found
        && found < crate::preprocess::normalize::MIN_FOREGROUND_VOXELS
    {
        warnings.push(format!(
            "a first look found no {} foreground ({found} voxels): the scan may not show \
             this anatomy, and was normalised over its whole body",
            e.task
        ));
    }
    let total: f64 = e.volumes_ml.values().sum();
    if total == 0.0 {
        warnings.push(format!("nothing was labelled as {}", e.task));
    }
    if let Some(expected) = e.expected {
        let [low, high] = expected.extent_mm;
        if e.extent_mm < low || e.extent_mm > high {
            warnings.push(format!(
                "the scan's extent ({:.0} mm) is unlike the {} training scans' ({low:.0} to \
                 {high:.0} mm with margins)",
                e.extent_mm, e.task
            ));
        }
        let out_of_range = |what: &str, ml: f64, [low, high]: [f64; 2]| {
            (ml < low || ml > high).then(|| {
                format!(
                    "{what} volume {ml:.1} ml is outside the expected {low:.1} to {high:.1} ml \
                     (the training scans' range with margins)"
                )
            })
        };
        warnings.extend(out_of_range(
            &format!("total {}", e.task),
            total,
            expected.total_ml,
        ));
        for (class, ml) in e.volumes_ml {
            if let Some(&range) = expected.class_ml.get(class) {
                warnings.extend(out_of_range(class, *ml, range));
            }
        }
    }
    if e.low_confidence_share > LOW_CONFIDENCE_SHARE {
        warnings.push(format!(
            "{:.0}% of the labelled voxels were decided with a probability below {LOW_PROBABILITY}",
            100.0 * e.low_confidence_share
        ));
    }
    Quality {
        ok: warnings.is_empty(),
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected() -> Expected {
        Expected {
            extent_mm: [120.0, 480.0],
            class_ml: [("grey".to_string(), [300.0, 1400.0])].into(),
            total_ml: [600.0, 3000.0],
        }
    }

    fn evidence<'a>(volumes: &'a BTreeMap<String, f64>, expected: &'a Expected) -> Evidence<'a> {
        Evidence {
            task: "Brain",
            expected: Some(expected),
            recognition: None,
            unlike_every_task: false,
            volumes_ml: volumes,
            extent_mm: 240.0,
            low_confidence_share: 0.05,
            foreground_found: Some(100_000),
        }
    }

    #[test]
    fn a_typical_segmentation_is_ok() {
        let (volumes, expected) = ([("grey".to_string(), 650.0)].into(), expected());
        let q = verdict(&evidence(&volumes, &expected));
        assert_eq!(
            q,
            Quality {
                ok: true,
                warnings: vec![]
            }
        );
    }

    #[test]
    fn every_sign_of_a_wrong_segmentation_warns() {
        let expected = expected();
        let tiny: BTreeMap<String, f64> = [("grey".to_string(), 77.0)].into();
        let q = verdict(&evidence(&tiny, &expected));
        assert!(!q.ok);
        assert_eq!(q.warnings.len(), 2, "{:?}", q.warnings);
        assert!(q.warnings[0].contains("total Brain volume 77.0 ml"));
        assert!(q.warnings[1].starts_with("grey volume 77.0 ml"));

        let fine: BTreeMap<String, f64> = [("grey".to_string(), 650.0)].into();
        let probabilities: BTreeMap<String, f32> =
            [("Brain".to_string(), 0.6), ("Hippo".to_string(), 0.4)].into();
        let alone: BTreeMap<String, f32> = [("Brain".to_string(), 0.3)].into();
        let nothing: BTreeMap<String, f64> = [("grey".to_string(), 0.0)].into();
        let mut e = evidence(&nothing, &expected);
        e.expected = None;
        assert_eq!(verdict(&e).warnings, vec!["nothing was labelled as Brain"]);
        for what in [
            "recognition",
            "finds little",
            "scans of this extent",
            "first look",
            "extent",
            "probability below",
        ] {
            let mut e = evidence(&fine, &expected);
            match what {
                "recognition" => e.recognition = Some((0.6, &probabilities)),
                "finds little" => e.recognition = Some((0.3, &alone)),
                "scans of this extent" => e.unlike_every_task = true,
                "first look" => e.foreground_found = Some(10),
                "extent" => e.extent_mm = 50.0,
                _ => e.low_confidence_share = 0.4,
            }
            let q = verdict(&e);
            assert!(!q.ok, "{what}");
            assert_eq!(q.warnings.len(), 1, "{what}: {:?}", q.warnings);
            assert!(q.warnings[0].contains(what), "{what}: {:?}", q.warnings);
        }
    }
}
