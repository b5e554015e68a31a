//! How a GPU check judges its outputs: plain functions on host slices ([`compare`],
//! [`first_difference`], [`judge`]), tested on the CPU (`checker_*`), and [`Checker`], which
//! runs each check of [`super::check`] and collects one [`CheckResult`] per compared output.
//!
//! * **Outputs are pre-filled.** Every buffer a kernel should write is filled with
//!   [`UNWRITTEN`] (a quiet NaN with a payload no computation produces) before the GPU side
//!   runs, so an element the kernel never wrote is caught even where the CPU expects 0 or NaN.
//! * **The GPU side runs twice.** The kernels are deterministic by design (fixed reduction
//!   order, no atomics), so two runs, each from fresh uploads and freshly pre-filled outputs,
//!   must agree bit for bit: a race that gives the right numbers once rarely gives the same
//!   bits twice, and memory reused from the first run cannot stand in for a missed write.
//! * **Error per element, at the output's own scale.** `|gpu - cpu| / (scale + |cpu|)` with
//!   `scale` = the output's largest finite `|cpu|` (at least [`SCALE_FLOOR`]): a test
//!   `|gpu - cpu| <= tol * (scale + |cpu|)` that means the same for an output of size 1e-5 as
//!   for one of size 1e3 (a `max(1, scale)` denominator made it an absolute 2e-5 for KL's
//!   3.6e-5 gradients, which a 55% error passed). NaN must meet NaN and an infinity the same
//!   infinity; anything else there is an infinite error.
//! * **A driver error stops the run.** After an illegal address (or any driver or cuBLAS
//!   error) the context is unusable and every later call reports the same error, so the
//!   [`Checker`] records that check as [`CheckResult::fatal`], runs nothing more, and ends with
//!   one line counting the checks it left out. A compile error or a wrapper's rejection leaves
//!   the context usable: that check fails and the others go on.

use super::runtime::Gpu;
use super::{CudaError, Result};
use std::fmt;

/// The value every output element holds before the kernel runs: a quiet NaN whose payload
/// (0x45A5A5) no arithmetic produces (the GPU's own NaN is 0x7FFFFFFF, the CPU's 0xFFC00000).
pub const UNWRITTEN: f32 = f32::from_bits(0x7FC5_A5A5);

/// The smallest scale an output's errors are measured against: an output whose CPU twin is all
/// zeros must be zeros on the GPU too.
pub const SCALE_FLOOR: f64 = 1e-30;

/// What [`compare`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// The largest per-element error, `|gpu - cpu| / (scale + |cpu|)`; infinite for a length
    /// mismatch, an unwritten element or an unmatched NaN / infinity.
    pub max_err: f64,
    /// The element it was found at (the first such, for an infinite one).
    pub worst: Option<usize>,
    /// The output's scale: its largest finite `|cpu|`, at least [`SCALE_FLOOR`].
    pub scale: f64,
    /// Why the error is infinite, in words.
    pub why: Option<String>,
}

/// Compares a GPU output with its CPU twin element by element (see the module docs).
pub fn compare(gpu: &[f32], cpu: &[f32]) -> Comparison {
    if gpu.len() != cpu.len() {
        return Comparison {
            max_err: f64::INFINITY,
            worst: None,
            scale: 0.0,
            why: Some(format!("{} elements, {} expected", gpu.len(), cpu.len())),
        };
    }
    let scale = cpu.iter().filter(|v| v.is_finite()).fold(SCALE_FLOOR, |m, &v| m.max(v.abs() as f64));
    let mut out = Comparison { max_err: 0.0, worst: None, scale, why: None };
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let (err, why) = if g.to_bits() == UNWRITTEN.to_bits() {
            (f64::INFINITY, Some(format!("[{i}] never written (still the NaN prefill), expected {c:e}")))
        } else if g.is_nan() || c.is_nan() || g.is_infinite() || c.is_infinite() {
            let same = (g.is_nan() && c.is_nan()) || g == c;
            (if same { 0.0 } else { f64::INFINITY }, (!same).then(|| format!("[{i}] is {g:e}, expected {c:e}")))
        } else {
            ((g as f64 - c as f64).abs() / (scale + (c as f64).abs()), None)
        };
        if err > out.max_err {
            out.max_err = err;
            out.worst = Some(i);
            out.why = why;
        }
    }
    out
}

