//! Every CUDA kernel against its CPU twin, on random and edge-case shapes. Library code so the
//! prebuilt `xtask gpu-check` binary runs it on a GPU machine without a Rust toolchain, and
//! `tests/cuda.rs` runs the same.
//!
//! Errors are measured as `max |gpu - cpu| / max(1, max |cpu|)` (infinities and NaNs must
//! match exactly) against a tolerance chosen per kernel: 0 where the GPU does the same
//! operations in the same order (casts, gathers, the scatter-add), about 1e-5 where only the
//! summation order differs, more where a long reduction runs in fp32 on one side and f64 on
//! the other.

use super::ops::{self, InjectGpu, LoraGradsGpu};
use super::runtime::Gpu;
use super::tensor_ops::{self, BinaryOp, ReduceOp, UnaryOp};
use super::{blas, Result};
use crate::cpu;
use crate::cpu::attention::AttnDims;
use crate::cpu::lowrank::{Inject, LoraDims, LoraGrads};

/// One comparison: which kernel, on what shape, how far off, against what tolerance.
#[derive(Clone, Debug)]
pub struct CheckResult {
    pub name: String,
    pub shape: String,
    pub max_err: f64,
    pub tol: f64,
    pub ok: bool,
    /// Set when the GPU side failed outright (launch or compile error).
    pub error: Option<String>,
}

impl std::fmt::Display for CheckResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error {
            Some(e) => write!(f, "FAIL {:<28} {:<34} error: {e}", self.name, self.shape),
            None => write!(
                f,
                "{} {:<28} {:<34} max err {:.2e} (tol {:.0e})",
                if self.ok { "ok  " } else { "FAIL" },
                self.name,
                self.shape,
                self.max_err,
                self.tol
            ),
        }
    }
}

/// Normalised max error, see the module docs.
pub fn max_err(gpu: &[f32], cpu: &[f32]) -> f64 {
    if gpu.len() != cpu.len() {
        return f64::INFINITY;
    }
    let scale = cpu.iter().filter(|v| v.is_finite()).fold(1.0f64, |m, &v| m.max(v.abs() as f64));
    let mut err = 0.0f64;
    for (&g, &c) in gpu.iter().zip(cpu) {
        let e = if c.is_nan() || g.is_nan() {
            if c.is_nan() && g.is_nan() {
                0.0
            } else {
                f64::INFINITY
            }
        } else if c.is_infinite() || g.is_infinite() {
            if c == g {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            (g as f64 - c as f64).abs()
        };
        err = err.max(e);
    }
    err / scale
}

/// xorshift64*: a small deterministic generator for test data (no dependency on echo-tensor).
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        TestRng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Values rounded to bf16 (so a bf16 GPU operand and the f32 CPU operand hold the same numbers).
pub fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| cpu::cast::bf16_to_f32(cpu::cast::f32_to_bf16(x))).collect()
}

pub fn to_bf16(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| cpu::cast::f32_to_bf16(x)).collect()
}

struct Checker<'g> {
    gpu: &'g Gpu,
    results: Vec<CheckResult>,
}

impl Checker<'_> {
    /// Runs one check; `f` returns (gpu, cpu) pairs of named outputs.
    fn run(
        &mut self,
        name: &str,
        shape: String,
        tol: f64,
        f: impl FnOnce(&Gpu) -> Result<Vec<(&'static str, Vec<f32>, Vec<f32>)>>,
    ) {
        match f(self.gpu).and_then(|r| self.gpu.synchronize().map(|_| r)) {
            Err(e) => self.results.push(CheckResult {
                name: name.into(),
                shape,
                max_err: f64::INFINITY,
                tol,
                ok: false,
                error: Some(e.to_string()),
            }),
            Ok(outputs) => {
                for (what, g, c) in outputs {
                    let err = max_err(&g, &c);
                    let name = if what.is_empty() { name.to_string() } else { format!("{name}.{what}") };
                    self.results.push(CheckResult {
                        name,
                        shape: shape.clone(),
                        max_err: err,
                        tol,
                        ok: err <= tol,
                        error: None,
                    });
                }
            }
        }
    }
}

/// Runs every check on `gpu`; one result per compared output.
pub fn run_all(gpu: &Gpu) -> Vec<CheckResult> {
    let mut c = Checker { gpu, results: Vec::new() };
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
    ] {
        attention(&mut c, AttnDims { batch: b, seq: t, q_heads: hq, kv_heads: hkv, head_dim: d }, padding);
    }
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
    c.results
}

