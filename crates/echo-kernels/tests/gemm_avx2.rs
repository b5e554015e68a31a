//! The AVX2 + FMA GEMM (`cpu::gemm_avx2`) against f64-accumulated references: every transpose
//! combination, strided and offset views, accumulate on and off, alpha != 1, shapes that are
//! not multiples of any tile or block, k = 0, `Serial` and `Rayon`; and the same through the
//! dispatching `cpu::gemm::gemm`. Skipped (with a message) on CPUs without AVX2 + FMA.

#![cfg(target_arch = "x86_64")]

use echo_kernels::cpu::gemm::{gemm, matmul, matmul_naive, MatRef, Par};
use echo_kernels::cpu::gemm_avx2;

/// Deterministic uniform values in [-1, 1) (splitmix64).
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn have_avx2() -> bool {
    let ok = gemm_avx2::available();
    if !ok {
        eprintln!("skipped: this CPU lacks AVX2 or FMA");
    }
    ok
}

/// Which kernel a check runs.
#[derive(Clone, Copy, Debug)]
enum Entry {
    /// `gemm_avx2::gemm` itself, whatever the size.
    Avx2,
    /// `gemm::gemm`, which picks a path.
    Dispatch,
}

#[allow(clippy::too_many_arguments)]
fn call(
    e: Entry,
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    co: usize,
    crs: usize,
    a: MatRef,
    b: MatRef,
    alpha: f32,
    acc: bool,
    par: Par,
) {
    match e {
        Entry::Avx2 => gemm_avx2::gemm(m, n, k, c, co, crs, a, b, alpha, acc, par),
        Entry::Dispatch => gemm(m, n, k, c, co, crs, a, b, alpha, acc, par),
    }
}

/// `got` against `c0 (if acc) + alpha * dot`, with `dot` and `abs = sum |a||b|` in f64:
/// f32 accumulation error is bounded by a few ulps of `abs`.
fn assert_close(got: f32, dot: f64, abs: f64, c0: f32, alpha: f32, acc: bool, what: &str) {
    let want = if acc { c0 as f64 } else { 0.0 } + alpha as f64 * dot;
    let scale = alpha.abs() as f64 * abs + if acc { (c0 as f64).abs() } else { 0.0 };
    let tol = 1e-6 * scale + 1e-30;
    assert!(got.is_finite() && (got as f64 - want).abs() <= tol, "{what}: got {got}, want {want} (tol {tol:e})");
}

/// Dense row-major operands in every transpose combination, compared with `matmul_naive`.
#[allow(clippy::too_many_arguments)]
fn check_dense(
    e: Entry,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    alpha: f32,
    acc: bool,
    par: Par,
    g: &mut Gen,
) {
    let a = g.vec(m * k);
    let b = g.vec(k * n);
    let c0 = g.vec(m * n);
    let mut dot = vec![0.0; m * n];
    matmul_naive(&mut dot, &a, &b, m, k, n, ta, tb);
    let (aa, ba): (Vec<f32>, Vec<f32>) = (a.iter().map(|v| v.abs()).collect(), b.iter().map(|v| v.abs()).collect());
    let mut abs = vec![0.0; m * n];
    matmul_naive(&mut abs, &aa, &ba, m, k, n, ta, tb);
    // Garbage (NaN) in C must not leak into an overwrite.
    let mut c = if acc { c0.clone() } else { vec![f32::NAN; m * n] };
    let av = MatRef::dense(&a, if ta { m } else { k }, ta);
    let bv = MatRef::dense(&b, if tb { k } else { n }, tb);
    call(e, m, n, k, &mut c, 0, n, av, bv, alpha, acc, par);
    let what = format!("{e:?} m{m} k{k} n{n} ta{ta} tb{tb} alpha{alpha} acc{acc} {par:?}");
    for i in 0..m * n {
        // `matmul_naive` rounds its f64 sums to f32: half an ulp, well inside the tolerance.
        assert_close(c[i], dot[i] as f64, abs[i] as f64, c0[i], alpha, acc, &format!("{what} [{i}]"));
    }
}