/// The first element at which two runs' outputs differ in any bit (a length difference counts
/// as a difference at the shorter length).
pub fn first_difference(a: &[f32], b: &[f32]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x.to_bits() != y.to_bits()).or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// The verdict on one output.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    pub max_err: f64,
    pub ok: bool,
    /// Why it failed beyond its error figure (the runs differ, an element never written, ...).
    pub note: Option<String>,
}

/// One output of a check: its two GPU runs must be bit-identical, and the first must be within
/// `tol` of the CPU twin by [`compare`].
pub fn judge(first: &[f32], second: &[f32], cpu: &[f32], tol: f64) -> Judgement {
    let c = compare(first, cpu);
    let bits = |v: Option<&f32>| v.map_or("none".to_string(), |v| format!("{:#010x}", v.to_bits()));
    if let Some(i) = first_difference(first, second) {
        let note = format!(
            "the two GPU runs differ at [{i}] ({} vs {}): a race or an unwritten element",
            bits(first.get(i)),
            bits(second.get(i))
        );
        return Judgement { max_err: c.max_err, ok: false, note: Some(note) };
    }
    let worst = match (c.worst, c.why) {
        (_, Some(why)) => Some(why),
        (Some(i), None) if c.max_err > tol => {
            Some(format!("worst [{i}]: {:e} vs {:e} (output scale {:.1e})", first[i], cpu[i], c.scale))
        }
        _ => None,
    };
    Judgement { max_err: c.max_err, ok: c.max_err <= tol, note: worst }
}

/// One comparison: which kernel, on what shape, how far off, against what tolerance.
#[derive(Clone, Debug, Default)]
pub struct CheckResult {
    pub name: String,
    pub shape: String,
    pub max_err: f64,
    pub tol: f64,
    pub ok: bool,
    /// Set when the GPU side failed outright (a launch, compile or driver error).
    pub error: Option<String>,
    /// That error came from the driver or cuBLAS: the context may be dead, so the checks
    /// stopped here.
    pub fatal: bool,
    /// Why a comparison failed beyond its error figure.
    pub note: Option<String>,
    /// Non-zero on the one line that stands for the checks left out after a fatal error.
    pub not_run: usize,
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.not_run > 0 {
            return write!(f, "SKIP {} later check(s) not run: {}", self.not_run, self.shape);
        }
        match &self.error {
            Some(e) if self.fatal => {
                write!(f, "FAIL {:<28} {:<34} driver error, checks stopped here: {e}", self.name, self.shape)
            }
            Some(e) => write!(f, "FAIL {:<28} {:<34} error: {e}", self.name, self.shape),
            None => {
                write!(
                    f,
                    "{} {:<28} {:<34} max err {:.2e} (tol {:.1e})",
                    if self.ok { "ok  " } else { "FAIL" },
                    self.name,
                    self.shape,
                    self.max_err,
                    self.tol
                )?;
                match &self.note {
                    Some(n) if !self.ok => write!(f, ": {n}"),
                    _ => Ok(()),
                }
            }
        }
    }
}

/// The check whose driver error stopped the run, if one did.
pub fn stopped_at(results: &[CheckResult]) -> Option<&CheckResult> {
    results.iter().find(|r| r.fatal)
}

/// Whether `e` leaves the context in doubt: a driver error (an illegal address, a launch
/// failure, ... all sticky) or a cuBLAS error (which a dead context also gives).
pub fn is_fatal(e: &CudaError) -> bool {
    matches!(e, CudaError::Driver(_) | CudaError::Cublas(_))
}

/// What the checks run on: the GPU, or a stand-in in the unit tests.
pub trait Device {
    /// Waits for queued work, surfacing asynchronous errors.
    fn sync(&self) -> Result<()>;
}

impl Device for Gpu {
    fn sync(&self) -> Result<()> {
        self.synchronize()
    }
}

/// Named CPU outputs, in the order the GPU side returns its own.
pub type Expected = Vec<(&'static str, Vec<f32>)>;

/// Runs checks on `dev` and collects their results (see the module docs).
pub struct Checker<'d, D> {
    dev: &'d D,
    results: Vec<CheckResult>,
    /// `name (shape)` of the check whose driver error stopped the run.
    stopped: Option<String>,
    not_run: usize,
    /// Checks whose largest buffer exceeds this many elements are left out
    /// (`ECHO_CHECK_MAX_ELEMS`, for a run under compute-sanitizer).
    max_elems: usize,
    left_out: usize,
}

impl<'d, D: Device> Checker<'d, D> {
    pub fn new(dev: &'d D) -> Self {
        let max_elems =
            std::env::var("ECHO_CHECK_MAX_ELEMS").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(usize::MAX);
        Self::with_limit(dev, max_elems)
    }