fn cast(c: &mut Checker) {
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
    c.run("f32_to_bf16", format!("n={}", v.len()), 0.0, |g| {
        let src = g.upload(&v)?;
        let mut dst = g.alloc::<u16>(v.len())?;
        ops::f32_to_bf16(g, &src, &mut dst)?;
        let mut back = g.alloc::<f32>(v.len())?;
        ops::bf16_to_f32(g, &dst, &mut back)?;
        let bits: Vec<f32> = g.download(&dst)?.iter().map(|&h| h as f32).collect();
        let want: Vec<f32> = to_bf16(&v).iter().map(|&h| h as f32).collect();
        Ok(vec![("bits", bits, want), ("roundtrip", g.download(&back)?, round_bf16(&v))])
    });
}

fn blas_linear(c: &mut Checker) {
    for &(m, k, n) in &[(1, 1, 1), (37, 576, 1536), (256, 4096, 512)] {
        let mut rng = TestRng::new(2);
        let (x, w, dy) =
            (round_bf16(&rng.vec(m * k, 1.0)), round_bf16(&rng.vec(n * k, 0.05)), round_bf16(&rng.vec(m * n, 1.0)));
        c.run("cublas_linear_bf16", format!("m={m} k={k} n={n}"), 1e-5, |g| {
            let (xg, wg, dyg) = (g.upload(&to_bf16(&x))?, g.upload(&to_bf16(&w))?, g.upload(&to_bf16(&dy))?);
            let mut y = g.alloc::<f32>(m * n)?;
            blas::linear_bf16(g, &xg, &wg, &mut y, m, k, n, false)?;
            let mut dx = g.alloc::<f32>(m * k)?;
            blas::linear_bf16_dx(g, &dyg, &wg, &mut dx, m, k, n, false)?;
            let mut yc = vec![0.0; m * n];
            cpu::gemm::matmul(&mut yc, &x, &w, m, k, n, false, true, 1.0, false, cpu::gemm::Par::Rayon);
            let mut dxc = vec![0.0; m * k];
            cpu::gemm::matmul(&mut dxc, &dy, &w, m, n, k, false, false, 1.0, false, cpu::gemm::Par::Rayon);
            Ok(vec![("y", g.download(&y)?, yc), ("dx", g.download(&dx)?, dxc)])
        });
    }
}

#[allow(clippy::too_many_arguments)]
fn lora(c: &mut Checker, rows: usize, rps: usize, d_in: usize, d_out: usize, rank: usize, inject: bool, dropout: bool) {
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
    let scale = 2.0;
    let shape = format!(
        "N={rows} in={d_in} out={d_out} r={rank}{}{}",
        if inject { " inj" } else { "" },
        if dropout { " drop" } else { "" }
    );
    c.run("lora_forward", shape.clone(), 1e-5, |g| {
        let (xg, x16, wg, ag, bg) =
            (g.upload(&x)?, g.upload(&to_bf16(&x))?, g.upload(&to_bf16(&w))?, g.upload(&a)?, g.upload(&b)?);
        let (gg, pg, xdg) = (g.upload(&gate)?, g.upload(&proj)?, g.upload(&xd)?);
        let inj = inject.then_some(InjectGpu { gate: &gg, proj: &pg, rows_per_sample: rps });
        let (mut y, mut z) = (g.alloc::<f32>(rows * d_out)?, g.alloc::<f32>(rows * rank)?);
        ops::lora_forward(g, &d, &xg, &x16, dropout.then_some(&xdg), &wg, &ag, &bg, scale, inj, &mut y, &mut z)?;
        let (mut yc, mut zc) = (vec![0.0; rows * d_out], vec![0.0; rows * rank]);
        let injc = inject.then_some(Inject { gate: &gate, proj: &proj, rows_per_sample: rps });
        cpu::lowrank::lora_forward(&d, &x, dropout.then_some(&xd[..]), &w, &a, &b, scale, injc, &mut yc, &mut zc);
        Ok(vec![("y", g.download(&y)?, yc), ("z", g.download(&z)?, zc)])
    });
    c.run("lora_backward", shape, 1e-5, |g| {
        let (xg, wg, ag, bg, dyg) =
            (g.upload(&x)?, g.upload(&to_bf16(&w))?, g.upload(&a)?, g.upload(&b)?, g.upload(&dy)?);
        let (xdg, keepg) = (g.upload(&xd)?, g.upload(&keep)?);
        // The bottleneck as forward saved it (any values do for the check).
        let z = rng.vec(rows * rank, 1.0);
        let zg = g.upload(&z)?;
        let (mut dx, mut da, mut db, mut dz) = (
            g.alloc::<f32>(rows * d_in)?,
            g.alloc::<f32>(rank * d_in)?,
            g.alloc::<f32>(d_out * rank)?,
            g.alloc::<f32>(rows * rank)?,
        );
        let grads = LoraGradsGpu { dx: Some(&mut dx), da: Some(&mut da), db: Some(&mut db), dz: &mut dz };
        ops::lora_backward(
            g,
            &d,
            &dyg,
            &xg,
            dropout.then_some(&xdg),
            dropout.then_some(&keepg),
            &wg,
            &ag,
            &bg,
            &zg,
            scale,
            grads,
        )?;
        let (mut dxc, mut dac, mut dbc, mut dzc) =
            (vec![0.0; rows * d_in], vec![0.0; rank * d_in], vec![0.0; d_out * rank], vec![0.0; rows * rank]);
        let gc = LoraGrads { dx: Some(&mut dxc), da: Some(&mut dac), db: Some(&mut dbc), dz: &mut dzc };
        cpu::lowrank::lora_backward(
            &d,
            &dy,
            &x,
            dropout.then_some(&xd[..]),
            dropout.then_some(&keep[..]),
            &w,
            &a,
            &b,
            &z,
            scale,
            gc,
        );
        Ok(vec![
            ("dx", g.download(&dx)?, dxc),
            ("dA", g.download(&da)?, dac),
            ("dB", g.download(&db)?, dbc),
            ("dz", g.download(&dz)?, dzc),
        ])
    });
}

