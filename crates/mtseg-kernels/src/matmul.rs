//! A bounds-checked front to the `gemm` crate (the matrix kernels candle and faer use): every
//! index a call can touch is checked against its slice before the unsafe call.

use gemm::Parallelism;

/// A strided matrix view into a slice: element (r, c) is at `offset + r * rs + c * cs`.
#[derive(Clone, Copy, Debug)]
pub struct View {
    pub offset: usize,
    pub rs: usize,
    pub cs: usize,
}

impl View {
    /// Row-major, rows `cols` apart.
    pub fn rows(offset: usize, row_stride: usize) -> Self {
        View {
            offset,
            rs: row_stride,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with rows `row_stride` apart.
    pub fn transposed(offset: usize, row_stride: usize) -> Self {
        View {
            offset,
            rs: 1,
            cs: row_stride,
        }
    }

    fn last(&self, rows: usize, cols: usize) -> usize {
        self.offset + (rows - 1) * self.rs + (cols - 1) * self.cs
    }
}

/// `dst (m x n) = [dst +] lhs (m x k) * rhs (k x n)`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    d: View,
    accumulate: bool,
    lhs: &[f32],
    l: View,
    rhs: &[f32],
    r: View,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst[d.offset + i * d.rs + j * d.cs] = 0.0;
                }
            }
        }
        return;
    }
    assert!(
        d.last(m, n) < dst.len(),
        "matmul: destination out of bounds"
    );
    assert!(
        l.last(m, k) < lhs.len(),
        "matmul: left operand out of bounds"
    );
    assert!(
        r.last(k, n) < rhs.len(),
        "matmul: right operand out of bounds"
    );
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: every element the kernel reads or writes lies within the slices (checked
    // above), `dst` is borrowed mutably and cannot alias the operands.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().add(d.offset),
            d.cs as isize,
            d.rs as isize,
            accumulate,
            lhs.as_ptr().add(l.offset),
            l.cs as isize,
            l.rs as isize,
            rhs.as_ptr().add(r.offset),
            r.cs as isize,
            r.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_with_strides_and_accumulation() {
        // lhs 2x3, rhs 3x2 (given transposed), dst accumulates.
        let lhs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let rhs_t = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]; // rhs = [[1,0],[0,1],[1,0]]
        let mut dst = [10.0, 0.0, 0.0, 0.0];
        matmul(
            2,
            2,
            3,
            &mut dst,
            View::rows(0, 2),
            true,
            &lhs,
            View::rows(0, 3),
            &rhs_t,
            View::transposed(0, 3),
            1,
        );
        assert_eq!(dst, [14.0, 2.0, 10.0, 5.0]);
        matmul(
            2,
            2,
            3,
            &mut dst,
            View::rows(0, 2),
            false,
            &lhs,
            View::rows(0, 3),
            &rhs_t,
            View::transposed(0, 3),
            2,
        );
        assert_eq!(dst, [4.0, 2.0, 10.0, 5.0]);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn out_of_bounds_views_are_refused() {
        let mut dst = [0.0; 4];
        matmul(
            2,
            2,
            3,
            &mut dst,
            View::rows(0, 2),
            false,
            &[0.0; 5],
            View::rows(0, 3),
            &[0.0; 6],
            View::rows(0, 2),
            1,
        );
    }
}
