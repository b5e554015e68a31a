//! The low-rank adapter path: LoRA `y = x W^T + s (drop(x) A^T + g ⊙ p) B^T`, the echo
//! path's gated injection into the bottleneck, and DoRA's per-output-feature norm.
//!
//! Shapes: `x` `[N, in]`, `W` `[out, in]` (frozen), `A` `[r, in]`, `B` `[out, r]`,
//! bottleneck `z` `[N, r]`; the N rows are grouped by sample, `rows_per_sample` each.

use super::gemm::{matmul, Par};

#[derive(Clone, Copy, Debug)]
pub struct LoraDims {
    pub rows: usize,
    pub d_in: usize,
    pub d_out: usize,
    pub rank: usize,
}

/// Per-sample gate and projection injected into the bottleneck (`[samples, r]` each).
#[derive(Clone, Copy, Debug)]
pub struct Inject<'a> {
    pub gate: &'a [f32],
    pub proj: &'a [f32],
    pub rows_per_sample: usize,
}

/// `z[row] += gate[b] ⊙ proj[b]` for every row of sample `b`.
pub fn gated_inject_forward(z: &mut [f32], inj: Inject<'_>, rank: usize) {
    for (row, zr) in z.chunks_mut(rank).enumerate() {
        let b = row / inj.rows_per_sample;
        let (g, p) = (&inj.gate[b * rank..(b + 1) * rank], &inj.proj[b * rank..(b + 1) * rank]);
        for i in 0..rank {
            zr[i] += g[i] * p[i];
        }
    }
}

/// From `dz` (`[N, r]`): `dgate[b] = sum_t dz ⊙ proj[b]`, `dproj[b] = sum_t dz ⊙ gate[b]`.
pub fn gated_inject_backward(dz: &[f32], inj: Inject<'_>, rank: usize, dgate: &mut [f32], dproj: &mut [f32]) {
    let samples = inj.gate.len() / rank;
    for b in 0..samples {
        let mut sum = vec![0.0f32; rank];
        for zr in dz[b * inj.rows_per_sample * rank..(b + 1) * inj.rows_per_sample * rank].chunks(rank) {
            sum.iter_mut().zip(zr).for_each(|(s, z)| *s += z);
        }
        for i in 0..rank {
            dgate[b * rank + i] = sum[i] * inj.proj[b * rank + i];
            dproj[b * rank + i] = sum[i] * inj.gate[b * rank + i];
        }
    }
}

/// Forward. `xd` is the dropped-out input (`None`: no dropout, use `x`). Writes `y`
/// (`[N, out]`) and the bottleneck `z` (`[N, r]`, injection included), which backward needs.
#[allow(clippy::too_many_arguments)]
pub fn lora_forward(
    d: &LoraDims,
    x: &[f32],
    xd: Option<&[f32]>,
    w: &[f32],
    a: &[f32],
    b: &[f32],
    scale: f32,
    inject: Option<Inject<'_>>,
    y: &mut [f32],
    z: &mut [f32],
) {
    matmul(y, x, w, d.rows, d.d_in, d.d_out, false, true, 1.0, false, Par::Rayon);
    matmul(z, xd.unwrap_or(x), a, d.rows, d.d_in, d.rank, false, true, 1.0, false, Par::Rayon);
    if let Some(inj) = inject {
        gated_inject_forward(z, inj, d.rank);
    }
    matmul(y, z, b, d.rows, d.rank, d.d_out, false, true, scale, true, Par::Rayon);
}

/// Gradient buffers a LoRA backward may fill; `None` skips that GEMM entirely (frozen base
/// weight: `dx` is still wanted but no `dW` exists at all).
pub struct LoraGrads<'a> {
    pub dx: Option<&'a mut [f32]>,
    pub da: Option<&'a mut [f32]>,
    pub db: Option<&'a mut [f32]>,
    /// Always written: the bottleneck gradient, which the injection backward consumes.
    pub dz: &'a mut [f32],
}