fn injection(c: &mut Checker, samples: usize, rps: usize, rank: usize) {
    let rows = samples * rps;
    let mut rng = TestRng::new(7 + rows as u64);
    let (z, dz, gate, proj) = (
        rng.vec(rows * rank, 1.0),
        rng.vec(rows * rank, 1.0),
        rng.vec(samples * rank, 1.0),
        rng.vec(samples * rank, 1.0),
    );
    c.run("gated_injection", format!("samples={samples} tokens={rps} r={rank}"), 1e-5, |g| {
        let (gg, pg, dzg) = (g.upload(&gate)?, g.upload(&proj)?, g.upload(&dz)?);
        let inj = InjectGpu { gate: &gg, proj: &pg, rows_per_sample: rps };
        let mut zg = g.upload(&z)?;
        ops::gated_inject_forward(g, &mut zg, inj, rows, rank)?;
        let (mut dgg, mut dpg) = (g.alloc::<f32>(samples * rank)?, g.alloc::<f32>(samples * rank)?);
        ops::gated_inject_backward(g, &dzg, inj, rows, rank, &mut dgg, &mut dpg)?;
        let injc = Inject { gate: &gate, proj: &proj, rows_per_sample: rps };
        let mut zc = z.clone();
        cpu::lowrank::gated_inject_forward(&mut zc, injc, rank);
        let (mut dgc, mut dpc) = (vec![0.0; samples * rank], vec![0.0; samples * rank]);
        cpu::lowrank::gated_inject_backward(&dz, injc, rank, &mut dgc, &mut dpc);
        Ok(vec![("z", g.download(&zg)?, zc), ("dgate", g.download(&dgg)?, dgc), ("dproj", g.download(&dpg)?, dpc)])
    });
}

fn dora_scale(c: &mut Checker, rows: usize, cols: usize) {
    let mut rng = TestRng::new(11 + cols as u64);
    let (pre, dy, m) = (rng.vec(rows * cols, 1.0), rng.vec(rows * cols, 1.0), rng.vec(cols, 1.0));
    let norm: Vec<f32> = rng.vec(cols, 1.0).iter().map(|v| 0.5 + v.abs()).collect();
    c.run("dora_scale", format!("rows={rows} cols={cols}"), 1e-6, |g| {
        let (preg, dyg, mg, ng) = (g.upload(&pre)?, g.upload(&dy)?, g.upload(&m)?, g.upload(&norm)?);
        let (mut y, mut dpre, mut dm) =
            (g.alloc::<f32>(rows * cols)?, g.alloc::<f32>(rows * cols)?, g.alloc::<f32>(cols)?);
        ops::dora_scale_forward(g, &preg, &mg, &ng, &mut y, rows, cols)?;
        ops::dora_scale_backward(g, &dyg, &preg, &mg, &ng, &mut dpre, Some(&mut dm), rows, cols)?;
        let (mut yc, mut dprec, mut dmc) = (vec![0.0; rows * cols], vec![0.0; rows * cols], vec![0.0; cols]);
        cpu::lowrank::dora_scale_forward(&pre, &m, &norm, &mut yc);
        cpu::lowrank::dora_scale_backward(&dy, &pre, &m, &norm, &mut dprec, Some(&mut dmc));
        Ok(vec![("y", g.download(&y)?, yc), ("dpre", g.download(&dpre)?, dprec), ("dm", g.download(&dm)?, dmc)])
    });
}

