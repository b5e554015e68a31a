use crate::backend;
use crate::{Error, Result, Tensor};

impl Tensor {
    /// Reorders dimensions: output dimension `i` is input dimension `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let r = self.rank();
        let mut seen = vec![false; r];
        if perm.len() != r || perm.iter().any(|&p| p >= r || std::mem::replace(&mut seen[p], true)) {
            return Err(Error::BadShape {
                op: "permute",
                msg: format!("{perm:?} is not a permutation of the dims of {}", self.shape()),
            });
        }
        backend::of([self]).permute(self, perm)
    }

    /// Swaps two dimensions.
    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Tensor> {
        if d0 >= self.rank() || d1 >= self.rank() {
            return Err(Error::BadShape {
                op: "transpose",
                msg: format!("dims ({d0}, {d1}) out of range for {}", self.shape()),
            });
        }
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(d0, d1);
        self.permute(&perm)
    }

    /// `len` entries of dimension `dim` starting at `start`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        if dim >= self.rank() || start + len > self.dims()[dim] {
            return Err(Error::BadShape {
                op: "narrow",
                msg: format!("range {start}..{} of dim {dim} out of bounds for {}", start + len, self.shape()),
            });
        }
        backend::of([self]).narrow(self, dim, start, len)
    }

    /// Joins tensors along `dim`; all other dimensions must agree.
    pub fn concat(parts: &[&Tensor], dim: usize) -> Result<Tensor> {
        let first = parts.first().ok_or(Error::BadShape { op: "concat", msg: "no tensors to join".into() })?;
        if dim >= first.rank() {
            return Err(Error::BadShape { op: "concat", msg: format!("dim {dim} out of range for {}", first.shape()) });
        }
        for p in parts {
            let same = p.rank() == first.rank()
                && p.dims().iter().zip(first.dims()).enumerate().all(|(i, (a, b))| i == dim || a == b);
            if !same {
                return Err(Error::ShapeMismatch { op: "concat", lhs: first.shape().clone(), rhs: p.shape().clone() });
            }
        }
        backend::of(parts.iter().copied()).concat(parts, dim)
    }

    /// Gathers slices along dimension 0: `out[i] = self[idx[i]]` (embedding lookup).
    pub fn index_select(&self, idx: &[usize]) -> Result<Tensor> {
        if self.rank() == 0 {
            return Err(Error::BadShape { op: "index_select", msg: "cannot index a scalar".into() });
        }
        backend::of([self]).index_select(self, idx)
    }

    /// The adjoint of [`Tensor::index_select`]: a `[rows, ...]` tensor of zeros with
    /// `self[i]` added into row `idx[i]` (repeated indices accumulate).
    pub fn scatter_add_rows(&self, idx: &[usize], rows: usize) -> Result<Tensor> {
        if self.rank() == 0 || self.dims()[0] != idx.len() {
            return Err(Error::BadShape {
                op: "scatter_add_rows",
                msg: format!("{} indices for a source of shape {}", idx.len(), self.shape()),
            });
        }
        backend::of([self]).scatter_add_rows(self, idx, rows)
    }
}