    pub fn with_limit(dev: &'d D, max_elems: usize) -> Self {
        Checker { dev, results: Vec::new(), stopped: None, not_run: 0, max_elems, left_out: 0 }
    }

    /// True (and counted) when a check whose largest buffer holds `elems` elements is over the
    /// size limit; the check then returns without running.
    pub fn too_large(&mut self, elems: usize) -> bool {
        let over = elems > self.max_elems;
        self.left_out += over as usize;
        over
    }

    /// Runs one check: `gpu` twice (it uploads its inputs, fills its outputs with
    /// [`UNWRITTEN`], launches, and downloads the outputs in the order of `cpu`'s), the device
    /// synchronised after each run, then `cpu` once; one result per output. Nothing runs once
    /// a driver error has stopped the checks.
    pub fn run(
        &mut self,
        name: &str,
        shape: String,
        tol: f64,
        cpu: impl FnOnce() -> Expected,
        gpu: impl Fn(&D) -> Result<Vec<Vec<f32>>>,
    ) {
        if self.stopped.is_some() {
            self.not_run += 1;
            return;
        }
        let mut runs = Vec::with_capacity(2);
        for _ in 0..2 {
            match gpu(self.dev).and_then(|r| self.dev.sync().map(|()| r)) {
                Ok(r) => runs.push(r),
                Err(e) => {
                    let fatal = is_fatal(&e);
                    if fatal {
                        self.stopped = Some(format!("{name} ({shape})"));
                    }
                    let error = Some(e.to_string());
                    self.results.push(CheckResult {
                        name: name.into(),
                        shape,
                        max_err: f64::INFINITY,
                        tol,
                        error,
                        fatal,
                        ..Default::default()
                    });
                    return;
                }
            }
        }
        let second = runs.pop().unwrap_or_default();
        let first = runs.pop().unwrap_or_default();
        let expected = cpu();
        assert!(
            first.len() == expected.len() && second.len() == expected.len(),
            "check {name}: the GPU side returned {} outputs, the CPU side {}",
            first.len(),
            expected.len()
        );
        for ((what, c), (g1, g2)) in expected.into_iter().zip(first.iter().zip(&second)) {
            let j = judge(g1, g2, &c, tol);
            self.results.push(CheckResult {
                name: if what.is_empty() { name.to_string() } else { format!("{name}.{what}") },
                shape: shape.clone(),
                max_err: j.max_err,
                tol,
                ok: j.ok,
                note: j.note,
                ..Default::default()
            });
        }
    }

