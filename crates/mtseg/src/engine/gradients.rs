//! A training step's results in the structure of the burn network they belong to: gradients
//! filed under its parameters for burn's optimizer, and batch-norm running statistics written
//! into it. The typed boundary between the kernels and burn, for both networks.

use burn::module::Param;
use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::optim::GradientsParams;
use burn::prelude::*;

/// The gradients of a 3x3 convolution and its batch norm (burn's layouts), and the norm's new
/// running statistics (moving averages, not gradients).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerGradients {
    /// `[co][ci][3][3]`.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
}

/// The weight (burn's layout) and bias gradients of a layer without batch norm.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearGradients {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Gradients being filed under a network's parameters, as tensors on `device`.
pub(super) struct Filing<'a> {
    grads: GradientsParams,
    device: &'a Device,
}

impl<'a> Filing<'a> {
    pub(super) fn new(device: &'a Device) -> Self {
        Filing {
            grads: GradientsParams::new(),
            device,
        }
    }

    fn file<const D: usize>(&mut self, param: &Param<Tensor<D>>, values: &[f32]) {
        let data = TensorData::new(values.to_vec(), param.dims());
        self.grads
            .register::<D>(param.id, Tensor::from_data(data, self.device));
    }

    /// A layer without batch norm: its weight (of any rank) and its bias, if it has one.
    pub(super) fn linear<const D: usize>(
        &mut self,
        weight: &Param<Tensor<D>>,
        bias: &Option<Param<Tensor<1>>>,
        g: &LinearGradients,
    ) {
        self.file(weight, &g.weight);
        if let Some(bias) = bias {
            self.file(bias, &g.bias);
        }
    }

    /// A 3x3 convolution and the batch norm after it.
    pub(super) fn conv_and_norm(&mut self, conv: &Conv2d, norm: &BatchNorm, g: &LayerGradients) {
        self.file(&conv.weight, &g.weight);
        if let Some(bias) = &conv.bias {
            self.file(bias, &g.bias);
        }
        self.file(&norm.gamma, &g.gamma);
        self.file(&norm.beta, &g.beta);
    }

    pub(super) fn done(self) -> GradientsParams {
        self.grads
    }
}

/// Writes `g`'s running statistics into `norm` (shared state: every copy of the network
/// sees them).
pub(super) fn update_running(norm: &BatchNorm, g: &LayerGradients) {
    for (state, values) in [
        (&norm.running_mean, &g.running_mean),
        (&norm.running_var, &g.running_var),
    ] {
        let device = state.value().device();
        let shape = [values.len()];
        state.update(Tensor::<1>::from_data(
            TensorData::new(values.clone(), shape),
            &device,
        ));
    }
}
