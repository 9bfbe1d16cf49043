//! Exact Euclidean distance transform in millimetres (anisotropic spacing), by the separable
//! algorithm of Felzenszwalb and Huttenlocher: one lower-envelope pass per axis, linear in
//! the number of voxels.

use rayon::prelude::*;

/// Squared distance (mm^2) from every voxel to the nearest voxel where `seeds` is true.
/// Without any seed every distance is infinite.
pub fn squared_distance(seeds: &[bool], shape: [usize; 3], spacing: [f64; 3]) -> Vec<f64> {
    let mut d: Vec<f64> = seeds
        .iter()
        .map(|&s| if s { 0.0 } else { f64::INFINITY })
        .collect();
    let [nx, ny, nz] = shape;
    let strides = [1, nx, nx * ny];
    for axis in 0..3 {
        let n = shape[axis];
        let stride = strides[axis];
        let w2 = spacing[axis] * spacing[axis];
        // The start index of every line along `axis`.
        let starts: Vec<usize> = (0..nz)
            .flat_map(|z| (0..ny).flat_map(move |y| (0..nx).map(move |x| (x, y, z))))
            .filter(|&(x, y, z)| [x, y, z][axis] == 0)
            .map(|(x, y, z)| x + nx * (y + ny * z))
            .collect();
        let lines: Vec<Vec<f64>> = starts
            .par_iter()
            .map(|&start| {
                let line: Vec<f64> = (0..n).map(|i| d[start + i * stride]).collect();
                envelope(&line, w2)
            })
            .collect();
        for (start, line) in starts.iter().zip(lines) {
            for (i, v) in line.into_iter().enumerate() {
                d[start + i * stride] = v;
            }
        }
    }
    d
}

/// 1-D squared distance transform of `f` with squared sample spacing `w2`.
fn envelope(f: &[f64], w2: f64) -> Vec<f64> {
    let n = f.len();
    let mut out = vec![f64::INFINITY; n];
    // Parabola vertices (indices with finite f) and the boundaries between them.
    let mut v: Vec<usize> = Vec::with_capacity(n);
    let mut z: Vec<f64> = Vec::with_capacity(n + 1);
    for q in 0..n {
        if !f[q].is_finite() {
            continue;
        }
        loop {
            match v.last() {
                None => {
                    v.push(q);
                    z.clear();
                    z.push(f64::NEG_INFINITY);
                    break;
                }
                Some(&p) => {
                    let s = ((f[q] + w2 * (q * q) as f64) - (f[p] + w2 * (p * p) as f64))
                        / (2.0 * w2 * (q as f64 - p as f64));
                    if s <= *z.last().expect("one boundary per vertex") {
                        v.pop();
                        z.pop();
                        if v.is_empty() {
                            continue;
                        }
                    } else {
                        v.push(q);
                        z.push(s);
                        break;
                    }
                }
            }
        }
    }
    if v.is_empty() {
        return out;
    }
    z.push(f64::INFINITY);
    let mut k = 0;
    for (q, o) in out.iter_mut().enumerate() {
        while z[k + 1] < q as f64 {
            k += 1;
        }
        let p = v[k];
        let dq = q as f64 - p as f64;
        *o = w2 * dq * dq + f[p];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force reference on a small random-ish volume with anisotropic spacing.
    #[test]
    fn matches_brute_force() {
        let shape = [7, 5, 4];
        let spacing = [1.0, 2.0, 0.5];
        let n = 7 * 5 * 4;
        let seeds: Vec<bool> = (0..n).map(|i| (i * 37 + 11) % 23 == 0).collect();
        let d = squared_distance(&seeds, shape, spacing);
        for (i, &found) in d.iter().enumerate() {
            let (x, y, z) = (i % 7, (i / 7) % 5, i / 35);
            let mut best = f64::INFINITY;
            for j in (0..n).filter(|&j| seeds[j]) {
                let (a, b, c) = (j % 7, (j / 7) % 5, j / 35);
                let dd = ((x as f64 - a as f64) * 1.0).powi(2)
                    + ((y as f64 - b as f64) * 2.0).powi(2)
                    + ((z as f64 - c as f64) * 0.5).powi(2);
                best = best.min(dd);
            }
            assert!((found - best).abs() < 1e-9, "voxel {i}: {found} vs {best}");
        }
    }

    #[test]
    fn no_seeds_means_infinite_distance() {
        let d = squared_distance(&[false; 8], [2, 2, 2], [1.0; 3]);
        assert!(d.iter().all(|v| v.is_infinite()));
    }
}
