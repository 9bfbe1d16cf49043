//! Breast T1 MRI (non-fat-suppressed) with the pectoral muscle: a curved slab along the chest
//! wall, thick near the sternum and thin laterally, behind two breasts of bright fat with
//! dark fibroglandular strands. Behind the muscle: ribs with intercostal muscle (the same
//! intensity as the pectoral muscle, which is what makes the task non-trivial), then lung.

use rand_chacha::ChaCha8Rng;

use super::shapes::{Ellipsoid, SmoothField, Vec3, uniform};
use super::{Anatomy, Sample};

pub const CLASSES: [&str; 1] = ["pectoral_muscle"];
pub const FOV_MM: f64 = 200.0;

const MUSCLE: u16 = 1;

pub struct Breast {
    wall_y: f64,
    wall_curve: f64,
    wall_field: SmoothField,
    muscle_thickness: f64,
    muscle_half_width: f64,
    breasts: [Ellipsoid; 2],
    glandular: SmoothField,
    glandular_amount: f64,
    rib_phase: f64,
    heart: Ellipsoid,
    rib_period: f64,
    /// Relative intensities: fat, muscle, glandular tissue.
    contrast: [f64; 3],
}

impl Breast {
    pub fn new(rng: &mut ChaCha8Rng) -> Self {
        let wall_y = uniform(rng, -40.0, -20.0);
        let size = uniform(rng, 0.8, 1.25);
        let spread = uniform(rng, 42.0, 55.0);
        let z0 = uniform(rng, -15.0, 15.0);
        let breast = |side: f64, rng: &mut ChaCha8Rng| {
            Ellipsoid::aligned(
                [
                    side * spread + uniform(rng, -4.0, 4.0),
                    wall_y,
                    z0 + uniform(rng, -4.0, 4.0),
                ],
                [46.0 * size, 62.0 * size, 50.0 * size],
            )
        };
        let breasts = [breast(-1.0, rng), breast(1.0, rng)];
        Breast {
            wall_y,
            wall_curve: uniform(rng, 0.004, 0.008),
            wall_field: SmoothField::new(rng, 80.0, 4),
            muscle_thickness: uniform(rng, 9.0, 16.0),
            muscle_half_width: uniform(rng, 65.0, 85.0),
            breasts,
            glandular: SmoothField::new(rng, 14.0, 7),
            glandular_amount: uniform(rng, -0.2, 0.35),
            rib_phase: uniform(rng, 0.0, std::f64::consts::TAU),
            heart: Ellipsoid::aligned(
                [
                    uniform(rng, -20.0, 0.0),
                    wall_y - 75.0,
                    uniform(rng, -40.0, -20.0),
                ],
                [50.0, 45.0, 55.0],
            ),
            rib_period: uniform(rng, 20.0, 26.0),
            contrast: [1.0, uniform(rng, 0.3, 0.42), uniform(rng, 0.38, 0.5)],
        }
    }

    /// The front of the chest wall (front surface of the pectoral muscle) at (x, z).
    fn wall(&self, p: Vec3) -> f64 {
        self.wall_y - self.wall_curve * p[0] * p[0] + 4.0 * self.wall_field.at([p[0], 0.0, p[2]])
    }
}

impl Anatomy for Breast {
    fn sample(&self, p: Vec3) -> Sample {
        let [fat, muscle, glandular] = self.contrast;
        let wall = self.wall(p);
        let y = p[1];
        if y >= wall {
            // In front of the chest wall: a thin fat layer over the whole chest, then breasts.
            let in_breast = self
                .breasts
                .iter()
                .map(|b| b.rho(p))
                .fold(f64::MAX, f64::min);
            let body_front = wall + 9.0;
            if in_breast > 1.0 && y > body_front {
                return Sample::new(0, 0.0);
            }
            let skin = if in_breast <= 1.0 {
                in_breast > 0.96
            } else {
                y > body_front - 2.0
            };
            if skin {
                return Sample::new(0, 0.5);
            }
            if in_breast < 0.85 {
                // Fibroglandular strands (the ridges of a smooth field), denser towards the
                // centre of the breast.
                let ridge = 1.0 - self.glandular.at(p).abs();
                let g = ridge + 0.5 * (0.85 - in_breast) + self.glandular_amount;
                if g > 1.0 {
                    return Sample::new(0, glandular);
                }
            }
            return Sample::new(0, fat);
        }
        // The pectoral muscle: thick medially, thinning laterally, ending at the axilla.
        let lateral = (p[0] / self.muscle_half_width).abs();
        let thickness = self.muscle_thickness * (1.0 - 0.7 * lateral * lateral).max(0.0);
        let depth = wall - y;
        if lateral < 1.0 && depth < thickness {
            return Sample::new(MUSCLE, muscle);
        }
        // A fat plane between the pectoral muscle and the rib cage.
        let behind = depth - thickness.max(0.0);
        if behind < 2.5 {
            return Sample::new(0, fat * 0.9);
        }
        if behind < 16.0 {
            let rib = ((p[2] + 0.15 * p[0].abs()) * std::f64::consts::TAU / self.rib_period
                + self.rib_phase)
                .cos();
            // Rib marrow is fatty (T1 bright), intercostal muscle looks like the pectoral.
            return Sample::new(0, if rib > 0.45 { 0.6 } else { muscle });
        }
        // Inside the thorax: the heart between dark lungs.
        if self.heart.rho(p) < 1.0 {
            return Sample::new(0, 0.28);
        }
        Sample::new(0, 0.04)
    }
}