    /// The results, ended by one line counting the checks a driver error left out.
    pub fn finish(mut self) -> Vec<CheckResult> {
        if self.left_out > 0 {
            eprintln!(
                "ECHO_CHECK_MAX_ELEMS={}: {} check(s) over that many elements left out",
                self.max_elems, self.left_out
            );
        }
        if let Some(at) = &self.stopped {
            self.results.push(CheckResult {
                name: "not run".into(),
                shape: format!("the driver error in {at} stopped the checks (the context is unusable after it)"),
                max_err: f64::INFINITY,
                not_run: self.not_run.max(1),
                ..Default::default()
            });
        }
        self.results
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudarc::cublas::result::CublasError;
    use cudarc::cublas::sys::cublasStatus_t;
    use cudarc::driver::sys::CUresult;
    use cudarc::driver::DriverError;

    /// A cuBLAS execution failure, what a dead context gives cuBLAS. (A `DriverError` is the
    /// usual case, but formatting one calls into libcuda, which this machine may not have.)
    fn fault() -> CudaError {
        CublasError(cublasStatus_t::CUBLAS_STATUS_EXECUTION_FAILED).into()
    }

    /// KL's student gradient at 5 x 49159 has max |cpu| 3.6e-5 and a tolerance of 2e-5.
    fn kl_like() -> Vec<f32> {
        (0..1000).map(|i| 3.6e-5 * ((i as f32 * 0.37).sin())).collect()
    }

    #[test]
    fn checker_rejects_a_55_percent_error_at_1e_5() {
        let cpu = kl_like();
        let gpu: Vec<f32> = cpu.iter().map(|v| v * 1.55).collect();
        // What the old `max |gpu - cpu| / max(1, max |cpu|)` measured: under the tolerance.
        let old = cpu.iter().zip(&gpu).map(|(c, g)| (g - c).abs() as f64).fold(0.0, f64::max);
        assert!(old < 2e-5, "{old}");
        let j = judge(&gpu, &gpu, &cpu, 2e-5);
        assert!(!j.ok && j.max_err > 0.2, "{j:?}");
        assert!(j.note.as_deref().is_some_and(|n| n.contains("worst")), "{j:?}");
        // One element 55% off is enough.
        let mut one = cpu.clone();
        let i = (0..cpu.len()).max_by(|&a, &b| cpu[a].abs().total_cmp(&cpu[b].abs())).unwrap();
        one[i] *= 1.55;
        assert!(!judge(&one, &one, &cpu, 2e-5).ok);
    }

    #[test]
    fn checker_rejects_a_nan_left_in_an_unwritten_element() {
        let mut cpu = kl_like();
        cpu[17] = 0.0; // e.g. an ignored CE row, a padding key, an all-masked sample
        cpu[18] = f32::NAN; // an expected NaN does not excuse an unwritten element either
        for at in [17, 18, 500] {
            let mut gpu = cpu.clone();
            gpu[at] = UNWRITTEN;
            let j = judge(&gpu, &gpu, &cpu, 1e-5);
            assert!(!j.ok && j.max_err.is_infinite(), "{at}: {j:?}");
            assert!(j.note.as_deref().is_some_and(|n| n.contains(&format!("[{at}] never written"))), "{j:?}");
        }
        // A computed NaN where the CPU has one is fine; one where it has a number is not.
        assert!(judge(&cpu, &cpu, &cpu, 0.0).ok);
        let mut gpu = cpu.clone();
        gpu[17] = f32::NAN;
        assert!(!judge(&gpu, &gpu, &cpu, 1e-5).ok);
    }

    #[test]
    fn checker_rejects_two_runs_differing_in_one_bit() {
        let cpu = kl_like();
        let mut second = cpu.clone();
        second[123] = f32::from_bits(second[123].to_bits() ^ 1);
        // Each run alone is well within the tolerance.
        assert!(compare(&second, &cpu).max_err < 1e-6);
        let j = judge(&cpu, &second, &cpu, 1e-5);
        assert!(!j.ok, "{j:?}");
        assert!(j.note.as_deref().is_some_and(|n| n.contains("differ at [123]")), "{j:?}");
        // Different NaN payloads, a sign of zero and a length count as differences too.
        assert_eq!(first_difference(&[f32::NAN], &[f32::from_bits(0x7FFF_FFFF)]), Some(0));
        assert_eq!(first_difference(&[1.0, 0.0], &[1.0, -0.0]), Some(1));
        assert_eq!(first_difference(&[1.0], &[1.0, 2.0]), Some(1));
        assert_eq!(first_difference(&cpu, &cpu), None);
    }

    #[test]
    fn checker_accepts_rounding_noise_at_any_scale() {
        for scale in [1e-6f32, 1.0, 1e4] {
            let cpu: Vec<f32> = kl_like().iter().map(|v| v / 3.6e-5 * scale).collect();
            // Two ulps on every element: what another summation order gives.
            let gpu: Vec<f32> = cpu.iter().map(|v| f32::from_bits(v.to_bits() + 2)).collect();
            let j = judge(&gpu, &gpu, &cpu, 1e-6);
            assert!(j.ok && j.max_err > 0.0 && j.note.is_none(), "{scale}: {j:?}");
        }
        // Equal outputs, including NaN (any payload), infinities and signed zeros.
        let v = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, 1.5];
        let w = [f32::from_bits(0x7FFF_FFFF), f32::INFINITY, f32::NEG_INFINITY, -0.0, 1.5];
        assert_eq!(compare(&w, &v).max_err, 0.0);
        assert!(judge(&[], &[], &[], 0.0).ok);
    }

    #[test]
    fn checker_error_is_relative_plus_absolute_per_element() {
        // scale = max |cpu| = 4; element 0: |4.5 - 4| / (4 + 4); element 1: |0.1 - 0| / (4 + 0).
        let c = compare(&[4.5, 0.0], &[4.0, 0.0]);
        assert_eq!((c.max_err, c.worst, c.scale), (0.0625, Some(0), 4.0));
        let c = compare(&[4.0, 0.1], &[4.0, 0.0]);
        assert!((c.max_err - 0.1f32 as f64 / 4.0).abs() < 1e-12 && c.worst == Some(1), "{c:?}");
        // An all-zero expectation must be met with zeros.
        assert!(compare(&[0.0, 1e-12], &[0.0, 0.0]).max_err > 1e6);
        // Infinities must match, lengths must match.
        assert!(compare(&[f32::INFINITY], &[f32::NEG_INFINITY]).max_err.is_infinite());
        assert!(compare(&[1.0], &[f32::INFINITY]).max_err.is_infinite());
        let c = compare(&[1.0], &[1.0, 2.0]);
        assert!(c.max_err.is_infinite() && c.why.as_deref() == Some("1 elements, 2 expected"));
    }

