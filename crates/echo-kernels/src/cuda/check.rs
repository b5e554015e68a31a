//! Every CUDA kernel against its CPU twin, on random and edge-case shapes. Library code so the
//! prebuilt `xtask gpu-check` binary runs it on a GPU machine without a Rust toolchain, and
//! `tests/cuda.rs` runs the same.
//!
//! How each check is judged is [`super::checker`]'s: every output the kernels should write is
//! pre-filled with NaN ([`UNWRITTEN`]), the GPU side runs twice and must give bit-identical
//! results, and each element is compared with the twin as `|gpu - cpu| / (scale + |cpu|)`
//! (`scale` = the output's own largest `|cpu|`; NaNs and infinities must match exactly) against
//! a tolerance chosen per kernel: 0 where the GPU does the same operations in the same order
//! (casts, gathers, the scatter-add), about 1e-5 where only the summation order differs, more
//! where a long reduction runs in fp32 on one side and f64 on the other. The first driver error
//! stops the checks ([`stopped_at`] names it). `ECHO_CHECK_MAX_ELEMS=N` leaves out the checks
//! with a buffer over N elements (for a quick run under compute-sanitizer).

use super::alloc::GpuBuf;
use super::checker::Checker;
pub use super::checker::{compare, stopped_at, CheckResult, UNWRITTEN};
use super::ops::{self, InjectGpu, LoraGradsGpu};
use super::runtime::Gpu;
use super::tensor_ops::{self, BinaryOp, ReduceOp, UnaryOp};
use super::{blas, Result};
use crate::cpu;
use crate::cpu::attention::{AttnDims, AttnMask};
use crate::cpu::lowrank::{Inject, LoraDims, LoraGrads};

type C<'g> = Checker<'g, Gpu>;

/// The checks' inputs: the workspace's one generator ([`echo_rng::Rng`]) with the two helpers
/// the checks want (symmetric uniforms, vectors of them).
pub struct TestRng(echo_rng::Rng);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        TestRng(echo_rng::Rng::derive(seed, "kernel checks"))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0.uniform() * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        self.0.below(n)
    }
}

/// Values rounded to bf16 (so a bf16 GPU operand and the f32 CPU operand hold the same numbers).
pub fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| cpu::cast::bf16_to_f32(cpu::cast::f32_to_bf16(x))).collect()
}

pub fn to_bf16(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| cpu::cast::f32_to_bf16(x)).collect()
}

/// A new output buffer of `n` elements, every one [`UNWRITTEN`].
fn out(g: &Gpu, n: usize) -> Result<GpuBuf<f32>> {
    g.upload(&vec![UNWRITTEN; n])
}

/// The bf16 pre-fill of the cast check's output: a negative NaN with a full payload, which no
/// input of the check rounds to.
const BF16_UNWRITTEN: u16 = 0xFFFF;

/// The tolerance of the bf16 GEMMs (cuBLAS, fp32 accumulation) for a reduction of length `k`.
/// Both sides multiply the same bf16 numbers (each product exact in fp32) and add `k` of them
/// in fp32 in different orders (cuBLAS's tensor-core tiles, our CPU GEMM's panels). Rounding
/// errors of such a sum grow like a random walk, about `u √k` of the output's scale on each
/// side (`u` = 2^-24: 3.8e-6 at k = 4096), so one tolerance for every `k` is loose at small `k`
/// and tight at large `k`: 1e-5 had only about 2x margin over the expected tensor-core error
/// at k = 4096. `4e-7 √k` (about `7 u √k`) is 2.6e-5 at k = 4096, 9.6e-6 at k = 576 and 4e-7 at
/// k = 1 (one exact product). A real bug is far outside it: one of 4096 products dropped or
/// doubled moves an output by about `1/√k` of a typical output (3e-3 of the largest), a wrong
/// stride or transpose by O(1).
pub fn bf16_gemm_tol(k: usize) -> f64 {
    4e-7 * (k.max(1) as f64).sqrt()
}

/// Runs every check on `gpu`; one result per compared output, and a last line counting the
/// checks not run when a driver error stopped them ([`stopped_at`]).
pub fn run_all(gpu: &Gpu) -> Vec<CheckResult> {
    let mut c = Checker::new(gpu);
    cast(&mut c);
    blas_linear(&mut c);
    for &(rows, rps, d_in, d_out, rank, inject, dropout) in &[
        (64, 32, 96, 80, 8, true, false),
        (37, 37, 33, 17, 1, false, true),
        (48, 16, 200, 130, 128, true, true),
        (512, 128, 576, 576, 16, true, true),
    ] {
        lora(&mut c, rows, rps, d_in, d_out, rank, inject, dropout);
    }
    for &(samples, rps, rank) in &[(2, 3, 5), (4, 513, 16), (1, 1, 128)] {
        injection(&mut c, samples, rps, rank);
    }
    for &(rows, cols) in &[(3, 5), (300, 257)] {
        dora_scale(&mut c, rows, cols);
    }
    for &(rows, dim, weighted) in &[(1, 1, true), (5, 7, false), (64, 576, true), (3, 4099, true)] {
        rmsnorm(&mut c, rows, dim, weighted);
    }
    for &(tokens, heads, hd) in &[(5, 3, 2), (64, 9, 64), (17, 4, 128)] {
        rope(&mut c, tokens, heads, hd);
    }
    for &n in &[1usize, 1000, 70_001] {
        swiglu(&mut c, n);
    }
    for &(b, t, hq, hkv, d, padding) in &[
        (1, 1, 1, 1, 1, Padding::None),
        (2, 37, 4, 2, 16, Padding::Right),
        (1, 128, 9, 3, 64, Padding::None),
        (2, 70, 2, 1, 128, Padding::Left),
        (1, 33, 3, 3, 40, Padding::Right),
        (2, 150, 4, 2, 64, Padding::Packed),
        (1, 97, 3, 1, 32, Padding::Packed),
    ] {
        attention(&mut c, AttnDims { batch: b, seq: t, q_heads: hq, kv_heads: hkv, head_dim: d }, padding, false);
    }
    // A NaN in one query: its output, lse and dq rows are NaN on both sides, never zeros.
    attention(&mut c, AttnDims { batch: 2, seq: 37, q_heads: 4, kv_heads: 2, head_dim: 16 }, Padding::Left, true);
    for &(rows, vocab) in &[(1, 1), (7, 1000), (5, 49_159)] {
        cross_entropy(&mut c, rows, vocab);
        kl(&mut c, rows, vocab);
    }
    for &(b, t, d) in &[(1, 1, 1), (3, 17, 33), (4, 64, 576)] {
        pool(&mut c, b, t, d);
    }
    for &(n, rows, dim) in &[(1, 1, 1), (100, 37, 65), (513, 5, 576)] {
        embed(&mut c, n, rows, dim);
    }
    for &n in &[1usize, 1000, 100_003] {
        adamw(&mut c, n);
    }
    tensor_ops_checks(&mut c);
    c.finish()
}

