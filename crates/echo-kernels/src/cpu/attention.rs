//! Causal self-attention with grouped-query heads and a key padding mask, flash-style:
//! forward keeps only the per-row log-sum-exp (O(T) per head); backward recomputes the
//! probabilities. Each rayon task materialises one head's `T x T` score block at a time,
//! in its own scratch buffer, and never writes one to the output.
//!
//! Layouts: `q` is `[B, T, Hq, D]`, `k` and `v` are `[B, T, Hkv, D]` (as the projections
//! produce them, so no transposes are needed on input); `key_valid` is `[B, T]`.
//! Query `i` attends key `j` when `j <= i` and `key_valid[b, j]`. A query with no key to
//! attend (only possible with left padding) gets a zero output and a zero gradient.

use super::gemm::{gemm, MatRef, Par};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub batch: usize,
    pub seq: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttnDims {
    fn group(&self) -> usize {
        self.q_heads / self.kv_heads
    }
    /// View of head `h` of batch `b` in a `[B, T, H, D]` tensor as a `T x D` matrix.
    fn head_view<'a>(&self, data: &'a [f32], b: usize, h: usize, heads: usize, transposed: bool) -> MatRef<'a> {
        let offset = (b * self.seq * heads + h) * self.head_dim;
        let row = heads * self.head_dim;
        if transposed {
            MatRef { data, offset, rs: 1, cs: row }
        } else {
            MatRef { data, offset, rs: row, cs: 1 }
        }
    }
}

/// Fills `s` (T x T) with `scale * Q_bh K_bg^T` and turns it into probabilities, either
/// computing the row log-sum-exp into `lse` or (backward) reusing the given one.
#[allow(clippy::too_many_arguments)]
fn probabilities(
    dims: &AttnDims,
    q: &[f32],
    k: &[f32],
    key_valid: &[bool],
    b: usize,
    h: usize,
    scale: f32,
    s: &mut [f32],
    lse: &mut [f32],
    lse_known: bool,
) {
    let t = dims.seq;
    let g = h / dims.group();
    let qv = dims.head_view(q, b, h, dims.q_heads, false);
    let kt = dims.head_view(k, b, g, dims.kv_heads, true);
    gemm(t, t, dims.head_dim, s, 0, t, qv, kt, scale, false, Par::Serial);
    let valid = &key_valid[b * t..(b + 1) * t];
    for i in 0..t {
        let row = &mut s[i * t..(i + 1) * t];
        if !lse_known {
            let mut m = f32::NEG_INFINITY;
            let mut any = false;
            for j in 0..=i {
                if valid[j] {
                    any = true;
                    m = m.max(row[j]);
                }
            }
            let mut sum = 0.0f32;
            if m.is_finite() {
                for j in 0..=i {
                    if valid[j] {
                        sum += (row[j] - m).exp();
                    }
                }
            }
            // +inf marks "no key to attend" (zeros out). A row with keys whose sum is not
            // positive saw a NaN or infinite score (`max` skips NaN, so a NaN only shows in
            // the sum, or as `m` left at -inf): its lse is NaN, so its probabilities and its
            // output are NaN rather than a plausible zero. Finite scores never get here.
            lse[i] = if !any {
                f32::INFINITY
            } else if sum > 0.0 {
                m + sum.ln()
            } else {
                f32::NAN
            };
        }
        let l = lse[i];
        // `l != +inf` rather than `l.is_finite()`: a NaN lse must give NaN probabilities.
        // For finite scores `l` is finite or +inf, so this is the old rule bit for bit.
        for j in 0..t {
            row[j] = if j <= i && valid[j] && l != f32::INFINITY { (row[j] - l).exp() } else { 0.0 };
        }
    }
}

/// `[B, H, T, D]` -> `[B, T, H, D]`.
fn bhtd_to_bthd(src: &[f32], dst: &mut [f32], heads: usize, t: usize, d: usize) {
    dst.par_chunks_mut(heads * d).enumerate().for_each(|(bt, out)| {
        let (b, i) = (bt / t, bt % t);
        for h in 0..heads {
            let from = ((b * heads + h) * t + i) * d;
            out[h * d..(h + 1) * d].copy_from_slice(&src[from..from + d]);
        }
    });
}