/// Shapes that are multiples of nothing (MR 6, NR 16, k blocks of <= 256, row blocks of <= 144),
/// plus the GEMV-like and k = 1 shapes; (m, k, n). The last four are above the
/// threading threshold and between them take every path: A packed and read in place, B packed
/// and read in place, a single row block cut by columns, and two column blocks (k x n over
/// 2^20 floats).
const SHAPES: [(usize, usize, usize); 16] = [
    (1, 1, 1),
    (7, 13, 5),
    (97, 61, 300),
    (1, 576, 1536),
    (1024, 1, 3),
    (6, 16, 16),
    (12, 256, 32),
    (150, 300, 40),
    (33, 577, 47),
    (5, 20, 4100),
    (289, 40, 17),
    (64, 64, 64),
    (97, 300, 301),
    (20, 1000, 300),
    (600, 600, 60),
    (7, 600, 1800),
];

#[test]
fn dense_all_transposes() {
    if !have_avx2() {
        return;
    }
    let mut g = Gen(1);
    let mut case = 0usize;
    for &(m, k, n) in &SHAPES {
        for ta in [false, true] {
            for tb in [false, true] {
                for e in [Entry::Avx2, Entry::Dispatch] {
                    // Cycle the remaining options so every shape sees each of them.
                    let acc = case % 2 == 1;
                    let par = [Par::Serial, Par::Rayon, Par::Rayon][case % 3];
                    let alpha = [1.0, -0.75, 2.5][(case / 2) % 3];
                    case += 1;
                    check_dense(e, m, k, n, ta, tb, alpha, acc, par, &mut g);
                }
            }
        }
    }
}

/// Long k: B packed in k super-blocks (and, with n > 512, in two column blocks).
#[test]
fn long_k_super_blocks() {
    if !have_avx2() {
        return;
    }
    let mut g = Gen(6);
    for (m, k, n) in [(30, 4100, 300), (13, 2500, 700)] {
        for ta in [false, true] {
            for tb in [false, true] {
                let par = if ta { Par::Rayon } else { Par::Serial };
                check_dense(Entry::Avx2, m, k, n, ta, tb, 0.5, tb, par, &mut g);
            }
        }
    }
}

#[test]
fn accumulate_alpha_serial_rayon() {
    if !have_avx2() {
        return;
    }
    let mut g = Gen(2);
    for (m, k, n) in [(97, 61, 300), (200, 300, 70), (70, 300, 200)] {
        for ta in [false, true] {
            for tb in [false, true] {
                for acc in [false, true] {
                    for par in [Par::Serial, Par::Rayon] {
                        check_dense(Entry::Avx2, m, k, n, ta, tb, 0.5, acc, par, &mut g);
                    }
                }
            }
        }
    }
}

/// A strided view with an offset into a larger buffer: element (i, j) at
/// `off + i*rs + j*cs`, the gaps filled with junk.
struct View {
    data: Vec<f32>,
    off: usize,
    rs: usize,
    cs: usize,
}

impl View {
    /// `rows x cols` in one of four layouts: row-major with padded rows, column-major with
    /// padded columns, or neither stride 1 (either way round).
    fn new(rows: usize, cols: usize, layout: usize, g: &mut Gen) -> View {
        let (off, rs, cs) = match layout {
            0 => (5, cols + 3, 1),
            1 => (3, 1, rows + 2),
            2 => (1, 2 * cols + 1, 2),
            _ => (2, 3, 3 * rows + 1),
        };
        let len = off + (rows - 1) * rs + (cols - 1) * cs + 1 + 4;
        View { data: g.vec(len), off, rs, cs }
    }
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[self.off + i * self.rs + j * self.cs]
    }
    fn mat(&self) -> MatRef<'_> {
        MatRef { data: &self.data, offset: self.off, rs: self.rs, cs: self.cs }
    }
}

