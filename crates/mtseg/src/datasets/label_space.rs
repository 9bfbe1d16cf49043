//! The joint label space of a multi-task set: 0 is background for every task, then each
//! task's classes in order (task 0's classes, task 1's, ...). This is the output layer of the
//! paper's network.

use serde::{Deserialize, Serialize};

use super::{Modality, Task};

/// One foreground class of the joint space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassInfo {
    /// Index of the task in [`LabelSpace::tasks`].
    pub task: usize,
    /// The class name from dataset.json.
    pub name: String,
    /// The class id in its dataset's label maps.
    pub dataset_id: u16,
}

/// A task as the label space (and a model file) remembers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub name: String,
    pub modality: Modality,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSpace {
    pub tasks: Vec<TaskInfo>,
    /// Joint id `i + 1` is `classes[i]`; joint id 0 is the shared background.
    pub classes: Vec<ClassInfo>,
}

impl LabelSpace {
    pub fn from_tasks(tasks: &[Task]) -> Self {
        let infos = tasks
            .iter()
            .map(|t| TaskInfo {
                name: t.name.clone(),
                modality: t.modality,
            })
            .collect();
        let classes = tasks
            .iter()
            .enumerate()
            .flat_map(|(task, t)| {
                t.classes.iter().map(move |(name, id)| ClassInfo {
                    task,
                    name: name.clone(),
                    dataset_id: *id,
                })
            })
            .collect();
        LabelSpace {
            tasks: infos,
            classes,
        }
    }

    /// Number of outputs: background plus every class.
    pub fn num_classes(&self) -> usize {
        self.classes.len() + 1
    }

    pub fn task_index(&self, name: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t.name == name)
    }

    /// `task/class`, or `background` for 0.
    pub fn joint_name(&self, joint: u16) -> String {
        match joint {
            0 => "background".to_string(),
            j => {
                let c = &self.classes[j as usize - 1];
                format!("{}/{}", self.tasks[c.task].name, c.name)
            }
        }
    }

    /// The joint ids of one task's classes, in order.
    pub fn task_classes(&self, task: usize) -> Vec<u16> {
        (0..self.classes.len())
            .filter(|&i| self.classes[i].task == task)
            .map(|i| i as u16 + 1)
            .collect()
    }

    /// Joint id of a dataset id of `task` (0 stays background); `None` if unknown.
    pub fn joint_of(&self, task: usize, dataset_id: u16) -> Option<u16> {
        if dataset_id == 0 {
            return Some(0);
        }
        self.classes
            .iter()
            .position(|c| c.task == task && c.dataset_id == dataset_id)
            .map(|i| i as u16 + 1)
    }

    /// A lookup table from a task's dataset ids to joint ids (unknown ids map to `None`).
    pub fn joint_table(&self, task: usize) -> Vec<Option<u16>> {
        let max = self
            .classes
            .iter()
            .filter(|c| c.task == task)
            .map(|c| c.dataset_id)
            .max()
            .unwrap_or(0);
        (0..=max).map(|id| self.joint_of(task, id)).collect()
    }

    /// The task a joint id belongs to (`None` for background).
    pub fn task_of(&self, joint: u16) -> Option<usize> {
        (joint > 0).then(|| self.classes[joint as usize - 1].task)
    }

    /// The dataset id of a joint id (0 for background).
    pub fn dataset_id(&self, joint: u16) -> u16 {
        if joint == 0 {
            0
        } else {
            self.classes[joint as usize - 1].dataset_id
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> LabelSpace {
        LabelSpace {
            tasks: vec![
                TaskInfo {
                    name: "Brain".into(),
                    modality: Modality::MR,
                },
                TaskInfo {
                    name: "Heart".into(),
                    modality: Modality::CT,
                },
            ],
            classes: vec![
                ClassInfo {
                    task: 0,
                    name: "gm".into(),
                    dataset_id: 1,
                },
                ClassInfo {
                    task: 0,
                    name: "wm".into(),
                    dataset_id: 2,
                },
                ClassInfo {
                    task: 1,
                    name: "coronary".into(),
                    dataset_id: 5,
                },
            ],
        }
    }

    #[test]
    fn joint_ids_follow_task_order() {
        let s = space();
        assert_eq!(s.num_classes(), 4);
        assert_eq!(s.joint_of(0, 2), Some(2));
        assert_eq!(s.joint_of(1, 5), Some(3));
        assert_eq!(s.joint_of(1, 1), None);
        assert_eq!(s.joint_of(1, 0), Some(0));
        assert_eq!(s.joint_name(3), "Heart/coronary");
        assert_eq!(s.task_classes(0), vec![1, 2]);
        assert_eq!(s.task_of(3), Some(1));
        assert_eq!(s.dataset_id(3), 5);
        assert_eq!(
            s.joint_table(1),
            vec![Some(0), None, None, None, None, Some(3)]
        );
    }
}