fn rmsnorm(c: &mut Checker, rows: usize, dim: usize, weighted: bool) {
    let mut rng = TestRng::new(13 + dim as u64);
    let (x, dy, w) = (rng.vec(rows * dim, 2.0), rng.vec(rows * dim, 1.0), rng.vec(dim, 1.0));
    let dw0 = rng.vec(dim, 1.0);
    let eps = 1e-5;
    c.run("rmsnorm", format!("rows={rows} dim={dim}{}", if weighted { "" } else { " no-weight" }), 2e-5, |g| {
        let (xg, dyg, wg) = (g.upload(&x)?, g.upload(&dy)?, g.upload(&w)?);
        let wopt = weighted.then_some(&wg);
        let (mut y, mut rstd, mut dx) =
            (g.alloc::<f32>(rows * dim)?, g.alloc::<f32>(rows)?, g.alloc::<f32>(rows * dim)?);
        let mut dw = g.upload(&dw0)?;
        ops::rmsnorm_forward(g, &xg, wopt, &mut y, &mut rstd, rows, dim, eps)?;
        ops::rmsnorm_backward(g, &dyg, &xg, wopt, &rstd, &mut dx, weighted.then_some(&mut dw), rows, dim)?;
        let wc = weighted.then_some(&w[..]);
        let (mut yc, mut rstdc, mut dxc, mut dwc) =
            (vec![0.0; rows * dim], vec![0.0; rows], vec![0.0; rows * dim], dw0.clone());
        cpu::norm::rmsnorm_forward(&x, wc, &mut yc, &mut rstdc, dim, eps);
        cpu::norm::rmsnorm_backward(&dy, &x, wc, &rstdc, &mut dxc, weighted.then_some(&mut dwc[..]), dim);
        Ok(vec![
            ("y", g.download(&y)?, yc),
            ("rstd", g.download(&rstd)?, rstdc),
            ("dx", g.download(&dx)?, dxc),
            ("dw", g.download(&dw)?, dwc),
        ])
    });
}

fn rope(c: &mut Checker, tokens: usize, heads: usize, hd: usize) {
    let mut rng = TestRng::new(17 + hd as u64);
    let max_pos = 4096;
    let table = cpu::rope::RopeTable::new(hd, max_pos, 10_000.0, None);
    let x = rng.vec(tokens * heads * hd, 1.0);
    let pos: Vec<usize> = (0..tokens).map(|_| rng.below(max_pos)).collect();
    c.run("rope", format!("tokens={tokens} heads={heads} d={hd}"), 1e-6, |g| {
        let tg = ops::RopeTableGpu::upload(g, &table)?;
        let posg = g.upload(&pos.iter().map(|&p| p as i32).collect::<Vec<_>>())?;
        let mut fwd = g.upload(&x)?;
        ops::rope_apply(g, &mut fwd, &posg, tokens, heads, &tg, false)?;
        let mut inv = g.upload(&x)?;
        ops::rope_apply(g, &mut inv, &posg, tokens, heads, &tg, true)?;
        let (mut fc, mut ic) = (x.clone(), x.clone());
        cpu::rope::rope_apply(&mut fc, &pos, heads, &table, false);
        cpu::rope::rope_apply(&mut ic, &pos, heads, &table, true);
        Ok(vec![("forward", g.download(&fwd)?, fc), ("inverse", g.download(&inv)?, ic)])
    });
}

fn swiglu(c: &mut Checker, n: usize) {
    let mut rng = TestRng::new(19 + n as u64);
    let (gate, up, dout) = (rng.vec(n, 8.0), rng.vec(n, 2.0), rng.vec(n, 1.0));
    c.run("swiglu", format!("n={n}"), 1e-6, |g| {
        let (gg, ug, dg) = (g.upload(&gate)?, g.upload(&up)?, g.upload(&dout)?);
        let (mut out, mut dgate, mut dup) = (g.alloc::<f32>(n)?, g.alloc::<f32>(n)?, g.alloc::<f32>(n)?);
        ops::swiglu_forward(g, &gg, &ug, &mut out, n)?;
        ops::swiglu_backward(g, &dg, &gg, &ug, &mut dgate, &mut dup, n)?;
        let (mut oc, mut dgc, mut duc) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        cpu::activation::swiglu_forward(&gate, &up, &mut oc);
        cpu::activation::swiglu_backward(&dout, &gate, &up, &mut dgc, &mut duc);
        Ok(vec![("out", g.download(&out)?, oc), ("dgate", g.download(&dgate)?, dgc), ("dup", g.download(&dup)?, duc)])
    });
}

#[derive(Clone, Copy, Debug)]
enum Padding {
    None,
    /// The last keys of sample 0 are padding (training's case).
    Right,
    /// The first keys of the last sample are padding: its first queries have no key at all.
    Left,
}

