use super::*;

/// Class fractions of a 64^3 phantom, over three cases, must fall in the stated ranges: the
/// anatomy is there, in realistic proportions (coronary arteries a tiny share).
#[test]
fn class_fractions_fall_in_stated_ranges() {
    let ranges: [(PhantomTask, &[(f64, f64)]); 3] = [
        (
            PhantomTask::Brain,
            &[
                (0.03, 0.08),    // cortical grey matter
                (0.05, 0.12),    // white matter
                (0.0008, 0.004), // basal ganglia and thalami
                (0.0008, 0.005), // ventricles
                (0.004, 0.015),  // cerebellum
                (0.001, 0.004),  // brain stem
            ],
        ),
        (PhantomTask::Breast, &[(0.015, 0.07)]),
        (PhantomTask::Cardiac, &[(0.0004, 0.004)]),
    ];
    for (task, expected) in ranges {
        for case in 0..3 {
            let (_, labels) = generate_case(task, 64, 7, case);
            let fractions = label_fractions(&labels, expected.len());
            for (class, (lo, hi)) in expected.iter().enumerate() {
                let f = fractions[class + 1];
                assert!(
                    (*lo..=*hi).contains(&f),
                    "{task:?} case {case} class {} fraction {f:.5} outside [{lo}, {hi}]",
                    task.classes()[class]
                );
            }
        }
    }
}

#[test]
fn phantoms_are_deterministic_by_seed_and_vary_by_case() {
    let (a, la) = generate_case(PhantomTask::Cardiac, 24, 3, 0);
    let (b, lb) = generate_case(PhantomTask::Cardiac, 24, 3, 0);
    assert_eq!(a.data, b.data);
    assert_eq!(la.data, lb.data);
    let (c, _) = generate_case(PhantomTask::Cardiac, 24, 3, 1);
    assert_ne!(a.data, c.data);
    let (d, _) = generate_case(PhantomTask::Cardiac, 24, 4, 0);
    assert_ne!(a.data, d.data);
}

#[test]
fn intensities_look_like_their_modality() {
    // CT in Hounsfield units: air/lung near -1000..-800, contrast blood well above 200.
    let (ct, labels) = generate_case(PhantomTask::Cardiac, 48, 1, 0);
    let min = ct.data.iter().cloned().fold(f32::MAX, f32::min);
    let max = ct.data.iter().cloned().fold(f32::MIN, f32::max);
    assert!(min < -700.0 && max > 300.0, "{min} {max}");
    let artery: Vec<f32> = labels
        .data
        .iter()
        .zip(&ct.data)
        .filter(|(l, _)| **l == 1)
        .map(|(_, v)| *v)
        .collect();
    let mean = artery.iter().sum::<f32>() / artery.len() as f32;
    assert!(
        mean > 100.0,
        "coronary arteries are contrast-filled: mean {mean} HU"
    );

    // T1 brain: white matter brighter than grey matter, grey brighter than ventricles.
    let (mr, labels) = generate_case(PhantomTask::Brain, 48, 1, 0);
    let mean_of = |class: u16| {
        let v: Vec<f32> = labels
            .data
            .iter()
            .zip(&mr.data)
            .filter(|(l, _)| **l == class)
            .map(|(_, v)| *v)
            .collect();
        v.iter().sum::<f32>() / v.len() as f32
    };
    assert!(mean_of(2) > mean_of(1) && mean_of(1) > mean_of(4));
    assert!(
        mr.data.iter().all(|v| *v >= 0.0),
        "MR magnitudes are non-negative"
    );
}
