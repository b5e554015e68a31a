//! Embedding lookup and its adjoint on slices: the CPU twin of `kernels/embed.cu` (the same
//! loops as `Tensor::index_select` / `Tensor::scatter_add_rows` in echo-tensor).

/// `out[i, :] = table[idx[i], :]`, rows of `dim`.
pub fn gather_rows(table: &[f32], idx: &[usize], dim: usize, out: &mut [f32]) {
    assert!(out.len() >= idx.len() * dim, "gather_rows: output too short");
    for (o, &i) in out.chunks_mut(dim).zip(idx) {
        o.copy_from_slice(&table[i * dim..(i + 1) * dim]);
    }
}

/// `out[idx[k], :] += src[k, :]` in order of `k` (repeated indices accumulate).
pub fn scatter_add_rows(src: &[f32], idx: &[usize], dim: usize, out: &mut [f32]) {
    assert!(src.len() >= idx.len() * dim, "scatter_add_rows: source too short");
    for (k, &i) in idx.iter().enumerate() {
        out[i * dim..(i + 1) * dim].iter_mut().zip(&src[k * dim..(k + 1) * dim]).for_each(|(o, s)| *o += s);
    }
}