    /// A stand-in device whose "launches" are the closures below; `sync` can fail too.
    struct Fake {
        sync_error: bool,
    }

    impl Device for Fake {
        fn sync(&self) -> Result<()> {
            match self.sync_error {
                true => Err(fault()),
                false => Ok(()),
            }
        }
    }

    fn expected() -> Expected {
        vec![("y", vec![1.0, 2.0])]
    }

    #[test]
    fn checker_runs_the_gpu_side_twice_and_stops_at_the_first_driver_error() {
        let dev = Fake { sync_error: false };
        let mut c = Checker::with_limit(&dev, usize::MAX);
        let calls = std::cell::Cell::new(0);
        c.run("good", "n=2".into(), 0.0, expected, |_| {
            calls.set(calls.get() + 1);
            Ok(vec![vec![1.0, 2.0]])
        });
        assert_eq!(calls.get(), 2, "the GPU side runs twice");
        // A kernel whose second run differs (a race) fails though each run is close enough.
        c.run("racy", "n=2".into(), 1e-3, expected, |_| {
            calls.set(calls.get() + 1);
            Ok(vec![vec![1.0, if calls.get() % 2 == 0 { 2.0 } else { 2.0001 }]])
        });
        // A wrapper's rejection is not fatal: the next check still runs.
        c.run("rejected", "n=2".into(), 0.0, expected, |_| Err(CudaError::Unsupported("bad length".into())));
        c.run("after-rejected", "n=2".into(), 0.0, expected, |_| Ok(vec![vec![1.0, 2.0]]));
        // An illegal address is: nothing after it runs, neither GPU nor CPU side.
        assert!(is_fatal(&DriverError(CUresult::CUDA_ERROR_ILLEGAL_ADDRESS).into()));
        assert!(!is_fatal(&CudaError::Compile { file: "x.cu".into(), arch: "sm_90".into(), log: String::new() }));
        c.run("faulting", "n=2".into(), 0.0, expected, |_| Err(fault()));
        let ran_after = std::cell::Cell::new(false);
        for _ in 0..3 {
            c.run(
                "later",
                "n=2".into(),
                0.0,
                || {
                    ran_after.set(true);
                    expected()
                },
                |_| {
                    ran_after.set(true);
                    Ok(vec![vec![1.0, 2.0]])
                },
            );
        }
        let r = c.finish();
        assert!(!ran_after.get());
        let names: Vec<&str> = r.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["good.y", "racy.y", "rejected", "after-rejected.y", "faulting", "not run"]);
        let ok: Vec<bool> = r.iter().map(|r| r.ok).collect();
        assert_eq!(ok, [true, false, false, true, false, false]);
        assert!(r[1].note.as_deref().is_some_and(|n| n.contains("differ at [1]")), "{}", r[1]);
        assert!(!r[2].fatal && r[4].fatal);
        assert_eq!(stopped_at(&r).map(|s| s.name.as_str()), Some("faulting"));
        assert_eq!(r[5].not_run, 3);
        assert!(r[5].to_string().contains("3 later check(s) not run") && r[5].to_string().contains("faulting (n=2)"));
        assert!(r[4].to_string().contains("checks stopped here"), "{}", r[4]);

        // A fault that surfaces only at the synchronisation after the launch stops it as well.
        let dev = Fake { sync_error: true };
        let mut c = Checker::with_limit(&dev, usize::MAX);
        c.run("async-fault", "n=2".into(), 0.0, expected, |_| Ok(vec![vec![1.0, 2.0]]));
        c.run("later", "n=2".into(), 0.0, expected, |_| Ok(vec![vec![1.0, 2.0]]));
        let r = c.finish();
        assert_eq!(stopped_at(&r).map(|s| s.name.as_str()), Some("async-fault"));
        assert_eq!(r.last().map(|s| s.not_run), Some(1));
    }

    #[test]
    fn checker_size_limit_leaves_large_checks_out() {
        let dev = Fake { sync_error: false };
        let mut c = Checker::with_limit(&dev, 100);
        assert!(!c.too_large(100) && c.too_large(101));
        assert_eq!(c.left_out, 1);
    }
}