/// Backward. `keep` is the dropout multiplier per input element (0 or 1/(1-p)), `None`
/// without dropout; `xd` is then `None` as in forward.
#[allow(clippy::too_many_arguments)]
pub fn lora_backward(
    d: &LoraDims,
    dy: &[f32],
    x: &[f32],
    xd: Option<&[f32]>,
    keep: Option<&[f32]>,
    w: &[f32],
    a: &[f32],
    b: &[f32],
    z: &[f32],
    scale: f32,
    g: LoraGrads<'_>,
) {
    if let Some(db) = g.db {
        matmul(db, dy, z, d.d_out, d.rows, d.rank, true, false, scale, false, Par::Rayon);
    }
    matmul(g.dz, dy, b, d.rows, d.d_out, d.rank, false, false, scale, false, Par::Rayon);
    if let Some(da) = g.da {
        matmul(da, g.dz, xd.unwrap_or(x), d.rank, d.rows, d.d_in, true, false, 1.0, false, Par::Rayon);
    }
    if let Some(dx) = g.dx {
        matmul(dx, dy, w, d.rows, d.d_out, d.d_in, false, false, 1.0, false, Par::Rayon);
        match keep {
            None => matmul(dx, g.dz, a, d.rows, d.rank, d.d_in, false, false, 1.0, true, Par::Rayon),
            Some(keep) => {
                let mut t = vec![0.0f32; dx.len()];
                matmul(&mut t, g.dz, a, d.rows, d.rank, d.d_in, false, false, 1.0, false, Par::Rayon);
                dx.iter_mut().zip(&t).zip(keep).for_each(|((dx, t), k)| *dx += t * k);
            }
        }
    }
}

/// DoRA's weight norm per output feature, `n[o] = || W[o,:] + s (B A)[o,:] ||_2`, without
/// forming `B A`: `n^2 = |W_o|^2 + 2s B_o·(W A^T)_o + s^2 B_o (A A^T) B_o^T`.
pub fn dora_weight_norm(d: &LoraDims, w: &[f32], a: &[f32], b: &[f32], scale: f32, norm: &mut [f32]) {
    let r = d.rank;
    let mut wat = vec![0.0f32; d.d_out * r];
    matmul(&mut wat, w, a, d.d_out, d.d_in, r, false, true, 1.0, false, Par::Rayon);
    let mut gram = vec![0.0f32; r * r];
    matmul(&mut gram, a, a, r, d.d_in, r, false, true, 1.0, false, Par::Serial);
    let s = scale as f64;
    for o in 0..d.d_out {
        let wo = &w[o * d.d_in..(o + 1) * d.d_in];
        let bo = &b[o * r..(o + 1) * r];
        let ww: f64 = wo.iter().map(|&v| v as f64 * v as f64).sum();
        let cross: f64 = bo.iter().zip(&wat[o * r..(o + 1) * r]).map(|(&x, &y)| x as f64 * y as f64).sum();
        let mut quad = 0.0f64;
        for j in 0..r {
            for k in 0..r {
                quad += bo[j] as f64 * gram[j * r + k] as f64 * bo[k] as f64;
            }
        }
        norm[o] = (ww + 2.0 * s * cross + s * s * quad).max(0.0).sqrt() as f32;
    }
}

/// DoRA's column scaling `y[n, o] = pre[n, o] * (m[o] / norm[o])` (`pre` is the LoRA output
/// before scaling; rows of `m.len()`).
pub fn dora_scale_forward(pre: &[f32], magnitude: &[f32], norm: &[f32], y: &mut [f32]) {
    let c: Vec<f32> = magnitude.iter().zip(norm).map(|(m, n)| m / n).collect();
    for (yr, pr) in y.chunks_mut(c.len()).zip(pre.chunks(c.len())) {
        yr.iter_mut().zip(pr).zip(&c).for_each(|((y, p), c)| *y = p * c);
    }
}

/// Its backward with the norm detached (as PEFT): `dpre = dy * (m / norm)` per column and,
/// when asked, `dm[o] = sum_n dy[n, o] * pre[n, o] / norm[o]` (accumulated in f64).
pub fn dora_scale_backward(
    dy: &[f32],
    pre: &[f32],
    magnitude: &[f32],
    norm: &[f32],
    dpre: &mut [f32],
    dm: Option<&mut [f32]>,
) {
    let out = norm.len();
    if let Some(dm) = dm {
        let mut acc = vec![0.0f64; out];
        for (g, pr) in dy.chunks(out).zip(pre.chunks(out)) {
            for o in 0..out {
                acc[o] += (g[o] * pr[o]) as f64;
            }
        }
        dm.iter_mut().zip(&acc).zip(norm).for_each(|((d, a), n)| *d = (*a as f32) / n);
    }
    for (dr, g) in dpre.chunks_mut(out).zip(dy.chunks(out)) {
        for o in 0..out {
            dr[o] = g[o] * (magnitude[o] / norm[o]);
        }
    }
}
