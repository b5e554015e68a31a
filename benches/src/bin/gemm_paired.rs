//! Our f32 GEMM against OpenBLAS in one process, interleaved call by call: the GEMM shapes of
//! `benches/benches/gemm.rs` (`C = X W^T`, all cores), timed in paired rounds
//! ([`echo_benches::paired`]). `cargo xtask bench` runs it with the OpenBLAS library numpy
//! loads (`numpy_reference.py --openblas-path`), so the reference is the same library as the
//! numpy column of its table.
//!
//! ```text
//! gemm_paired --openblas <libopenblas.so> [--rounds 100] [--warm-up-secs 1]
//! ```
//!
//! Prints one JSON line describing the library, then one per shape:
//! `{"name", "flops", "rounds", "ours_ms", "reference_ms", "ratio_q1", "ratio", "ratio_q3",
//! "max_abs_diff", "ours_ms_first_second", "reference_ms_first_second"}` with times the median
//! over rounds, `ratio` the median per-round `reference time / our time`, and the last two each
//! side's median when it ran first in its round and when it ran second.
//!
//! OpenBLAS runs with as many threads as our rayon pool, and with `OPENBLAS_THREAD_TIMEOUT=4`
//! (set here before the library is loaded): by default its idle worker threads spin for about
//! 2^28 cycles (~0.1 s) after each call, which would occupy the cores during our next call and
//! make the comparison one of OpenBLAS against a half-machine. With the short timeout they
//! sleep at once, and each OpenBLAS call pays a thread wake-up (microseconds, against calls of
//! 10+ ms), as each of ours does.

use anyhow::{bail, Context, Result};
use echo_benches::paired::{quartiles, Paired};
use echo_benches::{random_f32, GEMM_SHAPES};
use echo_kernels::cpu::gemm::{matmul, Par};
use std::ffi::{c_char, c_int, CStr};
use std::hint::black_box;
use std::time::{Duration, Instant};

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// `cblas_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)` with
/// integers of type `I`.
type CblasSgemm<I> =
    unsafe extern "C" fn(c_int, c_int, c_int, I, I, I, f32, *const f32, I, *const f32, I, f32, *mut f32, I);

/// `cblas_sgemm` with 64-bit (ILP64, numpy's scipy-openblas64) or 32-bit integers.
enum Sgemm<'lib> {
    I64(libloading::Symbol<'lib, CblasSgemm<i64>>),
    I32(libloading::Symbol<'lib, CblasSgemm<i32>>),
}

/// Symbol prefixes/suffixes of the OpenBLAS builds we know: numpy's wheels (scipy-openblas64),
/// a plain ILP64 build, a plain LP64 build.
const NAMINGS: [(&str, &str); 3] = [("scipy_", "64_"), ("", "64_"), ("", "")];

struct OpenBlas {
    lib: libloading::Library,
    prefix: &'static str,
    suffix: &'static str,
}

impl OpenBlas {
    fn load(path: &str) -> Result<OpenBlas> {
        // SAFETY: loading OpenBLAS runs its initialisers, which only read the environment and
        // start its thread pool.
        let lib = unsafe { libloading::Library::new(path) }.with_context(|| format!("loading OpenBLAS from {path}"))?;
        for (prefix, suffix) in NAMINGS {
            let name = format!("{prefix}cblas_sgemm{suffix}");
            // SAFETY: only probing whether the symbol exists.
            if unsafe { lib.get::<*const ()>(name.as_bytes()) }.is_ok() {
                return Ok(OpenBlas { lib, prefix, suffix });
            }
        }
        bail!("{path}: no cblas_sgemm symbol (tried the scipy_*64_, *64_ and plain namings)")
    }

    fn name(&self, base: &str) -> String {
        format!("{}{base}{}", self.prefix, self.suffix)
    }

    fn sgemm(&self) -> Result<Sgemm<'_>> {
        let name = self.name("cblas_sgemm");
        // SAFETY: the signature is cblas_sgemm's, with the integer width of this naming.
        unsafe {
            Ok(if self.suffix == "64_" {
                Sgemm::I64(self.lib.get(name.as_bytes())?)
            } else {
                Sgemm::I32(self.lib.get(name.as_bytes())?)
            })
        }
    }

    /// `openblas_<what>` (`openblas_get_corename`, ...) under this naming.
    fn extension<T>(&self, what: &str) -> Option<libloading::Symbol<'_, T>> {
        let base = if self.prefix == "scipy_" { format!("scipy_openblas_{what}") } else { format!("openblas_{what}") };
        let name = format!("{base}{}", self.suffix);
        // SAFETY: callers give the documented OpenBLAS signature for `what`.
        unsafe { self.lib.get(name.as_bytes()).ok() }
    }
}

