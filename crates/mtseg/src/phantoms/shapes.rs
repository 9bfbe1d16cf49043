//! Building blocks of the phantoms: random smooth fields, ellipsoids, tubes, and the image
//! formation steps (blur, bias field, noise) that make a label map look like a scan.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

pub type Vec3 = [f64; 3];

pub fn add(a: Vec3, b: Vec3) -> Vec3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}
pub fn sub(a: Vec3, b: Vec3) -> Vec3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
pub fn scale(a: Vec3, s: f64) -> Vec3 {
    [a[0] * s, a[1] * s, a[2] * s]
}
pub fn dot(a: Vec3, b: Vec3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
pub fn norm(a: Vec3) -> f64 {
    dot(a, a).sqrt()
}
pub fn normalize(a: Vec3) -> Vec3 {
    scale(a, 1.0 / norm(a).max(1e-12))
}
pub fn cross(a: Vec3, b: Vec3) -> Vec3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// A uniform draw in `[lo, hi)`.
pub fn uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

fn random_unit(rng: &mut ChaCha8Rng) -> Vec3 {
    loop {
        let v = [
            uniform(rng, -1.0, 1.0),
            uniform(rng, -1.0, 1.0),
            uniform(rng, -1.0, 1.0),
        ];
        let n = norm(v);
        if n > 0.1 && n <= 1.0 {
            return scale(v, 1.0 / n);
        }
    }
}

/// A smooth random field in about [-1, 1]: a sum of plane waves with wavelengths around
/// `wavelength` millimetres.
#[derive(Clone, Debug)]
pub struct SmoothField {
    waves: Vec<(Vec3, f64)>,
}

impl SmoothField {
    pub fn new(rng: &mut ChaCha8Rng, wavelength: f64, waves: usize) -> Self {
        let waves = (0..waves)
            .map(|_| {
                let k = 2.0 * std::f64::consts::PI / (wavelength * uniform(rng, 0.7, 1.4));
                (
                    scale(random_unit(rng), k),
                    uniform(rng, 0.0, std::f64::consts::TAU),
                )
            })
            .collect();
        SmoothField { waves }
    }

    pub fn at(&self, p: Vec3) -> f64 {
        let sum: f64 = self
            .waves
            .iter()
            .map(|(k, phase)| (dot(*k, p) + phase).cos())
            .sum();
        sum / (self.waves.len() as f64 / 2.0).sqrt().max(1.0) / 1.5
    }
}

/// An ellipsoid with axes along an orthonormal frame.
#[derive(Clone, Debug)]
pub struct Ellipsoid {
    pub centre: Vec3,
    pub radii: Vec3,
    pub axes: [Vec3; 3],
}

impl Ellipsoid {
    pub fn aligned(centre: Vec3, radii: Vec3) -> Self {
        Ellipsoid {
            centre,
            radii,
            axes: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        }
    }

    /// Normalised radius: < 1 inside, 1 on the surface.
    pub fn rho(&self, p: Vec3) -> f64 {
        let d = sub(p, self.centre);
        (0..3)
            .map(|i| (dot(d, self.axes[i]) / self.radii[i]).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    /// Approximate distance below the surface along the ray from the centre (mm; negative
    /// outside).
    pub fn depth(&self, p: Vec3) -> f64 {
        let rho = self.rho(p);
        let r = norm(sub(p, self.centre));
        if rho < 1e-9 {
            return self.radii.iter().cloned().fold(f64::MAX, f64::min);
        }
        r / rho - r
    }

    /// The local coordinates of `p` in the ellipsoid's frame.
    pub fn local(&self, p: Vec3) -> Vec3 {
        let d = sub(p, self.centre);
        [
            dot(d, self.axes[0]),
            dot(d, self.axes[1]),
            dot(d, self.axes[2]),
        ]
    }

    /// The world point at local coordinates `l`.
    pub fn world(&self, l: Vec3) -> Vec3 {
        let mut p = self.centre;
        for (axis, amount) in self.axes.iter().zip(l) {
            p = add(p, scale(*axis, amount));
        }
        p
    }
}

/// An orthonormal frame whose third axis is `w`.
pub fn frame_along(w: Vec3) -> [Vec3; 3] {
    let w = normalize(w);
    let helper = if w[0].abs() < 0.9 {
        [1.0, 0.0, 0.0]
    } else {
        [0.0, 1.0, 0.0]
    };
    let u = normalize(cross(helper, w));
    let v = cross(w, u);
    [u, v, w]
}

/// A random rotation close to the identity (each Euler angle within `max_angle` radians), as
/// the rows of an orthonormal frame: a patient's head is never perfectly straight.
pub fn small_rotation(rng: &mut ChaCha8Rng, max_angle: f64) -> [Vec3; 3] {
    let [a, b, c] = [0; 3].map(|_| uniform(rng, -max_angle, max_angle));
    let rx = |v: Vec3| {
        [
            v[0],
            v[1] * a.cos() - v[2] * a.sin(),
            v[1] * a.sin() + v[2] * a.cos(),
        ]
    };
    let ry = |v: Vec3| {
        [
            v[0] * b.cos() + v[2] * b.sin(),
            v[1],
            -v[0] * b.sin() + v[2] * b.cos(),
        ]
    };
    let rz = |v: Vec3| {
        [
            v[0] * c.cos() - v[1] * c.sin(),
            v[0] * c.sin() + v[1] * c.cos(),
            v[2],
        ]
    };
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]].map(|e| rz(ry(rx(e))))
}

/// Distance from `p` to the segment `a`-`b`, and the position along it (0..1).
pub fn segment_distance(p: Vec3, a: Vec3, b: Vec3) -> (f64, f64) {
    let ab = sub(b, a);
    let t = (dot(sub(p, a), ab) / dot(ab, ab).max(1e-12)).clamp(0.0, 1.0);
    (norm(sub(p, add(a, scale(ab, t)))), t)
}

/// A tube along a polyline whose radius tapers from `r0` to `r1`.
#[derive(Clone, Debug)]
pub struct Tube {
    pub points: Vec<Vec3>,
    pub r0: f64,
    pub r1: f64,
}

impl Tube {
    /// Signed distance to the tube wall (negative inside).
    pub fn distance(&self, p: Vec3) -> f64 {
        self.wall_distance(p).0
    }

    /// Signed distance to the wall and the tube's radius at the nearest point.
    pub fn wall_distance(&self, p: Vec3) -> (f64, f64) {
        let n = self.points.len() - 1;
        let mut best = (f64::MAX, self.r0);
        for s in 0..n {
            let (d, t) = segment_distance(p, self.points[s], self.points[s + 1]);
            let along = (s as f64 + t) / n as f64;
            let r = self.r0 + (self.r1 - self.r0) * along;
            if d - r < best.0 {
                best = (d - r, r);
            }
        }
        best
    }
}

/// Rician noise, the magnitude of complex Gaussian noise: MR images are magnitudes.
pub fn rician_noise(data: &mut [f32], sigma: f64, rng: &mut ChaCha8Rng) {
    for v in data.iter_mut() {
        let re = *v as f64 + sigma * gaussian(rng);
        let im = sigma * gaussian(rng);
        *v = (re * re + im * im).sqrt() as f32;
    }
}

/// Standard normal draw (Box-Muller).
pub fn gaussian(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn ellipsoid_depth_is_zero_on_the_surface() {
        let e = Ellipsoid::aligned([0.0; 3], [10.0, 20.0, 30.0]);
        assert!((e.rho([10.0, 0.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!(e.depth([5.0, 0.0, 0.0]) > 4.9);
        assert!(e.depth([0.0, 25.0, 0.0]) < 0.0);
    }

    #[test]
    fn tubes_taper() {
        let t = Tube {
            points: vec![[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]],
            r0: 2.0,
            r1: 1.0,
        };
        assert!((t.distance([0.0, 2.0, 0.0])).abs() < 1e-9);
        assert!((t.distance([10.0, 1.0, 0.0])).abs() < 1e-9);
        assert!(t.distance([5.0, 0.0, 0.0]) < 0.0);
    }

    #[test]
    fn fields_are_deterministic_and_bounded() {
        let mut a = ChaCha8Rng::seed_from_u64(1);
        let mut b = ChaCha8Rng::seed_from_u64(1);
        let fa = SmoothField::new(&mut a, 30.0, 6);
        let fb = SmoothField::new(&mut b, 30.0, 6);
        for i in 0..50 {
            let p = [i as f64, 2.0 * i as f64, -(i as f64)];
            assert_eq!(fa.at(p), fb.at(p));
            assert!(fa.at(p).abs() < 2.0);
        }
    }
}
