//! Cardiac CT angiography in Hounsfield units with the coronary arteries: contrast-filled
//! branching tubes of 1.4-4 mm diameter running in the epicardial fat on the heart's surface
//! (left main, LAD with diagonals, circumflex with marginals, right coronary with the
//! posterior descending artery). Around them: contrast-filled ventricles, atria and aorta
//! (the same brightness as the arteries), myocardium, fat, lungs, spine and sternum.

use rand_chacha::ChaCha8Rng;

use super::shapes::{
    Ellipsoid, SmoothField, Tube, Vec3, add, dot, frame_along, normalize, scale, sub, uniform,
};
use super::{Anatomy, Sample};

pub const CLASSES: [&str; 1] = ["coronary_arteries"];
pub const FOV_MM: f64 = 130.0;

const CORONARY: u16 = 1;

struct Vessel {
    tube: Tube,
    lo: Vec3,
    hi: Vec3,
}

impl Vessel {
    fn new(tube: Tube) -> Self {
        let pad = tube.r0.max(tube.r1) + 2.5;
        let mut lo = [f64::MAX; 3];
        let mut hi = [f64::MIN; 3];
        for p in &tube.points {
            for i in 0..3 {
                lo[i] = lo[i].min(p[i] - pad);
                hi[i] = hi[i].max(p[i] + pad);
            }
        }
        Vessel { tube, lo, hi }
    }

    fn near(&self, p: Vec3) -> bool {
        (0..3).all(|i| p[i] >= self.lo[i] && p[i] <= self.hi[i])
    }
}

pub struct Cardiac {
    lv_wall: Ellipsoid,
    lv_cavity: Ellipsoid,
    rv_wall: Ellipsoid,
    rv_cavity: Ellipsoid,
    atria: Vec<(Ellipsoid, Ellipsoid)>,
    great_vessels: Vec<Tube>,
    coronaries: Vec<Vessel>,
    /// Smallest labelled half-width (mm): half a voxel, so thin arteries stay connected.
    min_label_radius: f64,
    texture: SmoothField,
    blood: f64,
    myocardium: f64,
}

/// A point on the epicardial ellipsoid at polar angle `theta` (0 at the base, pi at the
/// apex) and azimuth `phi`, pushed `lift` mm outward.
fn on_surface(e: &Ellipsoid, theta: f64, phi: f64, lift: f64) -> Vec3 {
    let [a, b, c] = e.radii;
    let local = [
        (a + lift) * theta.sin() * phi.cos(),
        (b + lift) * theta.sin() * phi.sin(),
        -(c + lift) * theta.cos(),
    ];
    e.world(local)
}

/// A vessel following the surface from (theta0, phi0) to (theta1, phi1), with a gentle
/// random meander.
fn surface_path(
    e: &Ellipsoid,
    from: (f64, f64),
    to: (f64, f64),
    lift: f64,
    wiggle: &SmoothField,
) -> Vec<Vec3> {
    let n = 28;
    (0..=n)
        .map(|i| {
            let t = i as f64 / n as f64;
            let theta = from.0 + (to.0 - from.0) * t;
            let phi = from.1 + (to.1 - from.1) * t;
            let p = on_surface(e, theta, phi, lift);
            on_surface(e, theta, phi + 0.06 * wiggle.at(p), lift)
        })
        .collect()
}

