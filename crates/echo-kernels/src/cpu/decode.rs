//! Attention of new query tokens against a KV cache, for incremental decoding.
//!
//! The cache holds keys and values per sequence and KV head, `[B, Hkv, S, D]` (`S` = capacity),
//! so the keys one head attends are contiguous. Query row `i` of a call sits at cache slot
//! `offset + i` and attends the slots `j <= offset + i` with `key_valid[b, j]`; slot order is
//! the causal order (a batch may left-pad its prompts: pad slots are simply invalid keys).
//! Each decode step costs O(slots so far) per query and head, instead of recomputing the
//! whole `T x T` attention. Scores are scaled by `scale`; softmax is computed per row with its
//! maximum subtracted, in f32. A row with no valid key outputs zeros (as `attention_forward`);
//! a NaN or infinite score makes the row's output NaN.
//!
//! Layouts: `q` and `out` are `[B, Q, Hq, D]` (as the projections produce them), query head `h`
//! reads KV head `h / (Hq / Hkv)` (grouped-query attention).

use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
pub struct DecodeDims {
    pub batch: usize,
    /// New query tokens per sequence in this call.
    pub q_len: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Slots per sequence in the cache.
    pub capacity: usize,
}

/// Copies new keys (or values) `[B, Q, Hkv, D]` into `cache` `[B, Hkv, S, D]` at slots
/// `offset..offset + Q`.
pub fn cache_write(dims: &DecodeDims, new: &[f32], cache: &mut [f32], offset: usize) {
    let (q, hkv, d, s) = (dims.q_len, dims.kv_heads, dims.head_dim, dims.capacity);
    assert!(offset + q <= s, "cache_write: slots {offset}..{} exceed capacity {s}", offset + q);
    assert_eq!(new.len(), dims.batch * q * hkv * d, "cache_write: new has {} values", new.len());
    assert_eq!(cache.len(), dims.batch * hkv * s * d, "cache_write: cache has {} values", cache.len());
    for b in 0..dims.batch {
        for i in 0..q {
            for h in 0..hkv {
                let from = ((b * q + i) * hkv + h) * d;
                let to = ((b * hkv + h) * s + offset + i) * d;
                cache[to..to + d].copy_from_slice(&new[from..from + d]);
            }
        }
    }
}

/// Writes `out` `[B, Q, Hq, D]`: each query row's attention over the cached slots up to its own.
#[allow(clippy::too_many_arguments)]
pub fn decode_attention(
    dims: &DecodeDims,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    key_valid: &[bool],
    offset: usize,
    scale: f32,
    out: &mut [f32],
) {
    let DecodeDims { batch, q_len, q_heads, kv_heads, head_dim: d, capacity: s } = *dims;
    assert!(
        kv_heads > 0 && q_heads % kv_heads == 0,
        "decode_attention: {q_heads} query heads over {kv_heads} KV heads"
    );
    assert!(offset + q_len <= s, "decode_attention: slots {offset}..{} exceed capacity {s}", offset + q_len);
    assert_eq!(q.len(), batch * q_len * q_heads * d, "decode_attention: q has {} values", q.len());
    assert_eq!(out.len(), q.len(), "decode_attention: out has {} values", out.len());
    assert_eq!(k_cache.len(), batch * kv_heads * s * d, "decode_attention: k cache has {} values", k_cache.len());
    assert_eq!(v_cache.len(), k_cache.len(), "decode_attention: v cache has {} values", v_cache.len());
    assert_eq!(key_valid.len(), batch * s, "decode_attention: key_valid has {} entries", key_valid.len());
    let group = q_heads / kv_heads;
    let mut out_bhqd = vec![0.0f32; out.len()];
    out_bhqd.par_chunks_mut(q_len * d).enumerate().for_each(|(bh, o)| {
        let (b, h) = (bh / q_heads, bh % q_heads);
        let kv = (b * kv_heads + h / group) * s * d;
        let keys = &k_cache[kv..kv + s * d];
        let vals = &v_cache[kv..kv + s * d];
        let valid = &key_valid[b * s..(b + 1) * s];
        let mut scores = vec![0.0f32; offset + q_len];
        for i in 0..q_len {
            let slot = offset + i;
            let qi = &q[((b * q_len + i) * q_heads + h) * d..][..d];
            let mut m = f32::NEG_INFINITY;
            let mut any = false;
            for j in 0..=slot {
                if valid[j] {
                    any = true;
                    let kj = &keys[j * d..(j + 1) * d];
                    let dot: f32 = qi.iter().zip(kj).map(|(a, b)| a * b).sum();
                    scores[j] = dot * scale;
                    m = m.max(scores[j]);
                }
            }
            let oi = &mut o[i * d..(i + 1) * d];
            if !any {
                continue; // no valid key: zeros
            }
            if !m.is_finite() {
                // Keys, but every score NaN (`max` skips NaN) or one infinite: NaN, not zeros.
                // (A NaN among finite scores reaches the output through the sum below.)
                oi.fill(f32::NAN);
                continue;
            }
            let mut sum = 0.0f32;
            for j in 0..=slot {
                if valid[j] {
                    let p = (scores[j] - m).exp();
                    sum += p;
                    for (acc, &v) in oi.iter_mut().zip(&vals[j * d..(j + 1) * d]) {
                        *acc += p * v;
                    }
                }
            }
            let inv = 1.0 / sum;
            oi.iter_mut().for_each(|x| *x *= inv);
        }
    });
    // [B, Hq, Q, D] -> [B, Q, Hq, D]
    out.par_chunks_mut(q_heads * d).enumerate().for_each(|(bi, row)| {
        let (b, i) = (bi / q_len, bi % q_len);
        for h in 0..q_heads {
            let from = ((b * q_heads + h) * q_len + i) * d;
            row[h * d..(h + 1) * d].copy_from_slice(&out_bhqd[from..from + d]);
        }
    });
}

