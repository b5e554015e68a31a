use crate::backend::{self, ReduceOp};
use crate::{Error, Result, Tensor};

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

    fn reduce_dim(&self, op: &'static str, dim: usize, keepdim: bool, kind: ReduceOp) -> Result<Tensor> {
        self.check_dim(op, dim)?;
        backend::of([self]).reduce_dim(self, op, dim, keepdim, kind)
    }

    pub fn sum_dim(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.reduce_dim("sum_dim", dim, keepdim, ReduceOp::Sum)
    }

    pub fn max_dim(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.reduce_dim("max_dim", dim, keepdim, ReduceOp::Max)
    }

    /// Sum of all elements as a scalar tensor (f64 accumulation).
    pub fn sum_all(&self) -> Result<Tensor> {
        backend::of([self]).sum_all_div(self, 1.0)
    }

    /// `sum_all() / denom`, divided before the sum is rounded to f32 (on the CPU, in f64:
    /// the mean of a loss over a token count, as the trainer always computed it).
    pub fn sum_all_div(&self, denom: f32) -> Result<Tensor> {
        backend::of([self]).sum_all_div(self, denom)
    }

    pub fn mean_all(&self) -> Result<Tensor> {
        if self.numel() == 0 {
            return Err(Error::BadShape { op: "mean_all", msg: "mean of an empty tensor".into() });
        }
        backend::of([self]).mean_all(self)
    }

    /// Softmax over the last dimension.
    pub fn softmax_last(&self) -> Result<Tensor> {
        backend::of([self]).softmax_last(self)
    }

    /// `sum_t sum_i t[i]^2` over `ts` (all on one device), read back: the square of the
    /// global gradient norm. On the CPU squared and summed in f64.
    pub fn sum_squares(ts: &[&Tensor]) -> Result<f64> {
        backend::of(ts.iter().copied()).sum_squares(ts)
    }
}
