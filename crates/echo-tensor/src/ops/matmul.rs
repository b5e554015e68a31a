use crate::backend;
use crate::{Error, Result, Tensor};

impl Tensor {
    /// Batched matrix product `op(a) @ op(b)` where `op` transposes the last two dims when
    /// asked. `a` is `[..., m, k]` (`[..., k, m]` if `ta`); `b` is `[..., k, n]`
    /// (`[..., n, k]` if `tb`) with the same batch dims as `a`, or 2-D (shared by every batch).
    /// A shared 2-D `b` may be a bf16 base weight when `a` is not transposed (see
    /// [`Tensor::linear`]).
    pub fn matmul_t(&self, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
        let op = "matmul";
        let mismatch = || Error::ShapeMismatch { op, lhs: self.shape().clone(), rhs: b.shape().clone() };
        if self.rank() < 2 || b.rank() < 2 {
            return Err(mismatch());
        }
        let (ad, bd) = (self.dims(), b.dims());
        let (ar, br) = (ad.len(), bd.len());
        let (m, k) = if ta { (ad[ar - 1], ad[ar - 2]) } else { (ad[ar - 2], ad[ar - 1]) };
        let (k2, n) = if tb { (bd[br - 1], bd[br - 2]) } else { (bd[br - 2], bd[br - 1]) };
        let batch_dims = &ad[..ar - 2];
        if k != k2 || (br > 2 && &bd[..br - 2] != batch_dims) {
            return Err(mismatch());
        }
        backend::of([self, b]).matmul_t(self, b, ta, tb, m, k, n)
    }

    pub fn matmul(&self, b: &Tensor) -> Result<Tensor> {
        self.matmul_t(b, false, false)
    }

    /// `x @ w^T` for `x` `[..., in]` and a weight `w` `[out, in]` (the PyTorch layout). `w`
    /// may be bf16 (a frozen base weight): `x` is then rounded to bf16 and the products
    /// accumulated in f32 (cuBLAS on a GPU, its twin on the CPU: `crate::cpu::mixed`), giving f32.
    pub fn linear(&self, w: &Tensor) -> Result<Tensor> {
        if self.rank() < 1 || w.rank() != 2 || self.shape().last() != w.dims()[1] {
            return Err(Error::ShapeMismatch { op: "linear", lhs: self.shape().clone(), rhs: w.shape().clone() });
        }
        let rows = self.shape().rows();
        let x2 = self.reshape([rows, self.shape().last()])?;
        let y = x2.matmul_t(w, false, true)?;
        let mut dims = self.dims().to_vec();
        *dims.last_mut().unwrap() = w.dims()[0];
        y.reshape(dims)
    }
}