fn attention(c: &mut Checker, d: AttnDims, padding: Padding) {
    let (b, t, hq, hkv, hd) = (d.batch, d.seq, d.q_heads, d.kv_heads, d.head_dim);
    let mut rng = TestRng::new((t * 131 + hd) as u64);
    let (q, k, v, dout) = (
        rng.vec(b * t * hq * hd, 1.0),
        rng.vec(b * t * hkv * hd, 1.0),
        rng.vec(b * t * hkv * hd, 1.0),
        rng.vec(b * t * hq * hd, 1.0),
    );
    let mut valid = vec![true; b * t];
    match padding {
        Padding::None => {}
        Padding::Right => valid[t - t / 3..t].iter_mut().for_each(|v| *v = false),
        Padding::Left => valid[(b - 1) * t..(b - 1) * t + t / 4].iter_mut().for_each(|v| *v = false),
    }
    let scale = 1.0 / (hd as f32).sqrt();
    c.run("attention", format!("B={b} T={t} Hq={hq} Hkv={hkv} D={hd} {padding:?}"), 2e-5, |g| {
        let (qg, kg, vg, dog) = (g.upload(&q)?, g.upload(&k)?, g.upload(&v)?, g.upload(&dout)?);
        let validg = g.upload(&valid.iter().map(|&v| v as u8).collect::<Vec<_>>())?;
        let (mut out, mut lse) = (g.alloc::<f32>(q.len())?, g.alloc::<f32>(b * hq * t)?);
        ops::attention_forward(g, &d, &qg, &kg, &vg, &validg, scale, &mut out, &mut lse)?;
        let (mut dq, mut dk, mut dv) = (g.alloc::<f32>(q.len())?, g.alloc::<f32>(k.len())?, g.alloc::<f32>(v.len())?);
        ops::attention_backward(g, &d, &qg, &kg, &vg, &validg, scale, &out, &lse, &dog, &mut dq, &mut dk, &mut dv)?;
        let (mut oc, mut lc) = (vec![0.0; q.len()], vec![0.0; b * hq * t]);
        cpu::attention::attention_forward(&d, &q, &k, &v, &valid, scale, &mut oc, &mut lc);
        let (mut dqc, mut dkc, mut dvc) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        cpu::attention::attention_backward(
            &d, &q, &k, &v, &valid, scale, &oc, &lc, &dout, &mut dqc, &mut dkc, &mut dvc,
        );
        Ok(vec![
            ("out", g.download(&out)?, oc),
            ("lse", g.download(&lse)?, lc),
            ("dq", g.download(&dq)?, dqc),
            ("dk", g.download(&dk)?, dkc),
            ("dv", g.download(&dv)?, dvc),
        ])
    });
}

fn cross_entropy(c: &mut Checker, rows: usize, vocab: usize) {
    let mut rng = TestRng::new(23 + vocab as u64);
    let logits = rng.vec(rows * vocab, 10.0);
    let targets: Vec<i64> =
        (0..rows).map(|r| if r % 3 == 1 { cpu::loss::IGNORE_INDEX } else { rng.below(vocab) as i64 }).collect();
    let row_scale = rng.vec(rows, 1.0);
    c.run("cross_entropy", format!("rows={rows} vocab={vocab}"), 1e-5, |g| {
        let (lg, tg, sg) = (g.upload(&logits)?, g.upload(&targets)?, g.upload(&row_scale)?);
        let (mut loss, mut lse, mut dl) = (g.alloc::<f32>(rows)?, g.alloc::<f32>(rows)?, g.alloc::<f32>(rows * vocab)?);
        ops::cross_entropy_forward(g, &lg, &tg, rows, vocab, &mut loss, &mut lse)?;
        ops::cross_entropy_backward(g, &lg, &tg, &lse, &sg, rows, vocab, &mut dl)?;
        let (mut lc, mut zc, mut dc) = (vec![0.0; rows], vec![0.0; rows], vec![0.0; rows * vocab]);
        cpu::loss::cross_entropy_forward(&logits, &targets, vocab, &mut lc, &mut zc);
        cpu::loss::cross_entropy_backward(&logits, &targets, &zc, &row_scale, vocab, &mut dc);
        Ok(vec![("loss", g.download(&loss)?, lc), ("lse", g.download(&lse)?, zc), ("dlogits", g.download(&dl)?, dc)])
    });
}

