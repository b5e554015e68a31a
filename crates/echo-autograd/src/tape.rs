use crate::{Error, ParamId, ParamStore, Result};
use echo_tensor::{Shape, Tensor};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// A node's backward: given the gradient of its output, the gradients of its inputs (in
/// input order; `None` where an input needs none). Consumed when run.
pub(crate) type BackwardFn = Box<dyn FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>>>;

struct Node {
    inputs: Vec<Option<usize>>,
    backward: Option<BackwardFn>,
    param: Option<ParamId>,
}

struct Inner {
    nodes: Vec<Node>,
    recording: bool,
}

/// The record of one forward pass. Cheap to clone (shared handle); single-threaded (ops
/// parallelise internally).
#[derive(Clone)]
pub struct Tape(Rc<RefCell<Inner>>);

/// A value on a tape. `node` is `None` for constants: values that need no gradient.
#[derive(Clone)]
pub struct Var {
    value: Tensor,
    node: Option<usize>,
    tape: Tape,
}

impl Var {
    pub fn value(&self) -> &Tensor {
        &self.value
    }
    pub fn shape(&self) -> &Shape {
        self.value.shape()
    }
    pub fn dims(&self) -> &[usize] {
        self.value.dims()
    }
    pub fn requires_grad(&self) -> bool {
        self.node.is_some()
    }
    pub fn tape(&self) -> &Tape {
        &self.tape
    }
    /// The same value as a constant: no gradient flows back through it.
    pub fn detach(&self) -> Var {
        Var { value: self.value.clone(), node: None, tape: self.tape.clone() }
    }
}

/// Restores the tape's recording state when dropped.
pub struct NoGradGuard {
    tape: Tape,
    was: bool,
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        self.tape.0.borrow_mut().recording = self.was;
    }
}

/// Gradients of non-parameter leaves (see [`Tape::leaf`]), by variable.
#[derive(Default)]
pub struct Grads(HashMap<usize, Tensor>);

impl Grads {
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        v.node.and_then(|n| self.0.get(&n))
    }
}

impl Default for Tape {
    fn default() -> Self {
        Self::new()
    }
}

impl Tape {
    pub fn new() -> Self {
        Tape(Rc::new(RefCell::new(Inner { nodes: Vec::new(), recording: true })))
    }

    /// A tape that never records (inference).
    pub fn inference() -> Self {
        let t = Self::new();
        t.0.borrow_mut().recording = false;
        t
    }

    /// Stops recording until the guard is dropped.
    pub fn no_grad(&self) -> NoGradGuard {
        let was = std::mem::replace(&mut self.0.borrow_mut().recording, false);
        NoGradGuard { tape: self.clone(), was }
    }

    pub fn is_recording(&self) -> bool {
        self.0.borrow().recording
    }

    /// Number of nodes recorded so far.
    pub fn len(&self) -> usize {
        self.0.borrow().nodes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&self, node: Node) -> usize {
        let mut inner = self.0.borrow_mut();
        inner.nodes.push(node);
        inner.nodes.len() - 1
    }

    pub fn constant(&self, value: Tensor) -> Var {
        Var { value, node: None, tape: self.clone() }
    }

    /// A gradient-requiring leaf outside any store; its gradient comes back in [`Grads`].
    pub fn leaf(&self, value: Tensor) -> Var {
        let node = self.is_recording().then(|| self.push(Node { inputs: vec![], backward: None, param: None }));
        Var { value, node, tape: self.clone() }
    }

    /// The parameter as a variable: a leaf whose gradient accumulates into the store if it is
    /// trainable (and the tape records), a constant otherwise.
    pub fn param(&self, store: &ParamStore, id: ParamId) -> Var {
        let p = store.get(id);
        let node = (p.trainable && self.is_recording())
            .then(|| self.push(Node { inputs: vec![], backward: None, param: Some(id) }));
        Var { value: p.value.clone(), node, tape: self.clone() }
    }

    /// Records an op's result. `backward` receives the output gradient and which inputs need
    /// gradients; it runs at most once. Nothing is recorded (and `backward` is dropped) when
    /// the tape is not recording or no input needs a gradient.
    pub(crate) fn record<F>(&self, value: Tensor, inputs: &[&Var], backward: F) -> Result<Var>
    where
        F: FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + 'static,
    {
        if inputs.iter().any(|v| !Rc::ptr_eq(&v.tape.0, &self.0)) {
            return Err(Error::ForeignVar);
        }
        let needs: Vec<bool> = inputs.iter().map(|v| v.node.is_some()).collect();
        if !self.is_recording() || !needs.iter().any(|&n| n) {
            return Ok(self.constant(value));
        }
        let ids = inputs.iter().map(|v| v.node).collect();
        let f: BackwardFn = Box::new(move |g| backward(g, &needs));
        let node = self.push(Node { inputs: ids, backward: Some(f), param: None });
        Ok(Var { value, node: Some(node), tape: self.clone() })
    }

    /// Backward from a scalar `loss`: parameter gradients are added into `store`, leaf
    /// gradients returned. The tape is emptied (one backward per forward, as in PyTorch).
    pub fn backward(&self, loss: &Var, store: &mut ParamStore) -> Result<Grads> {
        if loss.value.numel() != 1 {
            return Err(Error::NotScalar(loss.shape().clone()));
        }
        let seed = Tensor::full_on(1.0, loss.shape().clone(), loss.value.device())?;
        self.backward_from(loss, seed, store)
    }

    /// Backward from any output with an explicit output gradient `seed`.
    pub fn backward_from(&self, out: &Var, seed: Tensor, store: &mut ParamStore) -> Result<Grads> {
        if seed.shape() != out.shape() {
            return Err(Error::SeedShape { seed: seed.shape().clone(), out: out.shape().clone() });
        }
        if !Rc::ptr_eq(&out.tape.0, &self.0) {
            return Err(Error::ForeignVar);
        }
        let mut nodes = std::mem::take(&mut self.0.borrow_mut().nodes);
        let mut leaves = Grads::default();
        let Some(top) = out.node else { return Ok(leaves) };
        nodes.truncate(top + 1);
        let mut grads: Vec<Option<Tensor>> = vec![None; top + 1];
        grads[top] = Some(seed);
        while let Some(node) = nodes.pop() {
            let i = nodes.len();
            let Some(g) = grads[i].take() else { continue };
            if let Some(pid) = node.param {
                store.accumulate(pid, g)?;
                continue;
            }
            let Some(backward) = node.backward else {
                leaves.0.insert(i, g);
                continue;
            };
            // Running the closure consumes it: the activations it saved are freed here.
            let input_grads = backward(&g)?;
            for (input, ig) in node.inputs.iter().zip(input_grads) {
                if let (Some(j), Some(ig)) = (input, ig) {
                    match &mut grads[*j] {
                        slot @ None => *slot = Some(ig),
                        Some(acc) => acc.add_assign(&ig)?,
                    }
                }
            }
        }
        Ok(leaves)
    }
}