impl Cardiac {
    pub fn new(rng: &mut ChaCha8Rng, spacing: f64) -> Self {
        let s = uniform(rng, 0.9, 1.1);
        let centre = [
            uniform(rng, -14.0, -4.0),
            uniform(rng, 0.0, 10.0),
            uniform(rng, -10.0, 0.0),
        ];
        let long_axis = normalize([
            uniform(rng, -0.65, -0.45),
            uniform(rng, 0.35, 0.55),
            uniform(rng, -0.8, -0.6),
        ]);
        let frame = frame_along(long_axis);
        let at = |offset: Vec3| -> Vec3 {
            let mut p = centre;
            for (axis, o) in frame.iter().zip(offset) {
                p = add(p, scale(*axis, o * s));
            }
            p
        };
        let ell = |c: Vec3, r: Vec3| Ellipsoid {
            centre: at(c),
            radii: scale(r, s),
            axes: frame,
        };
        // The right ventricle wraps the LV towards the patient's right and front.
        let right_front = normalize(sub(
            [1.0, 0.7, 0.0],
            scale(long_axis, dot([1.0, 0.7, 0.0], long_axis)),
        ));
        let rv_dir = [dot(right_front, frame[0]), dot(right_front, frame[1]), 0.0];
        let rv_at = |d: f64, a: f64| [rv_dir[0] * d, rv_dir[1] * d, a];
        let lv_wall = ell([0.0, 0.0, 8.0], [29.0, 29.0, 46.0]);
        let lv_cavity = ell([0.0, 0.0, 5.0], [18.0, 18.0, 36.0]);
        let rv_wall = ell(rv_at(20.0, 2.0), [25.0, 30.0, 42.0]);
        let rv_cavity = ell(rv_at(23.0, 2.0), [19.0, 25.0, 37.0]);
        let la = ell([-6.0, -14.0, -40.0], [24.0, 20.0, 18.0]);
        let ra = ell(rv_at(28.0, -34.0), [20.0, 20.0, 22.0]);
        let atria = [la, ra]
            .into_iter()
            .map(|cavity| {
                let wall = Ellipsoid {
                    radii: add(cavity.radii, [2.5, 2.5, 2.5]),
                    ..cavity.clone()
                };
                (wall, cavity)
            })
            .collect();

        let root = at([4.0, 6.0, -30.0]);
        let great_vessels = vec![
            // Ascending aorta, descending aorta, pulmonary trunk.
            Tube {
                points: vec![root, add(root, [6.0, 4.0, 80.0])],
                r0: 13.0 * s,
                r1: 14.0 * s,
            },
            Tube {
                points: vec![[-18.0, -46.0, -90.0], [-16.0, -44.0, 90.0]],
                r0: 11.0,
                r1: 11.0,
            },
            Tube {
                points: vec![
                    at(rv_at(20.0, -30.0)),
                    add(at(rv_at(20.0, -30.0)), [-20.0, -10.0, 60.0]),
                ],
                r0: 12.0 * s,
                r1: 11.0 * s,
            },
        ];

        // Coronary tree on an epicardial ellipsoid enclosing both ventricles.
        let epi = ell([8.0 * rv_dir[0], 8.0 * rv_dir[1], 5.0], [36.0, 38.0, 50.0]);
        let azimuth = |d: Vec3| dot(d, frame[1]).atan2(dot(d, frame[0]));
        let front = azimuth([0.0, 1.0, 0.0]);
        let left = azimuth([-1.0, 0.0, 0.0]);
        // Which way round the heart "towards the left" goes.
        let turn = if (left - front).sin() >= 0.0 {
            1.0
        } else {
            -1.0
        };
        let anterior_groove = front + turn * uniform(rng, 0.15, 0.45);
        let groove_theta = uniform(rng, 0.5, 0.65);
        let wiggle = SmoothField::new(rng, 25.0, 4);
        let lift = 1.5;
        let mut tubes = Vec::new();
        let lm_start = (groove_theta - 0.25, anterior_groove - turn * 0.6);
        let bifurcation = (groove_theta, anterior_groove);
        tubes.push(Tube {
            points: surface_path(&epi, lm_start, bifurcation, lift, &wiggle),
            r0: 2.0,
            r1: 1.8,
        });
        let lad_end = (uniform(rng, 2.6, 3.0), anterior_groove + turn * 0.1);
        let lad = surface_path(&epi, bifurcation, lad_end, lift, &wiggle);
        tubes.push(Tube {
            points: lad.clone(),
            r0: 1.8,
            r1: 1.0,
        });
        let lcx_end = (
            groove_theta + 0.1,
            anterior_groove + turn * uniform(rng, 2.2, 2.8),
        );
        let lcx = surface_path(&epi, bifurcation, lcx_end, lift, &wiggle);
        tubes.push(Tube {
            points: lcx.clone(),
            r0: 1.7,
            r1: 0.9,
        });
        let rca_start = (groove_theta - 0.2, anterior_groove - turn * 0.9);
        let rca_end = (
            groove_theta + 0.05,
            anterior_groove - turn * uniform(rng, 2.6, 3.1),
        );
        tubes.push(Tube {
            points: surface_path(&epi, rca_start, rca_end, lift, &wiggle),
            r0: 1.9,
            r1: 1.1,
        });
        let pda_end = (uniform(rng, 2.0, 2.4), rca_end.1 - turn * 0.1);
        tubes.push(Tube {
            points: surface_path(&epi, rca_end, pda_end, lift, &wiggle),
            r0: 1.2,
            r1: 0.8,
        });
        // Side branches: diagonals from the LAD, marginals from the circumflex.
        for (parent, count, towards) in [(&lad, 3usize, turn), (&lcx, 2, 0.0)] {
            for k in 0..count {
                let t = 0.25 + 0.5 * (k as f64 + uniform(rng, 0.0, 0.8)) / count as f64;
                let index = (t * (parent.len() - 1) as f64) as usize;
                let start = polar_of(&epi, parent[index]);
                let end = (
                    (start.0 + uniform(rng, 0.8, 1.3)).min(2.9),
                    start.1 + towards * uniform(rng, 0.4, 0.9),
                );
                tubes.push(Tube {
                    points: surface_path(&epi, start, end, lift, &wiggle),
                    r0: 1.2,
                    r1: 0.7,
                });
            }
        }
        Cardiac {
            lv_wall,
            lv_cavity,
            rv_wall,
            rv_cavity,
            atria,
            great_vessels,
            coronaries: tubes.into_iter().map(Vessel::new).collect(),
            min_label_radius: 0.5 * spacing,
            texture: SmoothField::new(rng, 12.0, 5),
            blood: uniform(rng, 300.0, 480.0),
            myocardium: uniform(rng, 90.0, 140.0),
        }
    }

