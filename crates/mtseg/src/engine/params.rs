//! Test support: the parameters of a burn network as plain arrays, keyed by their module path
//! (`branches.0.layers.3.conv.weight`, `head.fc1.bias`, ...), to compare two networks or
//! file burn's gradients by name. The kernels read and write the modules themselves
//! ([`super::gradients`]).

use std::collections::BTreeMap;

use burn::module::{ModuleVisitor, Param, ParamId};
use burn::prelude::*;

use crate::model::TriplanarNet;

#[derive(Clone, Debug)]
pub struct ParamTensor {
    pub id: ParamId,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Every float parameter and running statistic of a network.
#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    pub tensors: BTreeMap<String, ParamTensor>,
}

struct Reader {
    path: Vec<String>,
    tensors: BTreeMap<String, ParamTensor>,
}

impl ModuleVisitor for Reader {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        let shape = tensor.dims().to_vec();
        let values = tensor
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("float parameters convert to f32");
        self.tensors.insert(
            self.path.join("."),
            ParamTensor {
                id: param.id,
                shape,
                values,
            },
        );
    }
}

impl ParamStore {
    /// Reads every parameter (from the evaluation-mode copy, so running statistics are
    /// current).
    pub fn read(net: &TriplanarNet) -> Self {
        let mut reader = Reader {
            path: Vec::new(),
            tensors: BTreeMap::new(),
        };
        net.valid().visit(&mut reader);
        ParamStore {
            tensors: reader.tensors,
        }
    }
}
