//! Causal self-attention with grouped-query heads, a key padding mask and packed sequences,
//! flash-style: forward keeps only the per-row log-sum-exp (O(T) per head); backward recomputes
//! the probabilities. Each rayon task materialises one block of scores at a time, in its own
//! scratch buffer, and never writes one to the output.
//!
//! Layouts: `q` is `[B, T, Hq, D]`, `k` and `v` are `[B, T, Hkv, D]` (as the projections
//! produce them, so no transposes are needed on input); the mask's arrays are `[B, T]`.
//! Query `i` attends key `j` when `key_start[b, i] <= j <= i` and `key_valid[b, j]`.
//! `key_start` is 0 everywhere for a padded batch; in a packed row (several examples one
//! after the other) it is the first position of the query's own example, so attention stays
//! inside each example (block-diagonal causal). A query with no key to attend (left padding,
//! or padding after packed examples) gets a zero output and a zero gradient.
//!
//! The scores are computed per *run*: a stretch of queries sharing a key start, against the
//! keys from that start to the run's last query. A padded row is one run (the `T x T` block);
//! a packed row is one run per example, so no work is spent on another example's keys.
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

/// Which keys each query may attend (see the module docs), both `[B, T]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttnMask {
    pub key_valid: Vec<bool>,
    /// Per query, the first key position it may attend; non-decreasing along a row and at
    /// most the query's own position ([`AttnMask::check`]).
    pub key_start: Vec<u32>,
}

impl AttnMask {
    /// A padded batch: every query sees every valid key at or before it.
    pub fn padding(key_valid: Vec<bool>) -> AttnMask {
        let key_start = vec![0; key_valid.len()];
        AttnMask { key_valid, key_start }
    }

    /// Packed rows of `seq` positions: `rows[b]` lists the lengths of the examples placed one
    /// after the other in row `b`; the positions after them are padding (their own run, with
    /// no valid key).
    pub fn packed(rows: &[Vec<usize>], seq: usize) -> AttnMask {
        let mut key_valid = vec![false; rows.len() * seq];
        let mut key_start = vec![0u32; rows.len() * seq];
        for (b, lens) in rows.iter().enumerate() {
            let mut at = 0;
            for &n in lens {
                key_valid[b * seq + at..b * seq + at + n].fill(true);
                key_start[b * seq + at..b * seq + at + n].fill(at as u32);
                at += n;
            }
            key_start[b * seq + at..(b + 1) * seq].fill(at as u32);
        }
        AttnMask { key_valid, key_start }
    }

