use crate::{cuda, mixed};
use crate::{Error, Result, Shape, Tensor};
use echo_kernels::cpu::gemm::{matmul, Par};

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
        if cuda::on_gpu([self, b]) {
            return cuda::ops::matmul_t(self, b, ta, tb, m, k, n);
        }
        let batch: usize = batch_dims.iter().product();
        let mut out = vec![0.0f32; batch * m * n];
        // A frozen bf16 weight shared by every batch (`x W^T`, or `dy W` for its input
        // gradient): the twin of the GPU's mixed precision (`crate::mixed`).
        if mixed::is_bf16_host(b) && br == 2 && !ta {
            let a = mixed::round_bf16(self.f32s(op)?);
            let w = mixed::weight_f32(b, op)?;
            matmul(&mut out, &a, &w, batch * m, k, n, false, tb, 1.0, false, Par::Rayon);
            let mut dims = batch_dims.to_vec();
            dims.extend([m, n]);
            return Ok(self.with_data(out, Shape::new(dims)));
        }
        let (a_data, b_data) = (self.f32s(op)?, b.f32s(op)?);
        // A shared 2-D right operand with an untransposed left one is one big GEMM.
        if br == 2 && !ta {
            matmul(&mut out, a_data, b_data, batch * m, k, n, false, tb, 1.0, false, Par::Rayon);
        } else {
            let b_step = if br == 2 { 0 } else { k * n };
            for i in 0..batch {
                matmul(
                    &mut out[i * m * n..(i + 1) * m * n],
                    &a_data[i * m * k..(i + 1) * m * k],
                    &b_data[i * b_step..i * b_step + k * n],
                    m,
                    k,
                    n,
                    ta,
                    tb,
                    1.0,
                    false,
                    Par::Rayon,
                );
            }
        }
        let mut dims = batch_dims.to_vec();
        dims.extend([m, n]);
        Ok(self.with_data(out, Shape::new(dims)))
    }

    pub fn matmul(&self, b: &Tensor) -> Result<Tensor> {
        self.matmul_t(b, false, false)
    }

    /// `x @ w^T` for `x` `[..., in]` and a weight `w` `[out, in]` (the PyTorch layout). `w`
    /// may be bf16 (a frozen base weight): `x` is then rounded to bf16 and the products
    /// accumulated in f32 (cuBLAS on a GPU, its twin on the CPU: `crate::mixed`), giving f32.
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