#[test]
fn strided_offset_views() {
    if !have_avx2() {
        return;
    }
    let mut g = Gen(3);
    let mut case = 0usize;
    for (m, k, n) in
        [(7, 13, 5), (97, 61, 300), (150, 300, 40), (20, 33, 70), (1, 576, 64), (64, 9, 1), (130, 400, 100)]
    {
        for la in 0..4 {
            for lb in 0..4 {
                let a = View::new(m, k, la, &mut g);
                let b = View::new(k, n, lb, &mut g);
                let (c_off, c_rs) = (7, n + 3);
                let c_len = c_off + (m - 1) * c_rs + n + 2;
                let c0 = g.vec(c_len);
                let acc = case % 2 == 1;
                let par = if case % 4 < 2 { Par::Rayon } else { Par::Serial };
                let alpha = [1.0, -1.25, -1.25][case % 3];
                let e = if case % 5 == 4 { Entry::Dispatch } else { Entry::Avx2 };
                case += 1;
                let mut c = c0.clone();
                call(e, m, n, k, &mut c, c_off, c_rs, a.mat(), b.mat(), alpha, acc, par);
                let what = format!("{e:?} m{m} k{k} n{n} layouts {la},{lb} acc{acc} {par:?}");
                for idx in 0..c_len {
                    let (i, j) = ((idx.wrapping_sub(c_off)) / c_rs, (idx.wrapping_sub(c_off)) % c_rs);
                    if idx < c_off || i >= m || j >= n {
                        assert_eq!(c[idx].to_bits(), c0[idx].to_bits(), "{what}: C[{idx}] outside the view changed");
                        continue;
                    }
                    let (mut dot, mut abs) = (0.0f64, 0.0f64);
                    for p in 0..k {
                        let prod = a.at(i, p) as f64 * b.at(p, j) as f64;
                        dot += prod;
                        abs += prod.abs();
                    }
                    assert_close(c[idx], dot, abs, c0[idx], alpha, acc, &format!("{what} ({i},{j})"));
                }
            }
        }
    }
}

#[test]
fn k_zero_and_empty() {
    if !have_avx2() {
        return;
    }
    let (m, n) = (3, 4);
    for acc in [false, true] {
        let mut c = vec![2.0f32; m * n];
        gemm_avx2::gemm(
            m,
            n,
            0,
            &mut c,
            0,
            n,
            MatRef::dense(&[], 0, false),
            MatRef::dense(&[], n, false),
            1.0,
            acc,
            Par::Rayon,
        );
        assert!(c.iter().all(|&v| v == if acc { 2.0 } else { 0.0 }), "k = 0, acc {acc}: {c:?}");
    }
    let mut c = vec![2.0f32; 4];
    gemm_avx2::gemm(
        0,
        4,
        5,
        &mut c,
        0,
        4,
        MatRef::dense(&[], 5, false),
        MatRef::dense(&[0.0; 20], 4, false),
        1.0,
        false,
        Par::Rayon,
    );
    assert_eq!(c, vec![2.0; 4]);
}

/// Each element gets the same arithmetic whichever thread or tile computes it.
#[test]
fn serial_and_rayon_bit_identical() {
    if !have_avx2() {
        return;
    }
    let mut g = Gen(4);
    for (m, k, n, ta, tb) in [
        (301, 600, 250, false, true),
        (250, 520, 301, true, false),
        (1024, 576, 96, false, false),
        (200, 1700, 130, true, false),
        (32, 1500, 576, true, false),
        (20, 900, 300, true, false),
    ] {
        let a = g.vec(m * k);
        let b = g.vec(k * n);
        let mut s = vec![0.0; m * n];
        let mut r = vec![0.0; m * n];
        matmul(&mut s, &a, &b, m, k, n, ta, tb, 1.0, false, Par::Serial);
        matmul(&mut r, &a, &b, m, k, n, ta, tb, 1.0, false, Par::Rayon);
        assert!(s.iter().zip(&r).all(|(x, y)| x.to_bits() == y.to_bits()), "m{m} k{k} n{n}");
    }
}

#[test]
fn training_shapes_through_dispatch() {
    if !have_avx2() {
        return;
    }
    // x W^T, dx = dy W, dW = dy^T x at a (shortened) training shape.
    let mut g = Gen(5);
    let (t, i, o) = (200, 576, 192);
    check_dense(Entry::Dispatch, t, i, o, false, true, 1.0, false, Par::Rayon, &mut g);
    check_dense(Entry::Dispatch, t, o, i, false, false, 1.0, true, Par::Rayon, &mut g);
    check_dense(Entry::Dispatch, o, t, i, true, false, 0.5, true, Par::Rayon, &mut g);
}
