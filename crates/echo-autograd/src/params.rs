use crate::{Error, Result};
use echo_tensor::{Device, Tensor};
use std::collections::HashMap;

/// Index of a parameter in its [`ParamStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub usize);

/// A named tensor. Only trainable parameters ever get a gradient buffer.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub value: Tensor,
    pub grad: Option<Tensor>,
    pub trainable: bool,
}

/// Named parameters in registration order; gradients accumulate here across backward passes
/// (micro-batches) until [`ParamStore::zero_grad`].
#[derive(Default, Debug)]
pub struct ParamStore {
    params: Vec<Param>,
    by_name: HashMap<String, ParamId>,
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, name: impl Into<String>, value: Tensor, trainable: bool) -> Result<ParamId> {
        let name = name.into();
        if self.by_name.contains_key(&name) {
            return Err(Error::DuplicateParam(name));
        }
        let id = ParamId(self.params.len());
        self.by_name.insert(name.clone(), id);
        self.params.push(Param { name, value, grad: None, trainable });
        Ok(id)
    }

    pub fn id(&self, name: &str) -> Option<ParamId> {
        self.by_name.get(name).copied()
    }
    pub fn get(&self, id: ParamId) -> &Param {
        &self.params[id.0]
    }
    pub fn get_mut(&mut self, id: ParamId) -> &mut Param {
        &mut self.params[id.0]
    }
    pub fn value(&self, id: ParamId) -> &Tensor {
        &self.params[id.0].value
    }
    pub fn grad(&self, id: ParamId) -> Option<&Tensor> {
        self.params[id.0].grad.as_ref()
    }
    pub fn len(&self) -> usize {
        self.params.len()
    }
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &Param)> {
        self.params.iter().enumerate().map(|(i, p)| (ParamId(i), p))
    }
    pub fn trainable(&self) -> impl Iterator<Item = ParamId> + '_ {
        self.iter().filter(|(_, p)| p.trainable).map(|(id, _)| id)
    }

    /// Adds `g` into the parameter's gradient buffer (creating it on first use).
    pub fn accumulate(&mut self, id: ParamId, g: Tensor) -> Result<()> {
        let p = &mut self.params[id.0];
        match &mut p.grad {
            None => {
                if g.shape() != p.value.shape() {
                    return Err(Error::Invalid(format!(
                        "gradient of `{}` has shape {}, the parameter {}",
                        p.name,
                        g.shape(),
                        p.value.shape()
                    )));
                }
                p.grad = Some(g);
            }
            Some(acc) => acc.add_assign(&g)?,
        }
        Ok(())
    }

    /// A copy of the store with every value (and gradient) on `device`: names, order,
    /// trainability and ids unchanged. On the device the values are f32, as here (adapter and
    /// echo parameters are trained in f32 everywhere).
    pub fn to_device(&self, device: Device) -> Result<ParamStore> {
        let mut params = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let grad = p.grad.as_ref().map(|g| g.to_device(device)).transpose()?;
            params.push(Param {
                name: p.name.clone(),
                value: p.value.to_device(device)?,
                grad,
                trainable: p.trainable,
            });
        }
        Ok(ParamStore { params, by_name: self.by_name.clone() })
    }

    /// Drops every gradient buffer.
    pub fn zero_grad(&mut self) {
        self.params.iter_mut().for_each(|p| p.grad = None);
    }
}
