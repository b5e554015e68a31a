use crate::cuda;
use crate::{Buffer, Error, Result, Shape, Tensor};

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
        if cuda::on_gpu([self]) {
            return cuda::ops::permute(self, perm);
        }
        let a = self.f32s("permute")?;
        let in_strides = self.shape().strides();
        let out_dims: Vec<usize> = perm.iter().map(|&p| self.dims()[p]).collect();
        let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
        let n = self.numel();
        let mut out = Vec::with_capacity(n);
        let mut idx = vec![0usize; r];
        let mut off = 0usize;
        for _ in 0..n {
            out.push(a[off]);
            for d in (0..r).rev() {
                idx[d] += 1;
                off += strides[d];
                if idx[d] < out_dims[d] {
                    break;
                }
                off -= strides[d] * out_dims[d];
                idx[d] = 0;
            }
        }
        Ok(self.with_data(out, Shape::new(out_dims)))
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
        if cuda::on_gpu([self]) {
            return cuda::ops::narrow(self, dim, start, len);
        }
        let a = self.f32s("narrow")?;
        let (outer, size, inner) = self.split_at_dim(dim);
        let mut out = Vec::with_capacity(outer * len * inner);
        for o in 0..outer {
            out.extend_from_slice(&a[(o * size + start) * inner..(o * size + start + len) * inner]);
        }
        let mut dims = self.dims().to_vec();
        dims[dim] = len;
        Ok(self.with_data(out, Shape::new(dims)))
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
        if cuda::on_gpu(parts.iter().copied()) {
            return cuda::ops::concat(parts, dim);
        }
        let (outer, _, inner) = first.split_at_dim(dim);
        let total: usize = parts.iter().map(|p| p.dims()[dim]).sum();
        let mut out = Vec::with_capacity(outer * total * inner);
        for o in 0..outer {
            for p in parts {
                let size = p.dims()[dim];
                out.extend_from_slice(&p.f32s("concat")?[o * size * inner..(o + 1) * size * inner]);
            }
        }
        let mut dims = first.dims().to_vec();
        dims[dim] = total;
        Ok(first.with_data(out, Shape::new(dims)))
    }

    /// Gathers slices along dimension 0: `out[i] = self[idx[i]]` (embedding lookup).
    pub fn index_select(&self, idx: &[usize]) -> Result<Tensor> {
        if self.rank() == 0 {
            return Err(Error::BadShape { op: "index_select", msg: "cannot index a scalar".into() });
        }
        if cuda::on_gpu([self]) {
            return cuda::ops::index_select(self, idx);
        }
        let rows = self.dims()[0];
        let inner = self.numel() / rows.max(1);
        // A frozen bf16 table (the base embedding) is accepted, its rows widened as they are
        // gathered, as the GPU's gather does (`crate::mixed`); other dtypes must be f32.
        let table32 = match self.buffer() {
            Buffer::BF16(_) => None,
            _ => Some(self.f32s("index_select")?),
        };
        if let Some(&i) = idx.iter().find(|&&i| i >= rows) {
            return Err(Error::IndexOutOfRange { op: "index_select", index: i as i64, size: rows });
        }
        let mut out = Vec::with_capacity(idx.len() * inner);
        match (table32, self.buffer()) {
            (Some(a), _) => idx.iter().for_each(|&i| out.extend_from_slice(&a[i * inner..(i + 1) * inner])),
            (None, Buffer::BF16(a)) => {
                idx.iter().for_each(|&i| out.extend(a[i * inner..(i + 1) * inner].iter().map(|h| h.to_f32())))
            }
            (None, _) => unreachable!("only a bf16 table has no f32 view"),
        }
        let mut dims = self.dims().to_vec();
        dims[0] = idx.len();
        Ok(self.with_data(out, Shape::new(dims)))
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
        if cuda::on_gpu([self]) {
            return cuda::ops::scatter_add_rows(self, idx, rows);
        }
        let inner = self.numel() / idx.len().max(1);
        let a = self.f32s("scatter_add_rows")?;
        let mut out = vec![0.0f32; rows * inner];
        for (k, &i) in idx.iter().enumerate() {
            if i >= rows {
                return Err(Error::IndexOutOfRange { op: "scatter_add_rows", index: i as i64, size: rows });
            }
            out[i * inner..(i + 1) * inner].iter_mut().zip(&a[k * inner..(k + 1) * inner]).for_each(|(o, s)| *o += s);
        }
        let mut dims = self.dims().to_vec();
        dims[0] = rows;
        Ok(self.with_data(out, Shape::new(dims)))
    }
}