fn kl(c: &mut Checker, rows: usize, vocab: usize) {
    let mut rng = TestRng::new(29 + vocab as u64);
    let (teacher, student) = (rng.vec(rows * vocab, 5.0), rng.vec(rows * vocab, 5.0));
    let row_scale: Vec<f32> = (0..rows).map(|r| if r == 0 { 0.0 } else { rng.uniform() }).collect();
    let tau = 2.0;
    c.run("kl", format!("rows={rows} vocab={vocab}"), 2e-5, |g| {
        let (tg, sg, rg) = (g.upload(&teacher)?, g.upload(&student)?, g.upload(&row_scale)?);
        let (mut klg, mut dg) = (g.alloc::<f32>(rows)?, g.alloc::<f32>(rows * vocab)?);
        ops::kl_forward(g, &tg, &sg, rows, vocab, tau, &mut klg)?;
        ops::kl_backward_student(g, &tg, &sg, &rg, rows, vocab, tau, &mut dg)?;
        let (mut kc, mut dc) = (vec![0.0; rows], vec![0.0; rows * vocab]);
        cpu::loss::kl_forward(&teacher, &student, vocab, tau, &mut kc);
        cpu::loss::kl_backward_student(&teacher, &student, &row_scale, vocab, tau, &mut dc);
        Ok(vec![("kl", g.download(&klg)?, kc), ("dstudent", g.download(&dg)?, dc)])
    });
}

fn pool(c: &mut Checker, b: usize, t: usize, d: usize) {
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
    c.run("masked_mean_pool", format!("B={b} T={t} D={d}"), 1e-6, |g| {
        let (xg, mg, dg) = (g.upload(&x)?, g.upload(&mask)?, g.upload(&dout)?);
        let (mut out, mut dx) = (g.alloc::<f32>(b * d)?, g.alloc::<f32>(b * t * d)?);
        ops::masked_mean_forward(g, &xg, &mg, b, t, d, &mut out)?;
        ops::masked_mean_backward(g, &dg, &mg, b, t, d, &mut dx)?;
        let (mut oc, mut dc) = (vec![0.0; b * d], vec![0.0; b * t * d]);
        cpu::pool::masked_mean_forward(&x, &mask, t, d, &mut oc);
        cpu::pool::masked_mean_backward(&dout, &mask, t, d, &mut dc);
        Ok(vec![("out", g.download(&out)?, oc), ("dx", g.download(&dx)?, dc)])
    });
}

fn embed(c: &mut Checker, n: usize, rows: usize, dim: usize) {
    let mut rng = TestRng::new(37 + dim as u64);
    let table = round_bf16(&rng.vec(rows * dim, 1.0));
    let src = rng.vec(n * dim, 1.0);
    let idx: Vec<usize> = (0..n).map(|_| rng.below(rows)).collect();
    c.run("embedding", format!("n={n} rows={rows} dim={dim}"), 0.0, |g| {
        let (tg, t16, sg) = (g.upload(&table)?, g.upload(&to_bf16(&table))?, g.upload(&src)?);
        let ig = g.upload(&idx.iter().map(|&i| i as i32).collect::<Vec<_>>())?;
        let (mut o32, mut o16) = (g.alloc::<f32>(n * dim)?, g.alloc::<f32>(n * dim)?);
        ops::embed_gather_f32(g, &tg, &ig, n, dim, &mut o32)?;
        ops::embed_gather_bf16(g, &t16, &ig, n, dim, &mut o16)?;
        let mut grad = g.zeros::<f32>(rows * dim)?;
        ops::embed_scatter_add(g, &sg, &ig, n, dim, &mut grad)?;
        let mut oc = vec![0.0; n * dim];
        cpu::embed::gather_rows(&table, &idx, dim, &mut oc);
        let mut gc = vec![0.0; rows * dim];
        cpu::embed::scatter_add_rows(&src, &idx, dim, &mut gc);
        Ok(vec![
            ("gather_f32", g.download(&o32)?, oc.clone()),
            ("gather_bf16", g.download(&o16)?, oc),
            ("scatter_add", g.download(&grad)?, gc),
        ])
    });
}

