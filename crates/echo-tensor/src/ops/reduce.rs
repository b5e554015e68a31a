use crate::cuda::{self, ops::ReduceOp};
use crate::{Error, Result, Shape, Tensor};

impl Tensor {
    fn check_dim(&self, op: &'static str, dim: usize) -> Result<()> {
        if dim >= self.rank() {
            return Err(Error::BadShape {
                op,
                msg: format!("dimension {dim} out of range for shape {}", self.shape()),
            });
        }
        Ok(())
    }

    /// (outer, size, inner) split of the shape around `dim`.
    pub(crate) fn split_at_dim(&self, dim: usize) -> (usize, usize, usize) {
        let d = self.dims();
        (d[..dim].iter().product(), d[dim], d[dim + 1..].iter().product())
    }

    fn reduce_dim(
        &self,
        op: &'static str,
        dim: usize,
        keepdim: bool,
        kind: ReduceOp,
        init: f32,
        f: impl Fn(f32, f32) -> f32,
    ) -> Result<Tensor> {
        self.check_dim(op, dim)?;
        if cuda::on_gpu([self]) {
            return cuda::ops::reduce_dim(self, op, dim, keepdim, kind);
        }
        let a = self.f32s(op)?;
        let (outer, size, inner) = self.split_at_dim(dim);
        let mut out = vec![init; outer * inner];
        for o in 0..outer {
            for s in 0..size {
                let row = &a[(o * size + s) * inner..(o * size + s + 1) * inner];
                for (acc, x) in out[o * inner..(o + 1) * inner].iter_mut().zip(row) {
                    *acc = f(*acc, *x);
                }
            }
        }
        let mut dims = self.dims().to_vec();
        if keepdim {
            dims[dim] = 1;
        } else {
            dims.remove(dim);
        }
        Ok(self.with_data(out, Shape::new(dims)))
    }

    pub fn sum_dim(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.reduce_dim("sum_dim", dim, keepdim, ReduceOp::Sum, 0.0, |a, x| a + x)
    }

    pub fn max_dim(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.reduce_dim("max_dim", dim, keepdim, ReduceOp::Max, f32::NEG_INFINITY, f32::max)
    }

    /// Sum of all elements as a scalar tensor (f64 accumulation).
    pub fn sum_all(&self) -> Result<Tensor> {
        if cuda::on_gpu([self]) {
            return cuda::ops::sum_all(self);
        }
        let s: f64 = self.f32s("sum_all")?.iter().map(|&x| x as f64).sum();
        Ok(self.with_data(vec![s as f32], Shape::new(vec![])))
    }

    pub fn mean_all(&self) -> Result<Tensor> {
        if self.numel() == 0 {
            return Err(Error::BadShape { op: "mean_all", msg: "mean of an empty tensor".into() });
        }
        if cuda::on_gpu([self]) {
            return cuda::ops::mean_all(self);
        }
        let s = self.sum_all()?.item()?;
        Ok(Tensor::scalar(s / self.numel() as f32))
    }

    /// Softmax over the last dimension.
    pub fn softmax_last(&self) -> Result<Tensor> {
        if cuda::on_gpu([self]) {
            return cuda::ops::softmax_last(self);
        }
        let n = self.shape().last();
        let a = self.f32s("softmax_last")?;
        let mut out = a.to_vec();
        for row in out.chunks_mut(n.max(1)) {
            let m = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let mut s = 0.0f32;
            row.iter_mut().for_each(|x| {
                *x = (*x - m).exp();
                s += *x;
            });
            row.iter_mut().for_each(|x| *x /= s);
        }
        Ok(self.with_data(out, self.shape().clone()))
    }
}