    /// Distance from the myocardium or atrial walls (mm, 0 inside).
    fn heart_distance(&self, p: Vec3) -> f64 {
        let walls = [&self.lv_wall, &self.rv_wall]
            .into_iter()
            .chain(self.atria.iter().map(|(w, _)| w));
        walls
            .map(|w| (-w.depth(p)).max(0.0))
            .fold(f64::MAX, f64::min)
    }
}

/// Polar coordinates (theta, phi) of a point near the epicardial ellipsoid.
fn polar_of(e: &Ellipsoid, p: Vec3) -> (f64, f64) {
    let l = e.local(p);
    let n = [l[0] / e.radii[0], l[1] / e.radii[1], l[2] / e.radii[2]];
    let r = dot(n, n).sqrt().max(1e-9);
    ((-n[2] / r).clamp(-1.0, 1.0).acos(), n[1].atan2(n[0]))
}

impl Anatomy for Cardiac {
    fn sample(&self, p: Vec3) -> Sample {
        // Distance to the nearest coronary wall, and the artery's radius there.
        let (wall, radius) = self
            .coronaries
            .iter()
            .filter(|v| v.near(p))
            .map(|v| v.tube.wall_distance(p))
            .fold((f64::MAX, 0.0), |a, b| if b.0 < a.0 { b } else { a });
        let tissue = self.tissue(p, wall);
        // Labelled at least half a voxel wide, so a 1 mm artery stays a connected line; its
        // brightness is diluted by the share of the voxel it fills (partial volume).
        if wall <= 0.0 || wall <= self.min_label_radius - radius {
            let coverage = (radius / self.min_label_radius).min(1.0);
            let intensity = tissue.intensity + (self.blood * 0.95 - tissue.intensity) * coverage;
            return Sample::new(CORONARY, intensity);
        }
        tissue
    }
}

impl Cardiac {
    /// Everything but the coronary arteries; `coronary_wall` (mm) keeps fat around them.
    fn tissue(&self, p: Vec3, coronary_wall: f64) -> Sample {
        let texture = 15.0 * self.texture.at(p);
        if self.great_vessels.iter().any(|t| t.distance(p) < 0.0) {
            return Sample::new(0, self.blood);
        }
        if self.lv_cavity.rho(p) < 1.0 || self.rv_cavity.rho(p) < 1.0 {
            return Sample::new(0, self.blood + texture);
        }
        if self.atria.iter().any(|(_, cavity)| cavity.rho(p) < 1.0) {
            return Sample::new(0, self.blood + texture);
        }
        let heart = self.heart_distance(p);
        if heart == 0.0 {
            return Sample::new(0, self.myocardium + texture);
        }
        // Epicardial fat around the heart and along the arteries, then the pericardium.
        if heart < 5.0 || coronary_wall < 2.5 {
            return Sample::new(0, -90.0 + texture);
        }
        if heart < 6.5 {
            return Sample::new(0, 25.0);
        }
        body(p, texture)
    }
}

/// The chest around the heart: sternum and chest wall in front, spine behind, mediastinal fat
/// between, lungs on both sides.
fn body(p: Vec3, texture: f64) -> Sample {
    let [x, y, _] = p;
    let spine = ((x / 17.0).powi(2) + ((y + 66.0) / 15.0).powi(2)).sqrt();
    if spine < 1.0 {
        return Sample::new(
            0,
            if spine > 0.8 {
                900.0
            } else {
                380.0 + 2.0 * texture
            },
        );
    }
    if ((x / 15.0).powi(2) + ((y - 56.0) / 5.0).powi(2)).sqrt() < 1.0 {
        return Sample::new(0, 550.0);
    }
    if y > 52.0 {
        return Sample::new(0, if y > 60.0 { -100.0 } else { 45.0 + texture });
    }
    let mediastinum = (((x + 5.0) / 48.0).powi(2) + (y / 62.0).powi(2)).sqrt();
    if mediastinum < 1.0 {
        return Sample::new(0, -80.0 + 3.0 * texture);
    }
    Sample::new(0, -850.0 + 4.0 * texture)
}