    /// Describes what is wrong with the mask for `batch` rows of `seq` positions, if anything.
    pub fn check(&self, batch: usize, seq: usize) -> Result<(), String> {
        let n = batch * seq;
        if self.key_valid.len() != n || self.key_start.len() != n {
            return Err(format!(
                "mask has {} valid flags and {} key starts, [B, T] = [{batch}, {seq}] needs {n}",
                self.key_valid.len(),
                self.key_start.len()
            ));
        }
        for (b, row) in self.key_start.chunks(seq.max(1)).enumerate() {
            for (i, &s) in row.iter().enumerate() {
                if s as usize > i || (i > 0 && s < row[i - 1]) {
                    return Err(format!(
                        "key_start[{b}, {i}] = {s}: a key start must be at most the query's position and \
                         never decrease along a row"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The runs of row `b`: `(key start, first query, end of queries)`, covering `0..seq`.
    fn runs(&self, b: usize, seq: usize) -> Vec<(usize, usize, usize)> {
        let row = &self.key_start[b * seq..(b + 1) * seq];
        let mut out: Vec<(usize, usize, usize)> = Vec::new();
        for (i, &s) in row.iter().enumerate() {
            match out.last_mut() {
                Some(run) if run.0 == s as usize => run.2 = i + 1,
                _ => out.push((s as usize, i, i + 1)),
            }
        }
        out
    }
}

/// The largest score block of any run of any row (the scratch a task needs).
fn largest_block(mask: &AttnMask, dims: &AttnDims) -> usize {
    (0..dims.batch).flat_map(|b| mask.runs(b, dims.seq)).map(|(s, qa, qb)| (qb - qa) * (qb - s)).max().unwrap_or(0)
}

impl AttnDims {
    fn group(&self) -> usize {
        self.q_heads / self.kv_heads
    }
    /// View of head `h` of batch `b` in a `[B, T, H, D]` tensor as a `(T - row0) x D` matrix
    /// starting at position `row0` (or its transpose).
    fn head_view<'a>(
        &self,
        data: &'a [f32],
        b: usize,
        h: usize,
        heads: usize,
        row0: usize,
        transposed: bool,
    ) -> MatRef<'a> {
        let offset = ((b * self.seq + row0) * heads + h) * self.head_dim;
        let row = heads * self.head_dim;
        if transposed {
            MatRef { data, offset, rs: 1, cs: row }
        } else {
            MatRef { data, offset, rs: row, cs: 1 }
        }
    }
}

/// One run of queries `qa..qb` of row `b`, attending keys `ks..qb`.
#[derive(Clone, Copy)]
struct Run {
    b: usize,
    ks: usize,
    qa: usize,
    qb: usize,
}

impl Run {
    fn queries(&self) -> usize {
        self.qb - self.qa
    }
    fn keys(&self) -> usize {
        self.qb - self.ks
    }
}

/// Fills `s` (`queries x keys` of the run) with `scale * Q K^T` and turns it into
/// probabilities, either computing each query's log-sum-exp into `lse` (indexed by position)
/// or (backward) reusing the given one.
#[allow(clippy::too_many_arguments)]
fn probabilities(
    dims: &AttnDims,
    q: &[f32],
    k: &[f32],
    key_valid: &[bool],
    run: Run,
    h: usize,
    scale: f32,
    s: &mut [f32],
    lse: &mut [f32],
    lse_known: bool,
) {
    let (t, b) = (dims.seq, run.b);
    let (m, nk) = (run.queries(), run.keys());
    let g = h / dims.group();
    let qv = dims.head_view(q, b, h, dims.q_heads, run.qa, false);
    let kt = dims.head_view(k, b, g, dims.kv_heads, run.ks, true);
    gemm(m, nk, dims.head_dim, s, 0, nk, qv, kt, scale, false, Par::Serial);
    let valid = &key_valid[b * t + run.ks..b * t + run.qb];
    for il in 0..m {
        let i = run.qa + il;
        // Keys of this query, relative to the run's key start: 0..=last.
        let last = i - run.ks;
        let row = &mut s[il * nk..(il + 1) * nk];
        if !lse_known {
            let mut mx = f32::NEG_INFINITY;
            let mut any = false;
            for j in 0..=last {
                if valid[j] {
                    any = true;
                    mx = mx.max(row[j]);
                }
            }
            let mut sum = 0.0f32;
            if mx.is_finite() {
                for j in 0..=last {
                    if valid[j] {
                        sum += (row[j] - mx).exp();
                    }
                }
            }
            // +inf marks "no key to attend" (zeros out). A row with keys whose sum is not
            // positive saw a NaN or infinite score (`max` skips NaN, so a NaN only shows in
            // the sum, or as `mx` left at -inf): its lse is NaN, so its probabilities and its
            // output are NaN rather than a plausible zero. Finite scores never get here.
            lse[i] = if !any {
                f32::INFINITY
            } else if sum > 0.0 {
                mx + sum.ln()
            } else {
                f32::NAN
            };
        }
        let l = lse[i];
        // `l != +inf` rather than `l.is_finite()`: a NaN lse must give NaN probabilities.
        for j in 0..nk {
            row[j] = if j <= last && valid[j] && l != f32::INFINITY { (row[j] - l).exp() } else { 0.0 };
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
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    dims: &AttnDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &AttnMask,
    scale: f32,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let (t, d) = (dims.seq, dims.head_dim);
    let runs: Vec<Vec<(usize, usize, usize)>> = (0..dims.batch).map(|b| mask.runs(b, t)).collect();
    let scratch = largest_block(mask, dims);
    let mut out_bhtd = vec![0.0f32; out.len()];
    out_bhtd.par_chunks_mut(t * d).zip(lse.par_chunks_mut(t)).enumerate().for_each(|(bh, (o, lse))| {
        let (b, h) = (bh / dims.q_heads, bh % dims.q_heads);
        let mut s = vec![0.0f32; scratch];
        for &(ks, qa, qb) in &runs[b] {
            let run = Run { b, ks, qa, qb };
            probabilities(dims, q, k, &mask.key_valid, run, h, scale, &mut s, lse, false);
            let vv = dims.head_view(v, b, h / dims.group(), dims.kv_heads, ks, false);
            let (m, nk) = (run.queries(), run.keys());
            gemm(m, d, nk, o, qa * d, d, MatRef::dense(&s, nk, false), vv, 1.0, false, Par::Serial);
        }
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
    mask: &AttnMask,
    scale: f32,
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (t, d, group) = (dims.seq, dims.head_dim, dims.group());
    let runs: Vec<Vec<(usize, usize, usize)>> = (0..dims.batch).map(|b| mask.runs(b, t)).collect();
    let scratch = largest_block(mask, dims);
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
            let mut p = vec![0.0f32; scratch];
            let mut ds = vec![0.0f32; scratch];
            for hh in 0..group {
                let h = g * group + hh;
                let mut lse_row = lse[(b * dims.q_heads + h) * t..(b * dims.q_heads + h + 1) * t].to_vec();
                for &(ks, qa, qb) in &runs[b] {
                    let run = Run { b, ks, qa, qb };
                    let (m, nk) = (run.queries(), run.keys());
                    probabilities(dims, q, k, &mask.key_valid, run, h, scale, &mut p, &mut lse_row, true);
                    let dov = dims.head_view(dout, b, h, dims.q_heads, qa, false);
                    // dV += P^T dO
                    gemm(nk, d, m, dv_g, ks * d, d, MatRef::dense(&p, nk, true), dov, 1.0, true, Par::Serial);
                    // dP = dO V^T
                    let vt = dims.head_view(v, b, g, dims.kv_heads, ks, true);
                    gemm(m, nk, d, &mut ds, 0, nk, dov, vt, 1.0, false, Par::Serial);
                    // dS = P * (dP - rowsum(dO * O))
                    for il in 0..m {
                        let base = ((b * t + qa + il) * dims.q_heads + h) * d;
                        let di: f32 = (0..d).map(|e| dout[base + e] * out[base + e]).sum();
                        for j in 0..nk {
                            ds[il * nk + j] = p[il * nk + j] * (ds[il * nk + j] - di);
                        }
                    }
                    // dQ = scale * dS K ; dK += scale * dS^T Q
                    let kv = dims.head_view(k, b, g, dims.kv_heads, ks, false);
                    let dq_at = hh * t * d + qa * d;
                    gemm(m, d, nk, dq_g, dq_at, d, MatRef::dense(&ds, nk, false), kv, scale, false, Par::Serial);
                    let qv = dims.head_view(q, b, h, dims.q_heads, qa, false);
                    gemm(nk, d, m, dk_g, ks * d, d, MatRef::dense(&ds, nk, true), qv, scale, true, Par::Serial);
                }
            }
        });
    bhtd_to_bthd(&dq_bhtd, dq, dims.q_heads, t, d);
    bhtd_to_bthd(&dk_bhtd, dk, dims.kv_heads, t, d);
    bhtd_to_bthd(&dv_bhtd, dv, dims.kv_heads, t, d);
}
