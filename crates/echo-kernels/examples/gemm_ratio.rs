//! Interleaved timing of the AVX2 GEMM (`cpu::gemm_avx2`) against the `gemm` crate path (what
//! `cpu::gemm::gemm` runs where it does not dispatch to the AVX2 kernel): both run the same
//! problem alternately, many short rounds, and the table gives the ratio (above 1: the AVX2
//! kernel is faster) as the median of the per-round ratios and as the ratio of the best rounds.
//! Made for a busy machine: ratios from the same run stay meaningful when absolute times do not.
//! The last column says which path `cpu::gemm::gemm` takes for the shape.
//!
//! ```sh
//! cargo run --release -p echo-kernels --example gemm_ratio [-- issue|train|small|all|MxKxN[nn|nt|tn|tt] [rounds [serial]]]
//! ```

use echo_kernels::cpu::gemm::{MatRef, Par};
use echo_kernels::cpu::gemm_avx2;
use std::time::Instant;

/// The `gemm` crate call exactly as `cpu::gemm::gemm` makes it.
#[allow(clippy::too_many_arguments)]
fn crate_gemm(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    c_rs: usize,
    a: MatRef,
    b: MatRef,
    alpha: f32,
    acc: bool,
    par: Par,
) {
    let parallelism = match par {
        Par::Serial => gemm::Parallelism::None,
        Par::Rayon => match rayon::current_num_threads() {
            0 | 1 => gemm::Parallelism::None,
            t => gemm::Parallelism::Rayon(t),
        },
    };
    // SAFETY: the views are dense and sized for these dimensions by `main`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            c_rs as isize,
            acc,
            a.data.as_ptr().add(a.offset),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr().add(b.offset),
            b.cs as isize,
            b.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            parallelism,
        )
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let set = args.get(1).map(String::as_str).unwrap_or("all");
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(21);
    // A third argument `serial` runs every case on one thread.
    let force_serial = args.get(3).is_some_and(|s| s == "serial");
    // (name, m, k, n, ta, tb, par)
    let mut cases: Vec<(String, usize, usize, usize, bool, bool, Par)> = Vec::new();
    let r = Par::Rayon;
    if set == "issue" || set == "all" {
        cases.push(("issue xW^T".into(), 1024, 576, 1536, false, true, r));
        cases.push(("issue xW^T".into(), 1024, 1536, 576, false, true, r));
    }
    if set == "train" || set == "all" {
        let t = 1700;
        for (i, o) in [(576, 576), (576, 192), (576, 1536), (1536, 576)] {
            cases.push((format!("fwd x W^T  in{i} out{o}"), t, i, o, false, true, r));
            cases.push((format!("dx = dy W  in{i} out{o}"), t, o, i, false, false, r));
            cases.push((format!("dW = dy^T x in{i} out{o}"), o, t, i, true, false, r));
        }
    }
    // Or one shape: `MxKxN` with optional `t` suffixes for transposed A / B, e.g. `576x1700x576tn`.
    if set.starts_with(|ch: char| ch.is_ascii_digit()) {
        let dims: Vec<&str> = set.split('x').collect();
        let last = dims[2].trim_end_matches(['t', 'n']);
        let flags = &dims[2][last.len()..];
        let (m, k, n) = (dims[0].parse().unwrap(), dims[1].parse().unwrap(), last.parse().unwrap());
        cases.push((set.to_string(), m, k, n, flags.starts_with('t'), flags.ends_with('t') && flags.len() == 2, r));
    }
    if set == "small" || set == "all" {
        let s = Par::Serial;
        for (name, m, k, n, ta, tb, p) in [
            ("attn S=QK^T T256 D64", 256, 64, 256, false, true, s),
            ("attn O=PV T256 D64", 256, 256, 64, false, false, s),
            ("attn dK=dS^T Q", 256, 256, 64, true, false, s),
            ("lora z=xA^T r32", 1700, 576, 32, false, true, r),
            ("lora y+=zB^T r32", 1700, 32, 576, false, true, r),
            ("lora dA=dz^T x", 32, 1700, 576, true, false, r),
            ("lora dB=dy^T z", 576, 1700, 32, true, false, r),
            ("cube 16", 16, 16, 16, false, false, r),
            ("cube 24", 24, 24, 24, false, false, r),
            ("cube 32", 32, 32, 32, false, false, r),
            ("cube 48", 48, 48, 48, false, false, r),
            ("cube 64", 64, 64, 64, false, false, r),
            ("cube 96", 96, 96, 96, false, false, r),
            ("cube 128", 128, 128, 128, false, false, r),
            ("cube 256", 256, 256, 256, false, false, r),
            ("rows 1", 1, 576, 576, false, true, r),
            ("rows 4", 4, 576, 576, false, true, r),
            ("rows 8", 8, 576, 576, false, true, r),
            ("rows 16", 16, 576, 576, false, true, r),
            ("rows 32", 32, 576, 576, false, true, r),
            ("k 8", 1700, 8, 576, false, true, r),
            ("k 16", 1700, 16, 576, false, true, r),
            ("n 8", 1700, 576, 8, false, true, r),
            ("n 16", 1700, 576, 16, false, true, r),
        ] {
            cases.push((name.into(), m, k, n, ta, tb, p));
        }
    }
    println!(
        "threads {}, avx2+fma {}, {rounds} rounds of alternating samples; ms per call (median and best sample); \
         ratio = gemm crate time / avx2 time (above 1: avx2 faster), median of the per-round ratios and ratio of best samples",
        rayon::current_num_threads(),
        gemm_avx2::available()
    );
    println!("| case | m | k | n | ta | tb | par | crate ms med / best | avx2 ms med / best | ratio med | ratio best | dispatch |");
    println!("|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|---|");
    let mut seed = 1u32;
    let mut rnd = move || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
    };
    for (name, m, k, n, ta, tb, par) in cases {
        let par = if force_serial { Par::Serial } else { par };
        let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
        let av = MatRef::dense(&a, if ta { m } else { k }, ta);
        let bv = MatRef::dense(&b, if tb { k } else { n }, tb);
        let mut c1 = vec![0.0f32; m * n];
        let mut c2 = vec![0.0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        // Calls per sample: about 5 ms of work at ~60 GFLOP/s (short samples: a busy machine
        // then spoils single samples, which the medians and minimums shrug off).
        let iters = ((0.005 * 60e9 / flops) as usize).clamp(1, 100_000);
        let mut run = |avx2: bool| {
            let t0 = Instant::now();
            for _ in 0..iters {
                if avx2 {
                    gemm_avx2::gemm(m, n, k, &mut c1, 0, n, av, bv, 1.0, false, par);
                } else {
                    crate_gemm(m, n, k, &mut c2, n, av, bv, 1.0, false, par);
                }
            }
            t0.elapsed().as_secs_f64() / iters as f64
        };
        run(true);
        run(false);
        let (mut t_avx, mut t_crate, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..rounds {
            // Alternate which goes first, so neither always follows the other.
            let (x, y) = if i % 2 == 0 {
                let x = run(true);
                (x, run(false))
            } else {
                let y = run(false);
                (run(true), y)
            };
            t_avx.push(x);
            t_crate.push(y);
            ratios.push(y / x);
        }
        let best = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
        let (best_a, best_c) = (best(&t_avx), best(&t_crate));
        let maxdiff = c1.iter().zip(&c2).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(maxdiff < 1e-3 * (k as f32).sqrt(), "{name}: results differ by {maxdiff}");
        println!(
            "| {name} | {m} | {k} | {n} | {ta} | {tb} | {par:?} | {:.3} / {:.3} | {:.3} / {:.3} | {:.2} | {:.2} | {} |",
            median(&mut t_crate) * 1e3,
            best_c * 1e3,
            median(&mut t_avx) * 1e3,
            best_a * 1e3,
            median(&mut ratios),
            best_c / best_a,
            if gemm_avx2::use_for(m, n, k, &bv) { "avx2" } else { "crate" }
        );
    }
}
