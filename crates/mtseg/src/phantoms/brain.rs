//! Brain T1 MRI with the paper's six tissue classes. Cortical grey matter is a folded shell
//! (gyri and CSF-filled sulci) over white matter; ventricles, basal ganglia and thalami sit
//! deep inside; the cerebellum (foliated) and brain stem below; CSF, skull and scalp around.
//! T1 contrast: white matter brightest, grey matter darker, CSF dark, scalp fat bright.

use rand_chacha::ChaCha8Rng;

use super::shapes::{Ellipsoid, SmoothField, Vec3, small_rotation, uniform};
use super::{Anatomy, Sample};

pub const CLASSES: [&str; 6] = [
    "cortical_grey_matter",
    "white_matter",
    "basal_ganglia_thalami",
    "ventricular_csf",
    "cerebellum",
    "brain_stem",
];
/// Field of view, millimetres (isotropic).
pub const FOV_MM: f64 = 200.0;

const GM: u16 = 1;
const WM: u16 = 2;
const BGT: u16 = 3;
const VENTRICLE: u16 = 4;
const CEREBELLUM: u16 = 5;
const STEM: u16 = 6;

pub struct Brain {
    head: Ellipsoid,
    cerebrum: Ellipsoid,
    cerebellum: Ellipsoid,
    stem: Ellipsoid,
    ventricles: Vec<Ellipsoid>,
    deep_nuclei: Vec<Ellipsoid>,
    surface: SmoothField,
    folds: SmoothField,
    /// Relative intensities of WM, GM, CSF, deep grey matter.
    contrast: [f64; 4],
}

impl Brain {
    pub fn new(rng: &mut ChaCha8Rng) -> Self {
        let s = uniform(rng, 0.92, 1.08);
        let shift = [
            uniform(rng, -6.0, 6.0),
            uniform(rng, -6.0, 6.0),
            uniform(rng, -5.0, 5.0),
        ];
        let frame = small_rotation(rng, 0.1);
        let place = |c: Vec3| -> Vec3 {
            let mut p = shift;
            for i in 0..3 {
                for (j, cj) in c.iter().enumerate() {
                    p[i] += frame[j][i] * cj * s;
                }
            }
            p
        };
        let oriented = |c: Vec3, r: Vec3| Ellipsoid {
            centre: place(c),
            radii: [r[0] * s, r[1] * s, r[2] * s],
            axes: frame,
        };
        // Ventricle size varies most between people (age, atrophy).
        let v = uniform(rng, 0.9, 1.6);
        let mut ventricles = Vec::new();
        for side in [-1.0, 1.0] {
            ventricles.push(oriented([side * 8.5, 4.0, 18.0], [5.0 * v, 24.0, 8.0 * v]));
            ventricles.push(oriented(
                [side * 11.0, -22.0, 10.0],
                [4.0 * v, 9.0, 8.0 * v],
            ));
        }
        ventricles.push(oriented([0.0, -4.0, 4.0], [1.6 * v, 10.0, 7.0]));
        let mut deep_nuclei = Vec::new();
        for side in [-1.0, 1.0] {
            deep_nuclei.push(oriented([side * 10.0, -12.0, 6.0], [8.0, 12.0, 8.0]));
            deep_nuclei.push(oriented([side * 23.0, 4.0, 10.0], [5.0, 13.0, 9.0]));
            deep_nuclei.push(oriented([side * 13.5, 13.0, 17.0], [4.5, 8.0, 7.0]));
        }
        let gm_wm = uniform(rng, 0.55, 0.7);
        Brain {
            head: oriented([0.0, 0.0, 14.0], [78.0, 96.0, 76.0]),
            cerebrum: oriented([0.0, 2.0, 18.0], [64.0, 82.0, 60.0]),
            cerebellum: oriented([0.0, -48.0, -22.0], [44.0, 26.0, 18.0]),
            stem: oriented([0.0, -20.0, -30.0], [11.0, 12.0, 30.0]),
            ventricles,
            deep_nuclei,
            surface: SmoothField::new(rng, 70.0, 6),
            folds: SmoothField::new(rng, 22.0, 5),
            contrast: [
                1.0,
                gm_wm,
                uniform(rng, 0.12, 0.22),
                (1.0 + gm_wm) / 2.0 + 0.05,
            ],
        }
    }

    fn tissue(&self, label: u16, p: Vec3) -> f64 {
        let [wm, gm, _, deep] = self.contrast;
        match label {
            GM => gm,
            WM => wm,
            BGT => deep,
            VENTRICLE => self.contrast[2],
            STEM => 0.9,
            CEREBELLUM => {
                // Folia: thin alternating grey and white layers.
                let r = self.cerebellum.local(p);
                let phase = (r[0] * 0.15 + r[2] * 0.9 + 0.4 * (r[1] * 0.3).sin()).sin();
                gm + (wm - gm) * (0.5 + 0.5 * phase)
            }
            _ => 0.0,
        }
    }
}

impl Anatomy for Brain {
    fn sample(&self, p: Vec3) -> Sample {
        let csf = self.contrast[2];
        // Outside in: air, scalp (fat, bright), skull (dark) with diploe, CSF, brain.
        let head_depth = self.head.depth(p);
        if head_depth < 0.0 {
            return Sample::new(0, 0.0);
        }
        if head_depth < 5.0 {
            return Sample::new(0, 0.85);
        }
        if head_depth < 12.0 {
            let diploe = (head_depth - 8.5).abs() < 1.5;
            return Sample::new(0, if diploe { 0.45 } else { 0.06 });
        }
        if self.stem.rho(p) < 1.0 {
            return Sample::new(STEM, self.tissue(STEM, p));
        }
        let cerebellum_rho = self.cerebellum.rho(p);
        if cerebellum_rho < 1.0 {
            return Sample::new(CEREBELLUM, self.tissue(CEREBELLUM, p));
        }
        // The tentorium: a CSF gap between cerebellum and cerebrum.
        if cerebellum_rho < 1.08 {
            return Sample::new(0, csf);
        }
        let depth = self.cerebrum.depth(p) + 3.0 * self.surface.at(p);
        if depth < 0.0 {
            return Sample::new(0, csf);
        }
        // Interhemispheric fissure.
        let local = self.cerebrum.local(p);
        if local[0].abs() < 1.6 && depth < 30.0 && local[2] > -10.0 {
            return Sample::new(0, csf);
        }
        if self.ventricles.iter().any(|v| v.rho(p) < 1.0) {
            return Sample::new(VENTRICLE, self.tissue(VENTRICLE, p));
        }
        if self.deep_nuclei.iter().any(|n| n.rho(p) < 1.0) {
            return Sample::new(BGT, self.tissue(BGT, p));
        }
        // Cortex: grey matter down to a folded white-matter boundary, cut by sulci.
        let fold = self.folds.at(p).clamp(-1.0, 1.0);
        let wm_depth = 5.0 + 15.0 * (1.0 - fold) / 2.0;
        if depth < wm_depth {
            if fold < -0.5 && depth < wm_depth - 4.0 {
                return Sample::new(0, csf);
            }
            return Sample::new(GM, self.tissue(GM, p));
        }
        Sample::new(WM, self.tissue(WM, p))
    }
}