fn cast(c: &mut C) {
    let mut rng = TestRng::new(1);
    let mut v = rng.vec(10_000, 100.0);
    v.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-40,
        f32::from_bits(0x3F80_8000),
        f32::from_bits(0x3F81_8000),
    ]);
    let n = v.len();
    if c.too_large(n) {
        return;
    }
    let cpu = || {
        let want: Vec<f32> = to_bf16(&v).iter().map(|&h| h as f32).collect();
        vec![("bits", want), ("roundtrip", round_bf16(&v))]
    };
    c.run("f32_to_bf16", format!("n={n}"), 0.0, cpu, |g| {
        let src = g.upload(&v)?;
        let mut dst = g.upload(&vec![BF16_UNWRITTEN; n])?;
        ops::f32_to_bf16(g, &src, &mut dst)?;
        let mut back = out(g, n)?;
        ops::bf16_to_f32(g, &dst, &mut back)?;
        let bits: Vec<f32> =
            g.download(&dst)?.iter().map(|&h| if h == BF16_UNWRITTEN { UNWRITTEN } else { h as f32 }).collect();
        Ok(vec![bits, g.download(&back)?])
    });
}

fn blas_linear(c: &mut C) {
    for &(m, k, n) in &[(1, 1, 1), (37, 576, 1536), (256, 4096, 512)] {
        if c.too_large((m * k).max(n * k).max(m * n)) {
            continue;
        }
        let mut rng = TestRng::new(2);
        let (x, w, dy) =
            (round_bf16(&rng.vec(m * k, 1.0)), round_bf16(&rng.vec(n * k, 0.05)), round_bf16(&rng.vec(m * n, 1.0)));
        // y = x W^T adds k products per output, dx = dy W adds n: each its own tolerance.
        c.run(
            "cublas_linear_bf16",
            format!("m={m} k={k} n={n}"),
            bf16_gemm_tol(k),
            || {
                let mut yc = vec![0.0; m * n];
                cpu::gemm::matmul(&mut yc, &x, &w, m, k, n, false, true, 1.0, false, cpu::gemm::Par::Rayon);
                vec![("y", yc)]
            },
            |g| {
                let (xg, wg) = (g.upload(&to_bf16(&x))?, g.upload(&to_bf16(&w))?);
                let mut y = out(g, m * n)?;
                blas::linear_bf16(g, &xg, &wg, &mut y, m, k, n, false)?;
                Ok(vec![g.download(&y)?])
            },
        );
        c.run(
            "cublas_linear_bf16",
            format!("m={m} k={k} n={n}"),
            bf16_gemm_tol(n),
            || {
                let mut dxc = vec![0.0; m * k];
                cpu::gemm::matmul(&mut dxc, &dy, &w, m, n, k, false, false, 1.0, false, cpu::gemm::Par::Rayon);
                vec![("dx", dxc)]
            },
            |g| {
                let (wg, dyg) = (g.upload(&to_bf16(&w))?, g.upload(&to_bf16(&dy))?);
                let mut dx = out(g, m * k)?;
                blas::linear_bf16_dx(g, &dyg, &wg, &mut dx, m, k, n, false)?;
                Ok(vec![g.download(&dx)?])
            },
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn lora(c: &mut C, rows: usize, rps: usize, d_in: usize, d_out: usize, rank: usize, inject: bool, dropout: bool) {
    if c.too_large((rows * d_in).max(d_out * d_in).max(rows * d_out)) {
        return;
    }
    let d = LoraDims { rows, d_in, d_out, rank };
    let samples = rows / rps;
    let mut rng = TestRng::new((rows * 31 + d_in) as u64);
    let x = round_bf16(&rng.vec(rows * d_in, 1.0));
    let w = round_bf16(&rng.vec(d_out * d_in, 0.1));
    let a = rng.vec(rank * d_in, 0.1);
    let b = rng.vec(d_out * rank, 0.1);
    let (gate, proj) = (rng.vec(samples * rank, 1.0), rng.vec(samples * rank, 1.0));
    let keep: Vec<f32> = (0..rows * d_in).map(|_| if rng.uniform() > -0.8 { 1.0 / 0.9 } else { 0.0 }).collect();
    let xd: Vec<f32> = x.iter().zip(&keep).map(|(x, k)| x * k).collect();
    let dy = round_bf16(&rng.vec(rows * d_out, 1.0));
    // The bottleneck as forward saved it (any values do for the backward check).
    let z = rng.vec(rows * rank, 1.0);
    let scale = 2.0;
    let shape = format!(
        "N={rows} in={d_in} out={d_out} r={rank}{}{}",
        if inject { " inj" } else { "" },
        if dropout { " drop" } else { "" }
    );
    let forward_cpu = || {
        let (mut yc, mut zc) = (vec![0.0; rows * d_out], vec![0.0; rows * rank]);
        let injc = inject.then_some(Inject { gate: &gate, proj: &proj, rows_per_sample: rps });
        cpu::lowrank::lora_forward(&d, &x, dropout.then_some(&xd[..]), &w, &a, &b, scale, injc, &mut yc, &mut zc);
        vec![("y", yc), ("z", zc)]
    };
    c.run("lora_forward", shape.clone(), 1e-5, forward_cpu, |g| {
        let (xg, x16, wg, ag, bg) =
            (g.upload(&x)?, g.upload(&to_bf16(&x))?, g.upload(&to_bf16(&w))?, g.upload(&a)?, g.upload(&b)?);
        let (gg, pg, xdg) = (g.upload(&gate)?, g.upload(&proj)?, g.upload(&xd)?);
        let inj = inject.then_some(InjectGpu { gate: &gg, proj: &pg, rows_per_sample: rps });
        let (mut y, mut z) = (out(g, rows * d_out)?, out(g, rows * rank)?);
        ops::lora_forward(g, &d, &xg, &x16, dropout.then_some(&xdg), &wg, &ag, &bg, scale, inj, &mut y, &mut z)?;
        Ok(vec![g.download(&y)?, g.download(&z)?])
    });
    let backward_cpu = || {
        let (mut dxc, mut dac, mut dbc, mut dzc) =
            (vec![0.0; rows * d_in], vec![0.0; rank * d_in], vec![0.0; d_out * rank], vec![0.0; rows * rank]);
        let gc = LoraGrads { dx: Some(&mut dxc), da: Some(&mut dac), db: Some(&mut dbc), dz: &mut dzc };
        let (xd, keep) = (dropout.then_some(&xd[..]), dropout.then_some(&keep[..]));
        cpu::lowrank::lora_backward(&d, &dy, &x, xd, keep, &w, &a, &b, &z, scale, gc);
        vec![("dx", dxc), ("dA", dac), ("dB", dbc), ("dz", dzc)]
    };
    c.run("lora_backward", shape, 1e-5, backward_cpu, |g| {
        let (xg, wg, ag, bg, dyg) =
            (g.upload(&x)?, g.upload(&to_bf16(&w))?, g.upload(&a)?, g.upload(&b)?, g.upload(&dy)?);
        let (xdg, keepg, zg) = (g.upload(&xd)?, g.upload(&keep)?, g.upload(&z)?);
        let (mut dx, mut da, mut db, mut dz) =
            (out(g, rows * d_in)?, out(g, rank * d_in)?, out(g, d_out * rank)?, out(g, rows * rank)?);
        let grads = LoraGradsGpu { dx: Some(&mut dx), da: Some(&mut da), db: Some(&mut db), dz: &mut dz };
        let (xd, keep) = (dropout.then_some(&xdg), dropout.then_some(&keepg));
        ops::lora_backward(g, &d, &dyg, &xg, xd, keep, &wg, &ag, &bg, &zg, scale, grads)?;
        Ok(vec![g.download(&dx)?, g.download(&da)?, g.download(&db)?, g.download(&dz)?])
    });
}

fn injection(c: &mut C, samples: usize, rps: usize, rank: usize) {
    let rows = samples * rps;
    if c.too_large(rows * rank) {
        return;
    }
    let mut rng = TestRng::new(7 + rows as u64);
    let (z, dz, gate, proj) = (
        rng.vec(rows * rank, 1.0),
        rng.vec(rows * rank, 1.0),
        rng.vec(samples * rank, 1.0),
        rng.vec(samples * rank, 1.0),
    );
    let cpu = || {
        let injc = Inject { gate: &gate, proj: &proj, rows_per_sample: rps };
        let mut zc = z.clone();
        cpu::lowrank::gated_inject_forward(&mut zc, injc, rank);
        let (mut dgc, mut dpc) = (vec![0.0; samples * rank], vec![0.0; samples * rank]);
        cpu::lowrank::gated_inject_backward(&dz, injc, rank, &mut dgc, &mut dpc);
        vec![("z", zc), ("dgate", dgc), ("dproj", dpc)]
    };
    c.run("gated_injection", format!("samples={samples} tokens={rps} r={rank}"), 1e-5, cpu, |g| {
        let (gg, pg, dzg) = (g.upload(&gate)?, g.upload(&proj)?, g.upload(&dz)?);
        let inj = InjectGpu { gate: &gg, proj: &pg, rows_per_sample: rps };
        let mut zg = g.upload(&z)?; // updated in place
        ops::gated_inject_forward(g, &mut zg, inj, rows, rank)?;
        let (mut dgg, mut dpg) = (out(g, samples * rank)?, out(g, samples * rank)?);
        ops::gated_inject_backward(g, &dzg, inj, rows, rank, &mut dgg, &mut dpg)?;
        Ok(vec![g.download(&zg)?, g.download(&dgg)?, g.download(&dpg)?])
    });
}

fn dora_scale(c: &mut C, rows: usize, cols: usize) {
    if c.too_large(rows * cols) {
        return;
    }
    let mut rng = TestRng::new(11 + cols as u64);
    let (pre, dy, m) = (rng.vec(rows * cols, 1.0), rng.vec(rows * cols, 1.0), rng.vec(cols, 1.0));
    let norm: Vec<f32> = rng.vec(cols, 1.0).iter().map(|v| 0.5 + v.abs()).collect();
    let cpu = || {
        let (mut yc, mut dprec, mut dmc) = (vec![0.0; rows * cols], vec![0.0; rows * cols], vec![0.0; cols]);
        cpu::lowrank::dora_scale_forward(&pre, &m, &norm, &mut yc);
        cpu::lowrank::dora_scale_backward(&dy, &pre, &m, &norm, &mut dprec, Some(&mut dmc));
        vec![("y", yc), ("dpre", dprec), ("dm", dmc)]
    };
    c.run("dora_scale", format!("rows={rows} cols={cols}"), 1e-6, cpu, |g| {
        let (preg, dyg, mg, ng) = (g.upload(&pre)?, g.upload(&dy)?, g.upload(&m)?, g.upload(&norm)?);
        let (mut y, mut dpre, mut dm) = (out(g, rows * cols)?, out(g, rows * cols)?, out(g, cols)?);
        ops::dora_scale_forward(g, &preg, &mg, &ng, &mut y, rows, cols)?;
        ops::dora_scale_backward(g, &dyg, &preg, &mg, &ng, &mut dpre, Some(&mut dm), rows, cols)?;
        Ok(vec![g.download(&y)?, g.download(&dpre)?, g.download(&dm)?])
    });
}

fn rmsnorm(c: &mut C, rows: usize, dim: usize, weighted: bool) {
    if c.too_large(rows * dim) {
        return;
    }
    let mut rng = TestRng::new(13 + dim as u64);
    let (x, dy, w) = (rng.vec(rows * dim, 2.0), rng.vec(rows * dim, 1.0), rng.vec(dim, 1.0));
    let dw0 = rng.vec(dim, 1.0);
    // With one element per row, dx = rstd * g * w * eps / (x^2 + eps): for eps << x^2 that is
    // what is left of two nearly equal terms, so f32 rounding of their difference, not the
    // kernel, would decide the comparison (the first GPU run: 3.9e-4 relative at eps 1e-5).
    // An eps of the size of x^2 keeps the one-element edge case and makes dx well conditioned.
    let eps = if dim == 1 { 1.0 } else { 1e-5 };
    let cpu = || {
        let wc = weighted.then_some(&w[..]);
        let (mut yc, mut rstdc, mut dxc, mut dwc) =
            (vec![0.0; rows * dim], vec![0.0; rows], vec![0.0; rows * dim], dw0.clone());
        cpu::norm::rmsnorm_forward(&x, wc, &mut yc, &mut rstdc, dim, eps);
        cpu::norm::rmsnorm_backward(&dy, &x, wc, &rstdc, &mut dxc, weighted.then_some(&mut dwc[..]), dim);
        vec![("y", yc), ("rstd", rstdc), ("dx", dxc), ("dw", dwc)]
    };
    let shape = format!("rows={rows} dim={dim}{}", if weighted { "" } else { " no-weight" });
    c.run("rmsnorm", shape, 2e-5, cpu, |g| {
        let (xg, dyg, wg) = (g.upload(&x)?, g.upload(&dy)?, g.upload(&w)?);
        let wopt = weighted.then_some(&wg);
        let (mut y, mut rstd, mut dx) = (out(g, rows * dim)?, out(g, rows)?, out(g, rows * dim)?);
        let mut dw = g.upload(&dw0)?; // accumulated into
        ops::rmsnorm_forward(g, &xg, wopt, &mut y, &mut rstd, rows, dim, eps)?;
        ops::rmsnorm_backward(g, &dyg, &xg, wopt, &rstd, &mut dx, weighted.then_some(&mut dw), rows, dim)?;
        Ok(vec![g.download(&y)?, g.download(&rstd)?, g.download(&dx)?, g.download(&dw)?])
    });
}

fn rope(c: &mut C, tokens: usize, heads: usize, hd: usize) {
    if c.too_large(tokens * heads * hd) {
        return;
    }
    let mut rng = TestRng::new(17 + hd as u64);
    let max_pos = 4096;
    let table = cpu::rope::RopeTable::new(hd, max_pos, 10_000.0, None);
    let x = rng.vec(tokens * heads * hd, 1.0);
    let pos: Vec<usize> = (0..tokens).map(|_| rng.below(max_pos)).collect();
    let cpu = || {
        let (mut fc, mut ic) = (x.clone(), x.clone());
        cpu::rope::rope_apply(&mut fc, &pos, heads, &table, false);
        cpu::rope::rope_apply(&mut ic, &pos, heads, &table, true);
        vec![("forward", fc), ("inverse", ic)]
    };
    c.run("rope", format!("tokens={tokens} heads={heads} d={hd}"), 1e-6, cpu, |g| {
        let tg = ops::RopeTableGpu::upload(g, &table)?;
        let posg = g.upload(&pos.iter().map(|&p| p as i32).collect::<Vec<_>>())?;
        // In place: every element is rewritten (a rotation of the input), so a missed one keeps
        // its input value, which differs from the expected rotation.
        let mut fwd = g.upload(&x)?;
        ops::rope_apply(g, &mut fwd, &posg, tokens, heads, &tg, false)?;
        let mut inv = g.upload(&x)?;
        ops::rope_apply(g, &mut inv, &posg, tokens, heads, &tg, true)?;
        Ok(vec![g.download(&fwd)?, g.download(&inv)?])
    });
}

fn swiglu(c: &mut C, n: usize) {
    if c.too_large(n) {
        return;
    }
    let mut rng = TestRng::new(19 + n as u64);
    let (gate, up, dout) = (rng.vec(n, 8.0), rng.vec(n, 2.0), rng.vec(n, 1.0));
    let cpu = || {
        let (mut oc, mut dgc, mut duc) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        cpu::activation::swiglu_forward(&gate, &up, &mut oc);
        cpu::activation::swiglu_backward(&dout, &gate, &up, &mut dgc, &mut duc);
        vec![("out", oc), ("dgate", dgc), ("dup", duc)]
    };
    c.run("swiglu", format!("n={n}"), 1e-6, cpu, |g| {
        let (gg, ug, dg) = (g.upload(&gate)?, g.upload(&up)?, g.upload(&dout)?);
        let (mut o, mut dgate, mut dup) = (out(g, n)?, out(g, n)?, out(g, n)?);
        ops::swiglu_forward(g, &gg, &ug, &mut o, n)?;
        ops::swiglu_backward(g, &dg, &gg, &ug, &mut dgate, &mut dup, n)?;
        Ok(vec![g.download(&o)?, g.download(&dgate)?, g.download(&dup)?])
    });
}

#[derive(Clone, Copy, Debug)]
enum Padding {
    None,
    /// The last keys of sample 0 are padding (training's case).
    Right,
    /// The first keys of the last sample are padding: its first queries have no key at all.
    Left,
    /// Examples of uneven lengths packed one after the other in each row, then padding:
    /// attention stays inside each example (block-diagonal causal), over tile boundaries.
    Packed,
}

/// `nan_query`: one element of one query (batch 0, position t/2, head 1) is NaN. Its row's
/// output, lse and dq must be NaN as the twin's are (the kernels once turned an all-NaN row
/// into "no key": zeros). dK and dV are left out of that comparison: where a NaN query meets
/// a masked key's zero weight, the twin's dense GEMM and the kernel's tiles reach different
/// (equally meaningless) elements.
fn attention(c: &mut C, d: AttnDims, padding: Padding, nan_query: bool) {
    let (b, t, hq, hkv, hd) = (d.batch, d.seq, d.q_heads, d.kv_heads, d.head_dim);
    if c.too_large(b * t * hq * hd) {
        return;
    }
    let mut rng = TestRng::new((t * 131 + hd) as u64);
    let (mut q, k, v, dout) = (
        rng.vec(b * t * hq * hd, 1.0),
        rng.vec(b * t * hkv * hd, 1.0),
        rng.vec(b * t * hkv * hd, 1.0),
        rng.vec(b * t * hq * hd, 1.0),
    );
    if nan_query {
        q[((t / 2) * hq + 1) * hd + hd / 2] = f32::NAN;
    }
    let outputs = if nan_query { 3 } else { 5 };
    let mut valid = vec![true; b * t];
    let mask = match padding {
        Padding::None => AttnMask::padding(valid),
        Padding::Right => {
            valid[t - t / 3..t].iter_mut().for_each(|v| *v = false);
            AttnMask::padding(valid)
        }
        Padding::Left => {
            valid[(b - 1) * t..(b - 1) * t + t / 4].iter_mut().for_each(|v| *v = false);
            AttnMask::padding(valid)
        }
        Padding::Packed => {
            // Lengths 1, 2, 3, ... until the row is (nearly) full; the rest is padding.
            let rows: Vec<Vec<usize>> = (0..b)
                .map(|r| {
                    let (mut lens, mut used, mut n) = (vec![], 0, 1 + r * 5);
                    while used + n <= t {
                        lens.push(n);
                        used += n;
                        n += 7;
                    }
                    lens
                })
                .collect();
            AttnMask::packed(&rows, t)
        }
    };
    let valid = &mask.key_valid;
    let scale = 1.0 / (hd as f32).sqrt();
    let cpu = || {
        let (mut oc, mut lc) = (vec![0.0; q.len()], vec![0.0; b * hq * t]);
        cpu::attention::attention_forward(&d, &q, &k, &v, &mask, scale, &mut oc, &mut lc);
        let (mut dqc, mut dkc, mut dvc) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        cpu::attention::attention_backward(&d, &q, &k, &v, &mask, scale, &oc, &lc, &dout, &mut dqc, &mut dkc, &mut dvc);
        let mut all = vec![("out", oc), ("lse", lc), ("dq", dqc), ("dk", dkc), ("dv", dvc)];
        all.truncate(outputs);
        all
    };
    let nan = if nan_query { " NaN query" } else { "" };
    c.run("attention", format!("B={b} T={t} Hq={hq} Hkv={hkv} D={hd} {padding:?}{nan}"), 2e-5, cpu, |g| {
        let (qg, kg, vg, dog) = (g.upload(&q)?, g.upload(&k)?, g.upload(&v)?, g.upload(&dout)?);
        let validg = g.upload(&valid.iter().map(|&v| v as u8).collect::<Vec<_>>())?;
        let startg = g.upload(&mask.key_start.iter().map(|&s| s as i32).collect::<Vec<_>>())?;
        let (mut o, mut lse) = (out(g, q.len())?, out(g, b * hq * t)?);
        ops::attention_forward(g, &d, &qg, &kg, &vg, &validg, &startg, scale, &mut o, &mut lse)?;
        let (mut dq, mut dk, mut dv) = (out(g, q.len())?, out(g, k.len())?, out(g, v.len())?);
        ops::attention_backward(
            g, &d, &qg, &kg, &vg, &validg, &startg, scale, &o, &lse, &dog, &mut dq, &mut dk, &mut dv,
        )?;
        let mut all = vec![g.download(&o)?, g.download(&lse)?, g.download(&dq)?, g.download(&dk)?, g.download(&dv)?];
        all.truncate(outputs);
        Ok(all)
    });
}

fn cross_entropy(c: &mut C, rows: usize, vocab: usize) {
    if c.too_large(rows * vocab) {
        return;
    }
    let mut rng = TestRng::new(23 + vocab as u64);
    let logits = rng.vec(rows * vocab, 10.0);
    let targets: Vec<i64> =
        (0..rows).map(|r| if r % 3 == 1 { cpu::loss::IGNORE_INDEX } else { rng.below(vocab) as i64 }).collect();
    let row_scale = rng.vec(rows, 1.0);
    let cpu = || {
        let (mut lc, mut zc, mut dc) = (vec![0.0; rows], vec![0.0; rows], vec![0.0; rows * vocab]);
        cpu::loss::cross_entropy_forward(&logits, &targets, vocab, &mut lc, &mut zc);
        cpu::loss::cross_entropy_backward(&logits, &targets, &zc, &row_scale, vocab, &mut dc);
        vec![("loss", lc), ("lse", zc), ("dlogits", dc)]
    };
    c.run("cross_entropy", format!("rows={rows} vocab={vocab}"), 1e-5, cpu, |g| {
        let (lg, tg, sg) = (g.upload(&logits)?, g.upload(&targets)?, g.upload(&row_scale)?);
        let (mut loss, mut lse, mut dl) = (out(g, rows)?, out(g, rows)?, out(g, rows * vocab)?);
        ops::cross_entropy_forward(g, &lg, &tg, rows, vocab, &mut loss, &mut lse)?;
        ops::cross_entropy_backward(g, &lg, &tg, &lse, &sg, rows, vocab, &mut dl)?;
        Ok(vec![g.download(&loss)?, g.download(&lse)?, g.download(&dl)?])
    });
}

fn kl(c: &mut C, rows: usize, vocab: usize) {
    if c.too_large(rows * vocab) {
        return;
    }
    let mut rng = TestRng::new(29 + vocab as u64);
    let (teacher, student) = (rng.vec(rows * vocab, 5.0), rng.vec(rows * vocab, 5.0));
    let row_scale: Vec<f32> = (0..rows).map(|r| if r == 0 { 0.0 } else { rng.uniform() }).collect();
    let tau = 2.0;
    let cpu = || {
        let (mut kc, mut dc) = (vec![0.0; rows], vec![0.0; rows * vocab]);
        cpu::loss::kl_forward(&teacher, &student, vocab, tau, &mut kc);
        cpu::loss::kl_backward_student(&teacher, &student, &row_scale, vocab, tau, &mut dc);
        vec![("kl", kc), ("dstudent", dc)]
    };
    c.run("kl", format!("rows={rows} vocab={vocab}"), 2e-5, cpu, |g| {
        let (tg, sg, rg) = (g.upload(&teacher)?, g.upload(&student)?, g.upload(&row_scale)?);
        let (mut klg, mut dg) = (out(g, rows)?, out(g, rows * vocab)?);
        ops::kl_forward(g, &tg, &sg, rows, vocab, tau, &mut klg)?;
        ops::kl_backward_student(g, &tg, &sg, &rg, rows, vocab, tau, &mut dg)?;
        Ok(vec![g.download(&klg)?, g.download(&dg)?])
    });
}

fn pool(c: &mut C, b: usize, t: usize, d: usize) {
    if c.too_large(b * t * d) {
        return;
    }
    let mut rng = TestRng::new(31 + d as u64);
    let (x, dout) = (rng.vec(b * t * d, 1.0), rng.vec(b * d, 1.0));
    // Sample 0 (when there are several) has an all-zero mask: it pools to zero.
    let mask: Vec<f32> = (0..b * t)
        .map(|i| {
            if b > 1 && i < t {
                0.0
            } else if rng.uniform() > -0.5 {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let cpu = || {
        let (mut oc, mut dc) = (vec![0.0; b * d], vec![0.0; b * t * d]);
        cpu::pool::masked_mean_forward(&x, &mask, t, d, &mut oc);
        cpu::pool::masked_mean_backward(&dout, &mask, t, d, &mut dc);
        vec![("out", oc), ("dx", dc)]
    };
    c.run("masked_mean_pool", format!("B={b} T={t} D={d}"), 1e-6, cpu, |g| {
        let (xg, mg, dg) = (g.upload(&x)?, g.upload(&mask)?, g.upload(&dout)?);
        let (mut o, mut dx) = (out(g, b * d)?, out(g, b * t * d)?);
        ops::masked_mean_forward(g, &xg, &mg, b, t, d, &mut o)?;
        ops::masked_mean_backward(g, &dg, &mg, b, t, d, &mut dx)?;
        Ok(vec![g.download(&o)?, g.download(&dx)?])
    });
}

fn embed(c: &mut C, n: usize, rows: usize, dim: usize) {
    if c.too_large((n * dim).max(rows * dim)) {
        return;
    }
    let mut rng = TestRng::new(37 + dim as u64);
    let table = round_bf16(&rng.vec(rows * dim, 1.0));
    let src = rng.vec(n * dim, 1.0);
    let idx: Vec<usize> = (0..n).map(|_| rng.below(rows)).collect();
    let cpu = || {
        let mut oc = vec![0.0; n * dim];
        cpu::embed::gather_rows(&table, &idx, dim, &mut oc);
        let mut gc = vec![0.0; rows * dim];
        cpu::embed::scatter_add_rows(&src, &idx, dim, &mut gc);
        vec![("gather_f32", oc.clone()), ("gather_bf16", oc), ("scatter_add", gc)]
    };
    c.run("embedding", format!("n={n} rows={rows} dim={dim}"), 0.0, cpu, |g| {
        let (tg, t16, sg) = (g.upload(&table)?, g.upload(&to_bf16(&table))?, g.upload(&src)?);
        let ig = g.upload(&idx.iter().map(|&i| i as i32).collect::<Vec<_>>())?;
        let (mut o32, mut o16) = (out(g, n * dim)?, out(g, n * dim)?);
        ops::embed_gather_f32(g, &tg, &ig, n, dim, &mut o32)?;
        ops::embed_gather_bf16(g, &t16, &ig, n, dim, &mut o16)?;
        let mut grad = g.zeros::<f32>(rows * dim)?; // accumulated into, as the twin's
        ops::embed_scatter_add(g, &sg, &ig, n, dim, &mut grad)?;
        Ok(vec![g.download(&o32)?, g.download(&o16)?, g.download(&grad)?])
    });
}

fn adamw(c: &mut C, n: usize) {
    if c.too_large(n) {
        return;
    }
    let mut rng = TestRng::new(41 + n as u64);
    let w0 = rng.vec(n, 1.0);
    let grads: Vec<Vec<f32>> = (0..3).map(|_| rng.vec(n, 1.0)).collect();
    let step = |t: usize| {
        let (bc1, bc2) = cpu::optim::AdamWStep::bias_corrections(0.9, 0.999, t as u64 + 1);
        cpu::optim::AdamWStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            grad_scale: 0.5,
            bc1,
            bc2,
        }
    };
    let cpu = || {
        let (mut wc, mut mc, mut vc) = (w0.clone(), vec![0.0; n], vec![0.0; n]);
        for (t, grad) in grads.iter().enumerate() {
            cpu::optim::adamw_step(&mut wc, grad, &mut mc, &mut vc, &step(t));
        }
        vec![("w", wc), ("m", mc), ("v", vc)]
    };
    // Updated in place from w0 and zero moments, like the twin.
    c.run("adamw", format!("n={n} steps=3"), 1e-6, cpu, |g| {
        let (mut wg, mut mg, mut vg) = (g.upload(&w0)?, g.zeros::<f32>(n)?, g.zeros::<f32>(n)?);
        for (t, grad) in grads.iter().enumerate() {
            let gg = g.upload(grad)?;
            ops::adamw_step(g, &mut wg, &gg, &mut mg, &mut vg, &step(t))?;
        }
        Ok(vec![g.download(&wg)?, g.download(&mg)?, g.download(&vg)?])
    });
}

// ---------------------------------------------------------------- generic tensor ops (tensor.cu)
// Exact where the kernel does the twin's operations on the same values (arithmetic, max,
// layout, fill: tolerance 0); 1e-6 where CUDA's expf / logf may differ by an ulp or two, or
// a double sum adds in another order than the twin's.

/// Signed zeros, infinities, NaN, ±100 (exp overflows and underflows) and denormals.
const SPECIALS: [f32; 9] = [0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 100.0, -100.0, 1e-40, -1e-40];

/// `v` with special `i` at index `i * every` (while that is inside `v`).
fn with_specials(mut v: Vec<f32>, every: usize) -> Vec<f32> {
    for (i, &s) in SPECIALS.iter().enumerate() {
        if let Some(x) = v.get_mut(i * every) {
            *x = s;
        }
    }
    v
}

fn tensor_ops_checks(c: &mut C) {
    for &n in &[0usize, 1, 1000, 70_001] {
        tensor_unary(c, n);
        tensor_add_assign(c, n);
        tensor_fill(c, n);
    }
    tensor_binary(c);
    tensor_reductions(c);
    tensor_sum_to(c);
    tensor_softmax(c);
    tensor_copy_2d(c);
    tensor_permute(c);
    tensor_misuse(c);
}

fn tensor_unary(c: &mut C, n: usize) {
    if c.too_large(n) {
        return;
    }
    let mut rng = TestRng::new(43 + n as u64);
    let x = with_specials(rng.vec(n, 8.0), 7);
    let ops = [
        ("neg", UnaryOp::Neg, 0.0),
        ("exp", UnaryOp::Exp, 1e-6),
        ("ln", UnaryOp::Ln, 1e-6),
        ("sqr", UnaryOp::Sqr, 0.0),
        ("sigmoid", UnaryOp::Sigmoid, 1e-6),
        ("silu", UnaryOp::Silu, 1e-6),
        ("scale", UnaryOp::Scale(-1.5), 0.0),
        ("add_scalar", UnaryOp::AddScalar(0.25), 0.0),
    ];
    for (what, op, tol) in ops {
        let cpu = || {
            let mut yc = vec![0.0; n];
            cpu::tensor_ref::unary(op, &x, &mut yc);
            vec![("", yc)]
        };
        c.run(&format!("tensor_unary.{what}"), format!("n={n}"), tol, cpu, |g| {
            let xg = g.upload(&x)?;
            let mut y = out(g, n)?;
            tensor_ops::unary(g, op, &xg, &mut y)?;
            Ok(vec![g.download(&y)?])
        });
    }
}

fn tensor_add_assign(c: &mut C, n: usize) {
    if c.too_large(n) {
        return;
    }
    let mut rng = TestRng::new(53 + n as u64);
    let (y0, x) = (rng.vec(n, 1.0), with_specials(rng.vec(n, 1.0), 5));
    let cpu = || {
        let mut yc = y0.clone();
        cpu::tensor_ref::add_assign(&mut yc, &x);
        vec![("", yc)]
    };
    c.run("tensor_add_assign", format!("n={n}"), 0.0, cpu, |g| {
        let (mut y, xg) = (g.upload(&y0)?, g.upload(&x)?); // y is added into
        tensor_ops::add_assign(g, &mut y, &xg)?;
        Ok(vec![g.download(&y)?])
    });
}

fn tensor_fill(c: &mut C, n: usize) {
    if c.too_large(n) {
        return;
    }
    let value = if n == 1 { -0.0 } else { 3.5 };
    c.run(
        "tensor_fill",
        format!("n={n}"),
        0.0,
        || vec![("", vec![value; n])],
        |g| {
            let mut y = out(g, n)?;
            tensor_ops::fill(g, &mut y, value)?;
            Ok(vec![g.download(&y)?])
        },
    );
}

fn tensor_binary(c: &mut C) {
    type Case = (&'static [usize], &'static [usize], &'static [usize]);
    let cases: [Case; 10] = [
        (&[1000], &[1000], &[1000]),                                     // same shape, odd length
        (&[64, 577], &[577], &[64, 577]),                                // a bias row
        (&[64, 1], &[64, 577], &[64, 577]),                              // a per-row column
        (&[3, 1, 5], &[4, 1], &[3, 4, 5]),                               // both broadcast, b of lower rank
        (&[1, 37], &[65, 1], &[65, 37]),                                 // outer product
        (&[2, 3, 4, 5], &[], &[2, 3, 4, 5]),                             // a scalar b
        (&[], &[7, 9], &[7, 9]),                                         // a scalar a
        (&[2, 1, 3, 1, 4, 5], &[1, 3, 1, 2, 1, 5], &[2, 3, 3, 2, 4, 5]), // six dimensions, alternating
        (&[1, 1, 1], &[1], &[1, 1, 1]),                                  // size 1 only
        (&[0, 5], &[5], &[0, 5]),                                        // empty
    ];
    const OPS: [(&str, BinaryOp); 4] =
        [("add", BinaryOp::Add), ("sub", BinaryOp::Sub), ("mul", BinaryOp::Mul), ("div", BinaryOp::Div)];
    for (k, (sa, sb, so)) in cases.into_iter().enumerate() {
        let n = cpu::tensor_ref::numel(so);
        if c.too_large(n) {
            continue;
        }
        let mut rng = TestRng::new(61 + k as u64);
        let a = with_specials(rng.vec(cpu::tensor_ref::numel(sa), 4.0), 3);
        let mut b = rng.vec(cpu::tensor_ref::numel(sb), 4.0);
        if b.len() > 2 {
            b[1] = 0.0; // division by zero
        }
        let cpu = || {
            let mut outputs = Vec::new();
            for (what, op) in OPS {
                let mut oc = vec![0.0; n];
                cpu::tensor_ref::binary(op, &a, sa, &b, sb, &mut oc, so);
                outputs.push((what, oc));
            }
            outputs
        };
        c.run("tensor_binary", format!("{sa:?} {sb:?} -> {so:?}"), 0.0, cpu, |g| {
            let (ag, bg) = (g.upload(&a)?, g.upload(&b)?);
            let mut outputs = Vec::new();
            for (_, op) in OPS {
                let mut o = out(g, n)?;
                tensor_ops::binary(g, op, &ag, sa, &bg, sb, &mut o, so)?;
                outputs.push(g.download(&o)?);
            }
            Ok(outputs)
        });
    }
}

fn tensor_reductions(c: &mut C) {
    // (outer, n, inner): the row kernel, the column kernel, the strided one (short axes), an
    // empty axis (0 / -inf) and no outputs at all.
    for &(outer, n, inner) in &[
        (1, 1, 1),
        (1, 70_001, 1),
        (37, 1000, 1),
        (1, 33, 1),
        (3, 5, 7),
        (5, 300, 33),
        (2, 4099, 2),
        (20_000, 3, 1),
        (4, 0, 3),
        (0, 5, 3),
    ] {
        if c.too_large(outer * n * inner) {
            continue;
        }
        let mut rng = TestRng::new(67 + (outer * n + inner) as u64);
        let mut x = rng.vec(outer * n * inner, 1.0);
        if (outer, n, inner) == (37, 1000, 1) {
            x = with_specials(x, 1001); // special i in row i
        }
        // The max is exact; the sum adds in double in another order than the twin.
        for (what, op, tol) in [("sum", ReduceOp::Sum, 1e-6), ("max", ReduceOp::Max, 0.0)] {
            let cpu = || {
                let mut yc = vec![0.0; outer * inner];
                cpu::tensor_ref::reduce_axis(op, &x, outer, n, inner, &mut yc);
                vec![(what, yc)]
            };
            c.run("tensor_reduce_axis", format!("outer={outer} n={n} inner={inner}"), tol, cpu, |g| {
                let xg = g.upload(&x)?;
                let mut y = out(g, outer * inner)?;
                tensor_ops::reduce_axis(g, op, &xg, outer, n, inner, &mut y)?;
                Ok(vec![g.download(&y)?])
            });
        }
    }
}

fn tensor_sum_to(c: &mut C) {
    type Case = (&'static [usize], &'static [usize]);
    let cases: [Case; 11] = [
        (&[64, 577], &[577]),                    // columns (a bias gradient)
        (&[64, 577], &[64, 1]),                  // rows
        (&[2, 40, 3], &[2, 1, 3]),               // kept, reduced, kept
        (&[1000, 3], &[3]),                      // narrow columns
        (&[2, 3, 4, 5], &[]),                    // everything, to a scalar
        (&[3, 2049], &[1, 1]),                   // everything, one long row
        (&[5, 7, 9], &[1, 7, 1]),                // reduced, kept, reduced
        (&[2, 3, 4, 5, 6, 7], &[3, 1, 5, 1, 1]), // six dimensions, alternating
        (&[4, 1, 6], &[4, 1, 6]),                // nothing to sum
        (&[3, 1, 6], &[1, 1, 1]),                // a size-1 axis among summed ones
        (&[0, 5], &[5]),                         // an empty x: zeros
    ];
    for (k, (xs, ys)) in cases.into_iter().enumerate() {
        if c.too_large(cpu::tensor_ref::numel(xs)) {
            continue;
        }
        let x = TestRng::new(71 + k as u64).vec(cpu::tensor_ref::numel(xs), 1.0);
        let ny = cpu::tensor_ref::numel(ys);
        let cpu = || {
            let mut yc = vec![0.0; ny];
            cpu::tensor_ref::sum_to(&x, xs, &mut yc, ys);
            vec![("", yc)]
        };
        c.run("tensor_sum_to", format!("{xs:?} -> {ys:?}"), 1e-6, cpu, |g| {
            let xg = g.upload(&x)?;
            let mut y = out(g, ny)?;
            tensor_ops::sum_to(g, &xg, xs, &mut y, ys)?;
            Ok(vec![g.download(&y)?])
        });
    }
}

fn tensor_softmax(c: &mut C) {
    for &(rows, cols) in &[(1, 1), (5, 7), (37, 1000), (3, 4099), (2000, 33), (0, 5), (4, 0)] {
        if c.too_large(rows * cols) {
            continue;
        }
        let mut rng = TestRng::new(73 + (rows * cols) as u64);
        let mut x = rng.vec(rows * cols, 5.0);
        if (rows, cols) == (37, 1000) {
            x[..1000].fill(f32::NEG_INFINITY); // row 0: NaN, as the twin
            x[1005] = f32::INFINITY; // row 1: NaN
            x[2007] = f32::NAN; // row 2: NaN
            x[3000..4000].iter_mut().for_each(|v| *v *= 40.0); // row 3: |x| up to 200, stable
            x[4000..4500].fill(f32::NEG_INFINITY); // row 4: half the entries get 0
        }
        let cpu = || {
            let mut yc = vec![0.0; rows * cols];
            cpu::tensor_ref::softmax_rows(&x, &mut yc, rows, cols);
            vec![("", yc)]
        };
        c.run("tensor_softmax_rows", format!("rows={rows} cols={cols}"), 1e-6, cpu, |g| {
            let xg = g.upload(&x)?;
            let mut y = out(g, rows * cols)?;
            tensor_ops::softmax_rows(g, &xg, &mut y, rows, cols)?;
            Ok(vec![g.download(&y)?])
        });
    }
}

fn tensor_copy_2d(c: &mut C) {
    // (src len, src_off, src_pitch, dst len, dst_off, dst_pitch, rows, cols)
    let cases = [
        (40, 3, 10, 16, 0, 4, 4, 4),                        // narrow columns 3..7 of [4, 10]
        (300 * 257, 0, 257, 300 * 600, 100, 600, 300, 257), // one part of a concat along columns
        (5, 0, 0, 35, 0, 5, 7, 5),                          // pitch 0: a row repeated
        (1000, 17, 1000, 2000, 3, 0, 1, 983),               // one row (its pitches unused)
        (10, 0, 10, 10, 0, 10, 0, 10),                      // no rows
    ];
    for (k, (sl, so, sp, dl, doff, dp, rows, cols)) in cases.into_iter().enumerate() {
        if c.too_large(sl.max(dl)) {
            continue;
        }
        let mut rng = TestRng::new(79 + k as u64);
        let (src, dst0) = (rng.vec(sl, 1.0), rng.vec(dl, 1.0));
        let cpu = || {
            let mut dc = dst0.clone();
            cpu::tensor_ref::copy_2d(&src, so, sp, &mut dc, doff, dp, rows, cols);
            vec![("", dc)]
        };
        c.run("tensor_copy_2d", format!("{rows}x{cols} src {so}+{sp}r dst {doff}+{dp}r"), 0.0, cpu, |g| {
            let sg = g.upload(&src)?;
            // Written in part: the rest must keep dst0, so dst0 (not NaN) is the pre-fill.
            let mut dg = g.upload(&dst0)?;
            tensor_ops::copy_2d(g, &sg, so, sp, &mut dg, doff, dp, rows, cols)?;
            Ok(vec![g.download(&dg)?])
        });
    }
}

fn tensor_permute(c: &mut C) {
    type Case = (&'static [usize], &'static [usize]);
    let cases: [Case; 8] = [
        (&[2, 3], &[1, 0]),
        (&[64, 577], &[1, 0]),
        (&[4, 5, 6], &[2, 0, 1]),
        (&[2, 37, 4, 16], &[0, 2, 1, 3]), // [B, T, H, D] -> [B, H, T, D]
        (&[2, 3, 1, 4, 2, 3], &[5, 3, 1, 0, 4, 2]),
        (&[7, 9], &[0, 1]), // identity: a plain copy
        (&[], &[]),         // a scalar
        (&[0, 3], &[1, 0]), // empty
    ];
    for (k, (xs, perm)) in cases.into_iter().enumerate() {
        if c.too_large(cpu::tensor_ref::numel(xs)) {
            continue;
        }
        let x = TestRng::new(83 + k as u64).vec(cpu::tensor_ref::numel(xs), 1.0);
        let cpu = || {
            let mut yc = vec![0.0; x.len()];
            cpu::tensor_ref::permute(&x, xs, perm, &mut yc);
            vec![("", yc)]
        };
        c.run("tensor_permute", format!("{xs:?} by {perm:?}"), 0.0, cpu, |g| {
            let xg = g.upload(&x)?;
            let mut y = out(g, x.len())?;
            tensor_ops::permute(g, &xg, xs, perm, &mut y)?;
            Ok(vec![g.download(&y)?])
        });
    }
}

/// Wrong lengths and shapes are errors before any launch (1 per call rejected).
fn tensor_misuse(c: &mut C) {
    let expected = || vec![("", vec![1.0; 10])];
    c.run("tensor_ops_misuse", "wrong lengths / shapes".into(), 0.0, expected, |g| {
        let (six, mut five) = (g.upload(&[1.0f32; 6])?, out(g, 5)?);
        let mut six_out = out(g, 6)?;
        let rejected = [
            tensor_ops::unary(g, UnaryOp::Neg, &six, &mut five).is_err(),
            tensor_ops::binary(g, BinaryOp::Add, &six, &[2, 3], &six, &[3], &mut five, &[2, 3]).is_err(),
            tensor_ops::binary(g, BinaryOp::Add, &six, &[2, 3], &six, &[2, 3], &mut six_out, &[3, 2]).is_err(),
            tensor_ops::add_assign(g, &mut five, &six).is_err(),
            tensor_ops::reduce_axis(g, ReduceOp::Sum, &six, 2, 3, 1, &mut five).is_err(),
            tensor_ops::sum_to(g, &six, &[2, 3], &mut five, &[2, 1]).is_err(),
            tensor_ops::softmax_rows(g, &six, &mut five, 2, 3).is_err(),
            tensor_ops::copy_2d(g, &six, 4, 1, &mut five, 0, 1, 2, 3).is_err(),
            tensor_ops::copy_2d(g, &six, 0, 3, &mut six_out, 0, 2, 2, 3).is_err(),
            tensor_ops::permute(g, &six, &[2, 3], &[0, 0], &mut six_out).is_err(),
        ];
        Ok(vec![rejected.iter().map(|&r| r as u8 as f32).collect()])
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checker_bf16_gemm_tolerance_scales_with_sqrt_k() {
        assert!((bf16_gemm_tol(4096) / bf16_gemm_tol(1024) - 2.0).abs() < 1e-12);
        // About 7 units of fp32 rounding times sqrt(k): above the random-walk error of one
        // side (u sqrt(k)), far below one product of k dropped (about 1/sqrt(k)).
        for k in [1usize, 64, 576, 4096, 11008] {
            let (t, u, rk) = (bf16_gemm_tol(k), 2f64.powi(-24), (k as f64).sqrt());
            assert!(t > 5.0 * u * rk && t < 10.0 * u * rk, "{k}: {t}");
            assert!(t < 0.01 / rk, "{k}: {t}");
        }
        assert_eq!(bf16_gemm_tol(0), bf16_gemm_tol(1));
    }
}