/// Forward. Writes `out` (`[B, T, Hq, D]`) and `lse` (`[B, Hq, T]`).
pub fn attention_forward(
    dims: &AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    key_valid: &[bool],
    scale: f32,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let (t, d) = (dims.seq, dims.head_dim);
    let mut out_bhtd = vec![0.0f32; out.len()];
    out_bhtd.par_chunks_mut(t * d).zip(lse.par_chunks_mut(t)).enumerate().for_each(|(bh, (o, lse))| {
        let (b, h) = (bh / dims.q_heads, bh % dims.q_heads);
        let mut s = vec![0.0f32; t * t];
        probabilities(dims, q, k, key_valid, b, h, scale, &mut s, lse, false);
        let vv = dims.head_view(v, b, h / dims.group(), dims.kv_heads, false);
        gemm(t, d, t, o, 0, d, MatRef::dense(&s, t, false), vv, 1.0, false, Par::Serial);
    });
    bhtd_to_bthd(&out_bhtd, out, dims.q_heads, t, d);
}

/// Backward. `out` and `lse` are the forward's results, `dout` the incoming gradient
/// (`[B, T, Hq, D]`). Writes `dq` (`[B, T, Hq, D]`), `dk` and `dv` (`[B, T, Hkv, D]`).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dims: &AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    key_valid: &[bool],
    scale: f32,
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (t, d, group) = (dims.seq, dims.head_dim, dims.group());
    let mut dq_bhtd = vec![0.0f32; dq.len()];
    let mut dk_bhtd = vec![0.0f32; dk.len()];
    let mut dv_bhtd = vec![0.0f32; dv.len()];
    // One task per (batch, kv head): the query heads sharing that kv head accumulate into
    // its dK/dV serially, so no two tasks write the same memory.
    dq_bhtd
        .par_chunks_mut(group * t * d)
        .zip(dk_bhtd.par_chunks_mut(t * d))
        .zip(dv_bhtd.par_chunks_mut(t * d))
        .enumerate()
        .for_each(|(bg, ((dq_g, dk_g), dv_g))| {
            let (b, g) = (bg / dims.kv_heads, bg % dims.kv_heads);
            let mut p = vec![0.0f32; t * t];
            let mut ds = vec![0.0f32; t * t];
            for hh in 0..group {
                let h = g * group + hh;
                let mut lse_row = lse[(b * dims.q_heads + h) * t..(b * dims.q_heads + h + 1) * t].to_vec();
                probabilities(dims, q, k, key_valid, b, h, scale, &mut p, &mut lse_row, true);
                let dov = dims.head_view(dout, b, h, dims.q_heads, false);
                // dV += P^T dO
                gemm(t, d, t, dv_g, 0, d, MatRef::dense(&p, t, true), dov, 1.0, true, Par::Serial);
                // dP = dO V^T
                let vt = dims.head_view(v, b, g, dims.kv_heads, true);
                gemm(t, t, d, &mut ds, 0, t, dov, vt, 1.0, false, Par::Serial);
                // dS = P * (dP - rowsum(dO * O))
                for i in 0..t {
                    let base = ((b * t + i) * dims.q_heads + h) * d;
                    let di: f32 = (0..d).map(|e| dout[base + e] * out[base + e]).sum();
                    for j in 0..t {
                        ds[i * t + j] = p[i * t + j] * (ds[i * t + j] - di);
                    }
                }
                // dQ = scale * dS K ; dK += scale * dS^T Q
                let kv = dims.head_view(k, b, g, dims.kv_heads, false);
                gemm(t, d, t, dq_g, hh * t * d, d, MatRef::dense(&ds, t, false), kv, scale, false, Par::Serial);
                let qv = dims.head_view(q, b, h, dims.q_heads, false);
                gemm(t, d, t, dk_g, 0, d, MatRef::dense(&ds, t, true), qv, scale, true, Par::Serial);
            }
        });
    bhtd_to_bthd(&dq_bhtd, dq, dims.q_heads, t, d);
    bhtd_to_bthd(&dk_bhtd, dk, dims.kv_heads, t, d);
    bhtd_to_bthd(&dv_bhtd, dv, dims.kv_heads, t, d);
}
