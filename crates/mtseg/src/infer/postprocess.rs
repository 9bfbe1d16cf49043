//! Post-processing of label maps with what the network cannot see from its 51-voxel window:
//! each task's anatomy is one connected object.

use ndarray::ArrayView3;
use ndarray_ndimage::{Kernel3d, label, label_histogram};

use crate::datasets::LabelSpace;

/// Keeps, for each of `tasks`, only the largest 26-connected component of its foreground (all of
/// its classes together, as nnU-Net's "largest component of the foreground"): a brain, a
/// hippocampus or a heart with its vessels is one object, so islands apart from it (in the
/// scalp, the face, the neck) are false positives. Classes inside the kept component are
/// untouched, so two basal ganglia or two lateral ventricles survive. `labels` are joint ids
/// in `x + nx * (y + ny * z)` order. Returns the number of voxels set to background.
pub fn keep_largest_component(
    labels: &mut [u16],
    shape: [usize; 3],
    space: &LabelSpace,
    tasks: &[usize],
) -> usize {
    let [nx, ny, nz] = shape;
    let connectivity = Kernel3d::Full.generate();
    let mut removed = 0;
    for &task in tasks {
        let mask: Vec<bool> = labels
            .iter()
            .map(|&l| space.task_of(l) == Some(task))
            .collect();
        if !mask.contains(&true) {
            continue;
        }
        // z slowest, x fastest: the same order as `labels`.
        let mask = ArrayView3::from_shape((nz, ny, nx), &mask).expect("labels match their shape");
        let (components, count) = label::<u32>(&mask, &connectivity);
        if count < 2 {
            continue;
        }
        let sizes = label_histogram(&components, count);
        let largest = (1..=count)
            .max_by_key(|&c| sizes[c])
            .expect("two components") as u32;
        for (l, &c) in labels.iter_mut().zip(components.iter()) {
            if c != 0 && c != largest {
                *l = 0;
                removed += 1;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::{ClassInfo, TaskInfo};

    fn space() -> LabelSpace {
        let task = |name: &str| TaskInfo {
            name: name.into(),
            modality: crate::datasets::Modality::MR,
        };
        let class = |task, name: &str, id| ClassInfo {
            task,
            name: name.into(),
            dataset_id: id,
        };
        LabelSpace {
            tasks: vec![task("a"), task("b")],
            classes: vec![class(0, "a1", 1), class(0, "a2", 2), class(1, "b1", 1)],
        }
    }

    #[test]
    fn islands_apart_from_each_tasks_largest_object_are_removed() {
        let shape = [8, 6, 5];
        let index = |x: usize, y: usize, z: usize| x + 8 * (y + 6 * z);
        let mut labels = vec![0u16; 8 * 6 * 5];
        // Task a: a 2x2x2 block of two classes touching a diagonal neighbour (26-connected),
        // and a separate single-voxel island.
        for (x, y, z) in [(1, 1, 1), (2, 1, 1), (1, 2, 1), (2, 2, 1)] {
            labels[index(x, y, z)] = 1;
            labels[index(x, y, z + 1)] = 2;
        }
        labels[index(3, 3, 3)] = 1;
        labels[index(6, 1, 1)] = 2;
        // Task b: one voxel, its only component, kept.
        labels[index(6, 4, 4)] = 3;
        let removed = keep_largest_component(&mut labels, shape, &space(), &[0, 1]);
        assert_eq!(removed, 1);
        assert_eq!(labels[index(6, 1, 1)], 0, "the island goes");
        assert_eq!(labels[index(3, 3, 3)], 1, "a corner neighbour stays");
        assert_eq!(labels[index(2, 2, 2)], 2, "classes inside the object stay");
        assert_eq!(
            labels[index(6, 4, 4)],
            3,
            "another task's only object stays"
        );
        assert_eq!(labels.iter().filter(|&&l| l > 0).count(), 10);
    }
}
