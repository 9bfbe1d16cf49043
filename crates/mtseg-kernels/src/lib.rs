//! mtseg's CPU kernels, the hot loops of both networks' training and inference, on plain
//! `f32` arrays with no knowledge of burn or of the networks:
//!
//! - [`conv`]: a 3x3 convolution in channels-last layout (valid padding; callers pad), its
//!   input and weight gradients, and the layout conversions to and from burn's `[co][ci][3][3]`;
//! - [`direct`]: the SIMD kernel under it (AVX-512 or AVX2+FMA, chosen at run time, with a
//!   matrix-product fallback);
//! - [`winograd`]: Winograd's F(2x2,3x3) transform over that kernel, for the layers where it
//!   pays;
//! - [`matmul`]: row-major matrix products on the `gemm` crate (dense layers, heads,
//!   transposed convolutions);
//! - [`activation`]: ELU and its derivative, vectorised.
//!
//! Why written by hand: burn's CPU backends ran these networks several times slower than
//! PyTorch, and no maintained crate offers a channels-last 3x3 convolution with its gradients
//! for these sizes (README, "Written by hand").

pub mod activation;
pub mod conv;
pub mod direct;
pub mod matmul;
pub mod winograd;