/// `C[m, n] = X[m, k] W[n, k]^T` through OpenBLAS.
fn reference_gemm(sgemm: &Sgemm<'_>, x: &[f32], w: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    // SAFETY: x is m x k, w is n x k, c is m x n, all row-major and exactly that long (asserted
    // by the caller's construction).
    unsafe {
        match sgemm {
            Sgemm::I64(f) => f(
                ROW_MAJOR,
                NO_TRANS,
                TRANS,
                m as i64,
                n as i64,
                k as i64,
                1.0,
                x.as_ptr(),
                k as i64,
                w.as_ptr(),
                k as i64,
                0.0,
                c.as_mut_ptr(),
                n as i64,
            ),
            Sgemm::I32(f) => f(
                ROW_MAJOR,
                NO_TRANS,
                TRANS,
                m as i32,
                n as i32,
                k as i32,
                1.0,
                x.as_ptr(),
                k as i32,
                w.as_ptr(),
                k as i32,
                0.0,
                c.as_mut_ptr(),
                n as i32,
            ),
        }
    }
}

struct Args {
    openblas: String,
    rounds: usize,
    warm_up: Duration,
}

fn parse_args() -> Result<Args> {
    let mut args = Args { openblas: String::new(), rounds: 100, warm_up: Duration::from_secs(1) };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--openblas" => args.openblas = value()?,
            "--rounds" => args.rounds = value()?.parse().context("--rounds: expected a whole number")?,
            "--warm-up-secs" => {
                args.warm_up = Duration::from_secs_f64(value()?.parse().context("--warm-up-secs: expected seconds")?)
            }
            "-h" | "--help" => {
                println!("gemm_paired --openblas <libopenblas.so> [--rounds 100] [--warm-up-secs 1]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other} (try --help)"),
        }
    }
    if args.openblas.is_empty() {
        bail!("--openblas <path to the OpenBLAS shared library> is required");
    }
    if args.rounds < 4 {
        bail!("--rounds {}: at least 4 are needed for quartiles", args.rounds);
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    // Before the library is loaded: OpenBLAS reads it once, when its thread pool starts.
    std::env::set_var("OPENBLAS_THREAD_TIMEOUT", "4");
    let blas = OpenBlas::load(&args.openblas)?;
    let threads = rayon::current_num_threads();
    if let Some(set) = blas.extension::<unsafe extern "C" fn(c_int)>("set_num_threads") {
        // SAFETY: openblas_set_num_threads(int).
        unsafe { set(threads as c_int) };
    }
    // SAFETY (both): openblas_get_num_threads(void) -> int, openblas_get_corename(void) -> char*.
    let blas_threads = blas.extension::<unsafe extern "C" fn() -> c_int>("get_num_threads").map(|f| unsafe { f() });
    let core = blas
        .extension::<unsafe extern "C" fn() -> *const c_char>("get_corename")
        .map(|f| unsafe { CStr::from_ptr(f()) }.to_string_lossy().into_owned());
    println!(
        "{}",
        serde_json::json!({"openblas": {"path": args.openblas, "symbol": blas.name("cblas_sgemm"), "core": core, "threads": blas_threads, "ours_threads": threads}})
    );
    let sgemm = blas.sgemm()?;

    for s in GEMM_SHAPES {
        // The inputs of benches/benches/gemm.rs.
        let x = random_f32(s.m * s.k, 1.0, 1);
        let w = random_f32(s.n * s.k, 1.0 / (s.k as f32).sqrt(), 2);
        let mut ours = vec![0.0f32; s.m * s.n];
        let mut reference = vec![0.0f32; s.m * s.n];
        let call_ours =
            |c: &mut [f32]| matmul(c, black_box(&x), black_box(&w), s.m, s.k, s.n, false, true, 1.0, false, Par::Rayon);
        let call_ref = |c: &mut [f32]| reference_gemm(&sgemm, black_box(&x), black_box(&w), c, s.m, s.k, s.n);
        let start = Instant::now();
        while start.elapsed() < args.warm_up {
            call_ours(&mut ours);
            call_ref(&mut reference);
        }
        // Both must compute the same product: a wrong call into the library would time nothing.
        let max_abs_diff = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        if max_abs_diff > 1e-3 {
            bail!("gemm/{}: ours and OpenBLAS differ by up to {max_abs_diff}: the library call is wrong", s.id());
        }
        let p = Paired::run(args.rounds, || call_ours(&mut ours), || call_ref(&mut reference));
        let [q1, ratio, q3] = quartiles(&p.ratios());
        let [ours_by_position, reference_by_position] = p.by_position();
        println!(
            "{}",
            serde_json::json!({
                "name": format!("gemm/{}", s.id()), "flops": s.flops(), "rounds": args.rounds,
                "ours_ms": quartiles(&p.ours)[1] * 1e3, "reference_ms": quartiles(&p.reference)[1] * 1e3,
                "ratio_q1": q1, "ratio": ratio, "ratio_q3": q3, "max_abs_diff": max_abs_diff,
                "ours_ms_first_second": ours_by_position.map(|t| t * 1e3),
                "reference_ms_first_second": reference_by_position.map(|t| t * 1e3),
            })
        );
    }
    Ok(())
}
