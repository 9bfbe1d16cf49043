//! What each output channel of the class layer means, in both output modes, and how logits
//! become probabilities for the whole label space or for one task.

use serde::{Deserialize, Serialize};

use super::config::OutputMode;
use crate::datasets::LabelSpace;

/// The meaning of the class layer's channels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputLayout {
    pub mode: OutputMode,
    /// For each task, its softmax group: the background channel first, then one channel
    /// per class in the task's order. In union mode every group starts with the shared
    /// background channel 0.
    pub groups: Vec<Vec<usize>>,
    /// The joint label id (0 = background) each channel stands for.
    pub joint_of_channel: Vec<u16>,
}

impl OutputLayout {
    pub fn new(space: &LabelSpace, mode: OutputMode) -> Self {
        let mut groups = Vec::new();
        let mut joint_of_channel = Vec::new();
        match mode {
            OutputMode::Union => {
                joint_of_channel = (0..space.num_classes() as u16).collect();
                for task in 0..space.tasks.len() {
                    let mut g = vec![0];
                    g.extend(space.task_classes(task).iter().map(|&j| j as usize));
                    groups.push(g);
                }
            }
            OutputMode::PerTask => {
                for task in 0..space.tasks.len() {
                    let mut g = vec![joint_of_channel.len()];
                    joint_of_channel.push(0);
                    for j in space.task_classes(task) {
                        g.push(joint_of_channel.len());
                        joint_of_channel.push(j);
                    }
                    groups.push(g);
                }
            }
        }
        OutputLayout {
            mode,
            groups,
            joint_of_channel,
        }
    }

    pub fn channels(&self) -> usize {
        self.joint_of_channel.len()
    }

    /// The training target of a voxel of `task` labelled `joint`: the channel in union mode,
    /// the position within the task's group in per-task mode.
    pub fn target(&self, task: usize, joint: u16) -> usize {
        let group = &self.groups[task];
        let position = group
            .iter()
            .position(|&c| self.joint_of_channel[c] == joint)
            .expect("a task's labels are in its group");
        match self.mode {
            OutputMode::Union => group[position],
            OutputMode::PerTask => position,
        }
    }

    /// The channels that compete for a voxel: all of them (union mode without a task), or
    /// one task's group.
    pub fn competing(&self, task: Option<usize>) -> Vec<usize> {
        match task {
            Some(t) => self.groups[t].clone(),
            None => (0..self.channels()).collect(),
        }
    }

    /// Joint label and its probability from one voxel's logits (`channels` values), with
    /// `competing` channels in a softmax.
    pub fn decide(&self, logits: &[f32], competing: &[usize]) -> (u16, f32) {
        let max = competing
            .iter()
            .map(|&c| logits[c])
            .fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        let mut best = (competing[0], f32::NEG_INFINITY);
        for &c in competing {
            sum += (logits[c] - max).exp();
            if logits[c] > best.1 {
                best = (c, logits[c]);
            }
        }
        (self.joint_of_channel[best.0], (best.1 - max).exp() / sum)
    }
}

/// Softmax of task logits (per-task mode), per voxel.
pub fn task_probabilities(task_logits: &[f32]) -> Vec<f32> {
    let max = task_logits
        .iter()
        .cloned()
        .fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = task_logits.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|v| v / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::{ClassInfo, Modality, TaskInfo};

    fn space() -> LabelSpace {
        let task = |name: &str| TaskInfo {
            name: name.into(),
            modality: Modality::MR,
        };
        LabelSpace {
            tasks: vec![task("A"), task("B")],
            classes: vec![
                ClassInfo {
                    task: 0,
                    name: "a1".into(),
                    dataset_id: 1,
                },
                ClassInfo {
                    task: 0,
                    name: "a2".into(),
                    dataset_id: 2,
                },
                ClassInfo {
                    task: 1,
                    name: "b1".into(),
                    dataset_id: 1,
                },
            ],
        }
    }

    #[test]
    fn union_layout_is_the_joint_space() {
        let l = OutputLayout::new(&space(), OutputMode::Union);
        assert_eq!(l.channels(), 4);
        assert_eq!(l.groups, vec![vec![0, 1, 2], vec![0, 3]]);
        assert_eq!(l.target(1, 3), 3);
        assert_eq!(l.target(1, 0), 0);
    }

    #[test]
    fn per_task_layout_gives_each_task_its_background() {
        let l = OutputLayout::new(&space(), OutputMode::PerTask);
        assert_eq!(l.channels(), 5);
        assert_eq!(l.groups, vec![vec![0, 1, 2], vec![3, 4]]);
        assert_eq!(l.joint_of_channel, vec![0, 1, 2, 0, 3]);
        assert_eq!(l.target(1, 3), 1);
        assert_eq!(l.target(1, 0), 0);
    }

    #[test]
    fn decisions_respect_the_competing_channels() {
        let l = OutputLayout::new(&space(), OutputMode::Union);
        let logits = [0.0, 1.0, 0.5, 3.0];
        assert_eq!(l.decide(&logits, &l.competing(None)).0, 3);
        let (label, p) = l.decide(&logits, &l.competing(Some(0)));
        assert_eq!(label, 1);
        let expected = 1f32.exp() / (0f32.exp() + 1f32.exp() + 0.5f32.exp());
        assert!((p - expected).abs() < 1e-6);
    }
}