/// Rows up to which [`linear_few_rows`] beats the general GEMM (which packs the whole weight
/// matrix on every call: with 2..16 rows that packing costs more than the product).
pub const FEW_ROWS: usize = 16;

/// `out[m, n] = x[m, k] · w[n, k]ᵀ` for a handful of rows `m` (a decode step's tokens):
/// each weight row is read once, from memory, for all `m` rows. Parallel over weight rows.
/// Sums run in 16 independent lanes (a fixed order, so results are deterministic).
pub fn linear_few_rows(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    assert_eq!(x.len(), m * k, "linear_few_rows: x has {} values, [{m}, {k}] needs {}", x.len(), m * k);
    assert_eq!(w.len(), n * k, "linear_few_rows: w has {} values, [{n}, {k}] needs {}", w.len(), n * k);
    assert_eq!(out.len(), m * n, "linear_few_rows: out has {} values, [{m}, {n}] needs {}", out.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    // Computed as [n, m] so each task writes one contiguous block, then transposed.
    let mut t = vec![0.0f32; n * m];
    let rows_per_task = (32_768 / k.max(1)).max(1);
    #[cfg(target_arch = "x86_64")]
    let avx = std::arch::is_x86_feature_detected!("avx2");
    t.par_chunks_mut(rows_per_task * m).enumerate().for_each(|(c, block)| {
        let w = &w[c * rows_per_task * k..][..block.len() / m * k];
        #[cfg(target_arch = "x86_64")]
        if avx {
            // SAFETY: the CPU has AVX2 (checked above).
            unsafe { rows_avx2(x, k, w, block, m) };
            return;
        }
        rows(x, k, w, block, m);
    });
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = t[j * m + i];
        }
    }
}

/// `block[r * m + i] = x_i · w_r` for the weight rows in `w`.
#[inline(always)]
fn rows(x: &[f32], k: usize, w: &[f32], block: &mut [f32], m: usize) {
    for (o, wr) in block.chunks_mut(m).zip(w.chunks_exact(k)) {
        for (i, oi) in o.iter_mut().enumerate() {
            *oi = dot(&x[i * k..(i + 1) * k], wr);
        }
    }
}

/// [`rows`] compiled for AVX2 (the 16 lanes become two 8-wide registers; same order of sums).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rows_avx2(x: &[f32], k: usize, w: &[f32], block: &mut [f32], m: usize) {
    rows(x, k, w, block, m)
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let (ac, bc) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..L {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}