fn adamw(c: &mut Checker, n: usize) {
    let mut rng = TestRng::new(41 + n as u64);
    let w0 = rng.vec(n, 1.0);
    let grads: Vec<Vec<f32>> = (0..3).map(|_| rng.vec(n, 1.0)).collect();
    c.run("adamw", format!("n={n} steps=3"), 1e-6, |g| {
        let (mut wg, mut mg, mut vg) = (g.upload(&w0)?, g.zeros::<f32>(n)?, g.zeros::<f32>(n)?);
        let (mut wc, mut mc, mut vc) = (w0.clone(), vec![0.0; n], vec![0.0; n]);
        for (t, grad) in grads.iter().enumerate() {
            let (bc1, bc2) = cpu::optim::AdamWStep::bias_corrections(0.9, 0.999, t as u64 + 1);
            let s = cpu::optim::AdamWStep {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
                grad_scale: 0.5,
                bc1,
                bc2,
            };
            let gg = g.upload(grad)?;
            ops::adamw_step(g, &mut wg, &gg, &mut mg, &mut vg, &s)?;
            cpu::optim::adamw_step(&mut wc, grad, &mut mc, &mut vc, &s);
        }
        Ok(vec![("w", g.download(&wg)?, wc), ("m", g.download(&mg)?, mc), ("v", g.download(&vg)?, vc)])
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

fn tensor_ops_checks(c: &mut Checker) {
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

fn tensor_unary(c: &mut Checker, n: usize) {
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
        c.run(&format!("tensor_unary.{what}"), format!("n={n}"), tol, |g| {
            let xg = g.upload(&x)?;
            let mut y = g.alloc::<f32>(n)?;
            tensor_ops::unary(g, op, &xg, &mut y)?;
            let mut yc = vec![0.0; n];
            cpu::tensor_ref::unary(op, &x, &mut yc);
            Ok(vec![("", g.download(&y)?, yc)])
        });
    }
}

fn tensor_add_assign(c: &mut Checker, n: usize) {
    let mut rng = TestRng::new(53 + n as u64);
    let (y0, x) = (rng.vec(n, 1.0), with_specials(rng.vec(n, 1.0), 5));
    c.run("tensor_add_assign", format!("n={n}"), 0.0, |g| {
        let (mut y, xg) = (g.upload(&y0)?, g.upload(&x)?);
        tensor_ops::add_assign(g, &mut y, &xg)?;
        let mut yc = y0.clone();
        cpu::tensor_ref::add_assign(&mut yc, &x);
        Ok(vec![("", g.download(&y)?, yc)])
    });
}

fn tensor_fill(c: &mut Checker, n: usize) {
    let value = if n == 1 { -0.0 } else { 3.5 };
    c.run("tensor_fill", format!("n={n}"), 0.0, |g| {
        let mut y = g.upload(&TestRng::new(59).vec(n, 1.0))?;
        tensor_ops::fill(g, &mut y, value)?;
        Ok(vec![("", g.download(&y)?, vec![value; n])])
    });
}

fn tensor_binary(c: &mut Checker) {
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
    for (k, (sa, sb, so)) in cases.into_iter().enumerate() {
        let mut rng = TestRng::new(61 + k as u64);
        let a = with_specials(rng.vec(cpu::tensor_ref::numel(sa), 4.0), 3);
        let mut b = rng.vec(cpu::tensor_ref::numel(sb), 4.0);
        if b.len() > 2 {
            b[1] = 0.0; // division by zero
        }
        let n = cpu::tensor_ref::numel(so);
        c.run("tensor_binary", format!("{sa:?} {sb:?} -> {so:?}"), 0.0, |g| {
            let (ag, bg) = (g.upload(&a)?, g.upload(&b)?);
            let mut outputs = Vec::new();
            for (what, op) in
                [("add", BinaryOp::Add), ("sub", BinaryOp::Sub), ("mul", BinaryOp::Mul), ("div", BinaryOp::Div)]
            {
                let mut out = g.alloc::<f32>(n)?;
                tensor_ops::binary(g, op, &ag, sa, &bg, sb, &mut out, so)?;
                let mut oc = vec![0.0; n];
                cpu::tensor_ref::binary(op, &a, sa, &b, sb, &mut oc, so);
                outputs.push((what, g.download(&out)?, oc));
            }
            Ok(outputs)
        });
    }
}

fn tensor_reductions(c: &mut Checker) {
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
        let mut rng = TestRng::new(67 + (outer * n + inner) as u64);
        let mut x = rng.vec(outer * n * inner, 1.0);
        if (outer, n, inner) == (37, 1000, 1) {
            x = with_specials(x, 1001); // special i in row i
        }
        // The max is exact; the sum adds in double in another order than the twin.
        for (what, op, tol) in [("sum", ReduceOp::Sum, 1e-6), ("max", ReduceOp::Max, 0.0)] {
            c.run("tensor_reduce_axis", format!("outer={outer} n={n} inner={inner}"), tol, |g| {
                let xg = g.upload(&x)?;
                let mut y = g.alloc::<f32>(outer * inner)?;
                tensor_ops::reduce_axis(g, op, &xg, outer, n, inner, &mut y)?;
                let mut yc = vec![0.0; outer * inner];
                cpu::tensor_ref::reduce_axis(op, &x, outer, n, inner, &mut yc);
                Ok(vec![(what, g.download(&y)?, yc)])
            });
        }
    }
}

fn tensor_sum_to(c: &mut Checker) {
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
        let x = TestRng::new(71 + k as u64).vec(cpu::tensor_ref::numel(xs), 1.0);
        let ny = cpu::tensor_ref::numel(ys);
        c.run("tensor_sum_to", format!("{xs:?} -> {ys:?}"), 1e-6, |g| {
            let xg = g.upload(&x)?;
            let mut y = g.upload(&vec![f32::NAN; ny])?; // every element must be written
            tensor_ops::sum_to(g, &xg, xs, &mut y, ys)?;
            let mut yc = vec![0.0; ny];
            cpu::tensor_ref::sum_to(&x, xs, &mut yc, ys);
            Ok(vec![("", g.download(&y)?, yc)])
        });
    }
}

fn tensor_softmax(c: &mut Checker) {
    for &(rows, cols) in &[(1, 1), (5, 7), (37, 1000), (3, 4099), (2000, 33), (0, 5), (4, 0)] {
        let mut rng = TestRng::new(73 + (rows * cols) as u64);
        let mut x = rng.vec(rows * cols, 5.0);
        if (rows, cols) == (37, 1000) {
            x[..1000].fill(f32::NEG_INFINITY); // row 0: NaN, as the twin
            x[1005] = f32::INFINITY; // row 1: NaN
            x[2007] = f32::NAN; // row 2: NaN
            x[3000..4000].iter_mut().for_each(|v| *v *= 40.0); // row 3: |x| up to 200, stable
            x[4000..4500].fill(f32::NEG_INFINITY); // row 4: half the entries get 0
        }
        c.run("tensor_softmax_rows", format!("rows={rows} cols={cols}"), 1e-6, |g| {
            let xg = g.upload(&x)?;
            let mut y = g.alloc::<f32>(rows * cols)?;
            tensor_ops::softmax_rows(g, &xg, &mut y, rows, cols)?;
            let mut yc = vec![0.0; rows * cols];
            cpu::tensor_ref::softmax_rows(&x, &mut yc, rows, cols);
            Ok(vec![("", g.download(&y)?, yc)])
        });
    }
}

fn tensor_copy_2d(c: &mut Checker) {
    // (src len, src_off, src_pitch, dst len, dst_off, dst_pitch, rows, cols)
    let cases = [
        (40, 3, 10, 16, 0, 4, 4, 4),                        // narrow columns 3..7 of [4, 10]
        (300 * 257, 0, 257, 300 * 600, 100, 600, 300, 257), // one part of a concat along columns
        (5, 0, 0, 35, 0, 5, 7, 5),                          // pitch 0: a row repeated
        (1000, 17, 1000, 2000, 3, 0, 1, 983),               // one row (its pitches unused)
        (10, 0, 10, 10, 0, 10, 0, 10),                      // no rows
    ];
    for (k, (sl, so, sp, dl, doff, dp, rows, cols)) in cases.into_iter().enumerate() {
        let mut rng = TestRng::new(79 + k as u64);
        let (src, dst0) = (rng.vec(sl, 1.0), rng.vec(dl, 1.0));
        c.run("tensor_copy_2d", format!("{rows}x{cols} src {so}+{sp}r dst {doff}+{dp}r"), 0.0, |g| {
            let sg = g.upload(&src)?;
            let mut dg = g.upload(&dst0)?;
            tensor_ops::copy_2d(g, &sg, so, sp, &mut dg, doff, dp, rows, cols)?;
            let mut dc = dst0.clone();
            cpu::tensor_ref::copy_2d(&src, so, sp, &mut dc, doff, dp, rows, cols);
            Ok(vec![("", g.download(&dg)?, dc)])
        });
    }
}

fn tensor_permute(c: &mut Checker) {
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
        let x = TestRng::new(83 + k as u64).vec(cpu::tensor_ref::numel(xs), 1.0);
        c.run("tensor_permute", format!("{xs:?} by {perm:?}"), 0.0, |g| {
            let xg = g.upload(&x)?;
            let mut y = g.alloc::<f32>(x.len())?;
            tensor_ops::permute(g, &xg, xs, perm, &mut y)?;
            let mut yc = vec![0.0; x.len()];
            cpu::tensor_ref::permute(&x, xs, perm, &mut yc);
            Ok(vec![("", g.download(&y)?, yc)])
        });
    }
}

/// Wrong lengths and shapes are errors before any launch (1 per call rejected).
fn tensor_misuse(c: &mut Checker) {
    c.run("tensor_ops_misuse", "wrong lengths / shapes".into(), 0.0, |g| {
        let (six, mut five) = (g.upload(&[1.0f32; 6])?, g.alloc::<f32>(5)?);
        let mut six_out = g.alloc::<f32>(6)?;
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
        let got: Vec<f32> = rejected.iter().map(|&r| r as u8 as f32).collect();
        Ok(vec![("", got, vec![1.0; rejected.len()])])
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_err_semantics() {
        assert_eq!(max_err(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((max_err(&[1.0, 4.5], &[1.0, 4.0]) - 0.125).abs() < 1e-12);
        assert_eq!(max_err(&[f32::INFINITY], &[f32::INFINITY]), 0.0);
        assert!(max_err(&[1.0], &[f32::NAN]).is_infinite());
        assert!(max_err(&[1.0], &[1.0, 2.0]).is_infinite());
    }
}
