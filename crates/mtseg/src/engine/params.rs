//! The parameters of a burn network as plain arrays, keyed by their module path
//! (`branches.0.layers.3.conv.weight`, `head.fc1.bias`, ...), and the way back.

use std::collections::BTreeMap;

use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
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

struct Writer<'a> {
    path: Vec<String>,
    values: &'a BTreeMap<String, Vec<f32>>,
}

impl ModuleMapper for Writer<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(values) = self.values.get(&self.path.join(".")) else {
            return param;
        };
        let (id, tensor, _) = param.consume();
        let shape = tensor.dims();
        let device = tensor.device();
        let replaced = Tensor::<D>::from_data(TensorData::new(values.clone(), shape), &device);
        Param::initialized(id, replaced)
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

    pub fn get(&self, path: &str) -> &ParamTensor {
        self.tensors
            .get(path)
            .unwrap_or_else(|| panic!("the network has no parameter {path}"))
    }

    pub fn values(&self, path: &str) -> Vec<f32> {
        self.get(path).values.clone()
    }
}

/// The network with the given values replacing the parameters at those paths.
pub fn write_values(net: TriplanarNet, values: &BTreeMap<String, Vec<f32>>) -> TriplanarNet {
    net.map(&mut Writer {
        path: Vec::new(),
        values,
    })
}
