//! Matrix multiply: our AVX2 + FMA kernel (`gemm_avx2`) where the CPU has it and the shape suits
//! it, else the `gemm` crate (AVX2/AVX-512 micro-kernels, chosen at run time).
//!
//! All matrices are f32. A matrix operand is described by its element strides so that
//! transposed operands and per-head slices of `[B, T, H, D]` tensors need no copies.

use std::cell::Cell;

/// Whether a GEMM may use the rayon pool. Kernels that already run inside a rayon task
/// (attention, per head) pass `Serial` to avoid oversubscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Par {
    Serial,
    Rayon,
}

/// A read-only strided matrix view: element (i, j) is at `data[offset + i*rs + j*cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows x cols` matrix, optionally read transposed.
    /// `transposed = true` means `data` holds the matrix's transpose in row-major order.
    pub fn dense(data: &'a [f32], cols_stored: usize, transposed: bool) -> Self {
        if transposed {
            MatRef { data, offset: 0, rs: 1, cs: cols_stored }
        } else {
            MatRef { data, offset: 0, rs: cols_stored, cs: 1 }
        }
    }

    fn check(&self, rows: usize, cols: usize, what: &str) {
        if rows == 0 || cols == 0 {
            return;
        }
        let last = self.offset + (rows - 1) * self.rs + (cols - 1) * self.cs;
        assert!(last < self.data.len(), "gemm: {what} view reaches element {last}, slice has {}", self.data.len());
    }
}

thread_local! {
    static FLOPS: Cell<u64> = const { Cell::new(0) };
}

/// Floating-point operations issued through [`gemm`] from the calling thread (instrumentation
/// for tests that must prove a GEMM is *not* done, e.g. no weight gradient for frozen weights).
pub fn thread_flops() -> u64 {
    FLOPS.with(|f| f.get())
}

/// `C = beta_c * C + alpha * op(A) op(B)` with `C` an `m x n` matrix with row stride `c_rs`
/// (unit column stride), `A` an `m x k` view and `B` a `k x n` view.
/// `accumulate = false` overwrites `C` (its old contents may be garbage).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    c_offset: usize,
    c_rs: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    alpha: f32,
    accumulate: bool,
    par: Par,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = c_offset + (m - 1) * c_rs + (n - 1);
    assert!(last < c.len(), "gemm: C view reaches element {last}, slice has {}", c.len());
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[c_offset + i * c_rs..c_offset + i * c_rs + n].fill(0.0);
            }
        }
        return;
    }
    a.check(m, k, "A");
    b.check(k, n, "B");
    FLOPS.with(|f| f.set(f.get() + 2 * (m * n * k) as u64));
    #[cfg(target_arch = "x86_64")]
    if super::gemm_avx2::use_for(m, n, k, &b) {
        super::gemm_avx2::gemm(m, n, k, c, c_offset, c_rs, a, b, alpha, accumulate, par);
        return;
    }
    let parallelism = match par {
        Par::Serial => gemm::Parallelism::None,
        Par::Rayon => match rayon::current_num_threads() {
            0 | 1 => gemm::Parallelism::None,
            t => gemm::Parallelism::Rayon(t),
        },
    };
    // SAFETY: the asserts above prove every element the views address lies inside its
    // slice; `c` is borrowed mutably, so it cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr().add(c_offset),
            1,
            c_rs as isize,
            accumulate,
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

/// Dense row-major convenience: `C[m,n] (+)= alpha * op(A) op(B)`, where `A` is stored as
/// `m x k` (or `k x m` when `ta`) and `B` as `k x n` (or `n x k` when `tb`).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    alpha: f32,
    accumulate: bool,
    par: Par,
) {
    let a_view = MatRef::dense(a, if ta { m } else { k }, ta);
    let b_view = MatRef::dense(b, if tb { k } else { n }, tb);
    gemm(m, n, k, c, 0, n, a_view, b_view, alpha, accumulate, par);
}

/// Triple-loop reference used by tests (f64 accumulation).
#[allow(clippy::too_many_arguments)]
pub fn matmul_naive(c: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize, ta: bool, tb: bool) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] };
                let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                acc += av as f64 * bv as f64;
            }
            c[i * n + j] = acc as f32;
        }
    }
}
