//! The headline kernels timed against an unfused cuBLAS-only baseline. Used by
//! `benches/cuda_kernels.rs` (criterion) and by `xtask gpu-check` (a quick summary).
//!
//! * LoRA low-rank path, forward + backward (the frozen base GEMM is the same cuBLAS call on
//!   both sides and is left out): ours = shrink (injection fused), expand into y, dB, dz, dA,
//!   dx += dz A; baseline = the same products as cuBLAS fp32 GEMMs plus cuBLAS element-wise
//!   ops for the injection.
//! * Gated injection, forward + backward: ours = the shrink's fused epilogue and
//!   `gated_inject_bwd`; baseline = shrink GEMM then `z += g ⊙ p` as a broadcast GEMM
//!   (ones x (g ⊙ p)), and the token sums as a strided-batched GEMM with a ones vector
//!   followed by two element-wise products.

use super::alloc::GpuBuf;
use super::blas;
use super::check::TestRng;
use super::ops::{self, InjectGpu};
use super::runtime::Gpu;
use super::Result;
use crate::cpu::lowrank::LoraDims;
use std::time::Instant;

/// Device buffers for one LoRA layer's low-rank path.
pub struct LoraBench {
    pub d: LoraDims,
    pub rows_per_sample: usize,
    x: GpuBuf<f32>,
    a: GpuBuf<f32>,
    b: GpuBuf<f32>,
    gate: GpuBuf<f32>,
    proj: GpuBuf<f32>,
    gp: GpuBuf<f32>,
    ones: GpuBuf<f32>,
    sums: GpuBuf<f32>,
    dy: GpuBuf<f32>,
    y: GpuBuf<f32>,
    z: GpuBuf<f32>,
    dz: GpuBuf<f32>,
    da: GpuBuf<f32>,
    db: GpuBuf<f32>,
    dx: GpuBuf<f32>,
    dgate: GpuBuf<f32>,
    dproj: GpuBuf<f32>,
}

impl LoraBench {
    pub fn new(gpu: &Gpu, d: LoraDims, rows_per_sample: usize) -> Result<Self> {
        let mut rng = TestRng::new(5);
        let samples = d.rows / rows_per_sample;
        let (n, r) = (d.rows, d.rank);
        Ok(LoraBench {
            d,
            rows_per_sample,
            x: gpu.upload(&rng.vec(n * d.d_in, 1.0))?,
            a: gpu.upload(&rng.vec(r * d.d_in, 0.1))?,
            b: gpu.upload(&rng.vec(d.d_out * r, 0.1))?,
            gate: gpu.upload(&rng.vec(samples * r, 1.0))?,
            proj: gpu.upload(&rng.vec(samples * r, 1.0))?,
            gp: gpu.zeros(samples * r)?,
            ones: gpu.upload(&vec![1.0f32; rows_per_sample.max(1)])?,
            sums: gpu.zeros(samples * r)?,
            dy: gpu.upload(&rng.vec(n * d.d_out, 1.0))?,
            y: gpu.zeros(n * d.d_out)?,
            z: gpu.zeros(n * r)?,
            dz: gpu.zeros(n * r)?,
            da: gpu.zeros(r * d.d_in)?,
            db: gpu.zeros(d.d_out * r)?,
            dx: gpu.zeros(n * d.d_in)?,
            dgate: gpu.zeros(samples * r)?,
            dproj: gpu.zeros(samples * r)?,
        })
    }

    /// Ours: LoRA low-rank forward + backward with the injection (queued, not synchronised).
    pub fn lora_fused(&mut self, gpu: &Gpu) -> Result<()> {
        let d = self.d;
        let inj = InjectGpu { gate: &self.gate, proj: &self.proj, rows_per_sample: self.rows_per_sample };
        ops::lora_shrink(gpu, &d, &self.x, &self.a, Some(inj), &mut self.z)?;
        ops::lora_expand(gpu, &d, &self.z, &self.b, 2.0, &mut self.y, true)?;
        self.lora_backward_ours(gpu)
    }

    fn lora_backward_ours(&mut self, gpu: &Gpu) -> Result<()> {
        // The adapter half of ops::lora_backward (the bf16 base dx GEMM is common to both).
        let d = self.d;
        ops::lora_lowrank_backward(
            gpu,
            &d,
            &self.dy,
            &self.x,
            &self.b,
            &self.z,
            2.0,
            Some(&mut self.da),
            Some(&mut self.db),
            &mut self.dz,
        )?;
        ops::lora_expand_dx(gpu, &d, &self.dz, &self.a, None, &mut self.dx)
    }

    /// Baseline: the same with cuBLAS fp32 GEMMs and cuBLAS element-wise ops.
    pub fn lora_baseline(&mut self, gpu: &Gpu) -> Result<()> {
        let d = self.d;
        let (n, r) = (d.rows, d.rank);
        blas::gemm_f32(gpu, false, true, n, r, d.d_in, 1.0, &self.x, &self.a, 0.0, &mut self.z)?;
        self.baseline_inject_fwd(gpu)?;
        blas::gemm_f32(gpu, false, true, n, d.d_out, r, 2.0, &self.z, &self.b, 1.0, &mut self.y)?;
        blas::gemm_f32(gpu, true, false, d.d_out, r, n, 2.0, &self.dy, &self.z, 0.0, &mut self.db)?;
        blas::gemm_f32(gpu, false, false, n, r, d.d_out, 2.0, &self.dy, &self.b, 0.0, &mut self.dz)?;
        blas::gemm_f32(gpu, true, false, r, d.d_in, n, 1.0, &self.dz, &self.x, 0.0, &mut self.da)?;
        blas::gemm_f32(gpu, false, false, n, d.d_in, r, 1.0, &self.dz, &self.a, 1.0, &mut self.dx)
    }

    /// Ours: the injection forward (fused into the shrink) + its backward.
    pub fn inject_fused(&mut self, gpu: &Gpu) -> Result<()> {
        let d = self.d;
        let inj = InjectGpu { gate: &self.gate, proj: &self.proj, rows_per_sample: self.rows_per_sample };
        ops::lora_shrink(gpu, &d, &self.x, &self.a, Some(inj), &mut self.z)?;
        ops::gated_inject_backward(gpu, &self.dz, inj, d.rows, d.rank, &mut self.dgate, &mut self.dproj)
    }

    /// Baseline: shrink GEMM, then the injection and its backward in cuBLAS.
    pub fn inject_baseline(&mut self, gpu: &Gpu) -> Result<()> {
        let d = self.d;
        blas::gemm_f32(gpu, false, true, d.rows, d.rank, d.d_in, 1.0, &self.x, &self.a, 0.0, &mut self.z)?;
        self.baseline_inject_fwd(gpu)?;
        let (t, r) = (self.rows_per_sample, d.rank);
        let samples = d.rows / t;
        // sums[b] (1 x r) = ones (1 x t) dz_b (t x r)
        blas::gemm_strided_batched_f32_raw(
            gpu,
            false,
            false,
            1,
            r,
            t,
            1.0,
            self.ones.ptr(),
            0,
            self.dz.ptr(),
            t * r,
            0.0,
            self.sums.ptr(),
            r,
            samples,
        )?;
        blas::mul_elementwise_f32_raw(gpu, self.proj.ptr(), self.sums.ptr(), self.dgate.ptr(), samples * r)?;
        blas::mul_elementwise_f32_raw(gpu, self.gate.ptr(), self.sums.ptr(), self.dproj.ptr(), samples * r)
    }

    fn baseline_inject_fwd(&mut self, gpu: &Gpu) -> Result<()> {
        let (t, r) = (self.rows_per_sample, self.d.rank);
        let samples = self.d.rows / t;
        blas::mul_elementwise_f32_raw(gpu, self.gate.ptr(), self.proj.ptr(), self.gp.ptr(), samples * r)?;
        // z_b (t x r) += ones (t x 1) gp_b (1 x r)
        blas::gemm_strided_batched_f32_raw(
            gpu,
            false,
            false,
            t,
            r,
            1,
            1.0,
            self.ones.ptr(),
            0,
            self.gp.ptr(),
            r,
            1.0,
            self.z.ptr(),
            t * r,
            samples,
        )
    }
}

/// One timed comparison.
#[derive(Clone, Debug)]
pub struct BenchResult {
    pub name: String,
    pub shape: String,
    pub ours_us: f64,
    pub baseline_us: f64,
}

impl std::fmt::Display for BenchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<24} {:<40} ours {:>9.1} us   cuBLAS baseline {:>9.1} us   speed-up x{:.2}",
            self.name,
            self.shape,
            self.ours_us,
            self.baseline_us,
            self.baseline_us / self.ours_us
        )
    }
}

/// Mean microseconds per call of `f` over `iters` calls, after `warmup` (synchronised).
pub fn time_us(gpu: &Gpu, warmup: usize, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    gpu.synchronize()?;
    let t = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    gpu.synchronize()?;
    Ok(t.elapsed().as_secs_f64() * 1e6 / iters.max(1) as f64)
}

/// The shapes benchmarked: SmolLM2-135M's q projection (8 x 256 tokens, 576 -> 576, r 16) and
/// a LLaMA-7B projection (8 x 512 tokens, 4096 -> 4096, r 16).
pub fn shapes() -> Vec<(LoraDims, usize)> {
    vec![
        (LoraDims { rows: 2048, d_in: 576, d_out: 576, rank: 16 }, 256),
        (LoraDims { rows: 4096, d_in: 4096, d_out: 4096, rank: 16 }, 512),
    ]
}

/// Times both headline kernels against the baseline on [`shapes`].
pub fn run_all(gpu: &Gpu) -> Result<Vec<BenchResult>> {
    gpu.load_all()?;
    let mut out = Vec::new();
    for (d, rps) in shapes() {
        let mut lb = LoraBench::new(gpu, d, rps)?;
        let shape = format!("N={} {}->{} r={} ({} tokens/sample)", d.rows, d.d_in, d.d_out, d.rank, rps);
        let ours = time_us(gpu, 5, 50, || lb.lora_fused(gpu))?;
        let base = time_us(gpu, 5, 50, || lb.lora_baseline(gpu))?;
        out.push(BenchResult {
            name: "lora_lowrank_fwd_bwd".into(),
            shape: shape.clone(),
            ours_us: ours,
            baseline_us: base,
        });
        let ours = time_us(gpu, 5, 50, || lb.inject_fused(gpu))?;
        let base = time_us(gpu, 5, 50, || lb.inject_baseline(gpu))?;
        out.push(BenchResult { name: "gated_injection_fwd_bwd".into(), shape, ours_us: ours, baseline_us: base });
    }
    Ok(out)
}
