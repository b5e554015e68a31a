//! CPU twins of the generic tensor kernels (`kernels/tensor.cu`, launched by
//! `cuda::tensor_ops`): plain loops that say what each kernel computes, written to be read,
//! not to be fast. `cuda::check` compares every kernel with these.
//!
//! They follow echo-tensor's generic ops (`ops/elementwise.rs`, `ops/reduce.rs`,
//! `ops/layout.rs`) with one deliberate difference: every sum accumulates in f64 and is
//! rounded to f32 once, as the kernels do. echo-tensor's `sum_all` does the same; its
//! `sum_dim`, `sum_to` and `softmax_last` add in f32 in order, so they agree with these to
//! f32 rounding of a long sum, not bit for bit. Everything else (maps, arithmetic, max,
//! layout) is the same operation on the same values, so a kernel matches its twin exactly,
//! except `exp` / `ln` (and sigmoid / silu / softmax through them), where CUDA's `expf` /
//! `logf` are within 2 ulp of the CPU's.
//!
//! Shapes are row-major, innermost dimension last. Misuse panics (as every twin here):
//! validating arguments is the job of the caller (echo-tensor, or the CUDA wrappers).

use super::activation::{sigmoid, silu};

/// An element-wise map `y = f(x)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Ln,
    Sqr,
    Sigmoid,
    Silu,
    /// `x * s`
    Scale(f32),
    /// `x + s`
    AddScalar(f32),
}

impl UnaryOp {
    pub fn apply(self, x: f32) -> f32 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Ln => x.ln(),
            UnaryOp::Sqr => x * x,
            UnaryOp::Sigmoid => sigmoid(x),
            UnaryOp::Silu => silu(x),
            UnaryOp::Scale(s) => x * s,
            UnaryOp::AddScalar(s) => x + s,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinaryOp {
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
        }
    }
}

/// `Sum` adds in f64; `Max` ignores NaN (`f32::max`) and is -inf over an empty axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Row-major element strides of a contiguous tensor of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// The coordinates of row-major index `i` in `shape`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}

/// The element of an operand of `shape` (right-aligned with `idx`'s shape, numpy style) that
/// broadcasts to coordinates `idx`: coordinate 0 along its size-1 dimensions.
fn broadcast_index(idx: &[usize], shape: &[usize]) -> usize {
    let off = idx.len() - shape.len();
    let st = strides(shape);
    (0..shape.len()).map(|d| if shape[d] == 1 { 0 } else { idx[off + d] * st[d] }).sum()
}

/// Panics unless `shape` broadcasts to `out` (right-aligned; each dimension 1 or out's).
fn assert_broadcasts(shape: &[usize], out: &[usize]) {
    assert!(shape.len() <= out.len(), "{shape:?} has more dimensions than {out:?}");
    let off = out.len() - shape.len();
    for (d, &s) in shape.iter().enumerate() {
        assert!(s == 1 || s == out[off + d], "{shape:?} does not broadcast to {out:?}");
    }
}

pub fn unary(op: UnaryOp, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    for (y, &x) in y.iter_mut().zip(x) {
        *y = op.apply(x);
    }
}

/// `out = a op b`, each operand broadcast to `out_shape` (numpy rules).
pub fn binary(
    op: BinaryOp,
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    out: &mut [f32],
    out_shape: &[usize],
) {
    assert_broadcasts(a_shape, out_shape);
    assert_broadcasts(b_shape, out_shape);
    assert_eq!((a.len(), b.len(), out.len()), (numel(a_shape), numel(b_shape), numel(out_shape)));
    for (i, o) in out.iter_mut().enumerate() {
        let idx = unravel(i, out_shape);
        *o = op.apply(a[broadcast_index(&idx, a_shape)], b[broadcast_index(&idx, b_shape)]);
    }
}

/// `y += x`.
pub fn add_assign(y: &mut [f32], x: &[f32]) {
    assert_eq!(x.len(), y.len());
    for (y, &x) in y.iter_mut().zip(x) {
        *y += x;
    }
}

/// `y[o, i] = reduce_k x[o, k, i]`, x viewed as `[outer, n, inner]`, y as `[outer, inner]`.
pub fn reduce_axis(op: ReduceOp, x: &[f32], outer: usize, n: usize, inner: usize, y: &mut [f32]) {
    assert_eq!((x.len(), y.len()), (outer * n * inner, outer * inner));
    for o in 0..outer {
        for i in 0..inner {
            let along = (0..n).map(|k| x[(o * n + k) * inner + i]);
            y[o * inner + i] = match op {
                ReduceOp::Sum => along.map(f64::from).sum::<f64>() as f32,
                ReduceOp::Max => along.fold(f32::NEG_INFINITY, f32::max),
            };
        }
    }
}

/// Sums `x` over the dimensions along which `y_shape` broadcasts to `x_shape` (the adjoint
/// of broadcasting: a broadcast operand's gradient). An empty reduced space gives zeros.
pub fn sum_to(x: &[f32], x_shape: &[usize], y: &mut [f32], y_shape: &[usize]) {
    assert_broadcasts(y_shape, x_shape);
    assert_eq!((x.len(), y.len()), (numel(x_shape), numel(y_shape)));
    let mut acc = vec![0.0f64; y.len()];
    for (i, &v) in x.iter().enumerate() {
        acc[broadcast_index(&unravel(i, x_shape), y_shape)] += v as f64;
    }
    for (y, a) in y.iter_mut().zip(acc) {
        *y = a as f32;
    }
}

/// Softmax of each row of `cols`: `exp(x - max) / sum`, the max ignoring NaN, the sum in f64.
pub fn softmax_rows(x: &[f32], y: &mut [f32], rows: usize, cols: usize) {
    assert_eq!((x.len(), y.len()), (rows * cols, rows * cols));
    for r in 0..rows {
        let (xr, yr) = (&x[r * cols..(r + 1) * cols], &mut y[r * cols..(r + 1) * cols]);
        let m = xr.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let s: f64 = xr.iter().map(|&v| (v - m).exp() as f64).sum();
        for (y, &v) in yr.iter_mut().zip(xr) {
            *y = (v - m).exp() / s as f32;
        }
    }
}

/// `dst[dst_off + r dst_pitch + c] = src[src_off + r src_pitch + c]` for `r < rows`, `c < cols`.
#[allow(clippy::too_many_arguments)]
pub fn copy_2d(
    src: &[f32],
    src_off: usize,
    src_pitch: usize,
    dst: &mut [f32],
    dst_off: usize,
    dst_pitch: usize,
    rows: usize,
    cols: usize,
) {
    for r in 0..rows {
        for c in 0..cols {
            dst[dst_off + r * dst_pitch + c] = src[src_off + r * src_pitch + c];
        }
    }
}

/// `y` = `x` with its dimensions reordered: output dimension `d` is input dimension `perm[d]`.
pub fn permute(x: &[f32], x_shape: &[usize], perm: &[usize], y: &mut [f32]) {
    assert_eq!(perm.len(), x_shape.len());
    assert_eq!((x.len(), y.len()), (numel(x_shape), numel(x_shape)));
    let xs = strides(x_shape);
    let out_shape: Vec<usize> = perm.iter().map(|&p| x_shape[p]).collect();
    for (i, y) in y.iter_mut().enumerate() {
        let idx = unravel(i, &out_shape);
        *y = x[(0..perm.len()).map(|d| idx[d] * xs[perm[d]]).sum::<usize>()];
    }
}

pub fn fill(y: &mut [f32], value: f32) {
    y.iter_mut().for_each(|v| *v = value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            let same = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= 1e-6 * w.abs().max(1.0);
            assert!(same, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn unary_ops() {
        let x = [0.0, 1.0, -2.0, 4.0];
        let run = |op| {
            let mut y = [9.0; 4];
            unary(op, &x, &mut y);
            y
        };
        close(&run(UnaryOp::Neg), &[0.0, -1.0, 2.0, -4.0]);
        close(&run(UnaryOp::Exp), &[1.0, std::f32::consts::E, 0.135_335_28, 54.598_15]);
        close(&run(UnaryOp::Ln), &[f32::NEG_INFINITY, 0.0, f32::NAN, 1.386_294_4]);
        close(&run(UnaryOp::Sqr), &[0.0, 1.0, 4.0, 16.0]);
        close(&run(UnaryOp::Sigmoid), &[0.5, 0.731_058_6, 0.119_202_92, 0.982_013_8]);
        close(&run(UnaryOp::Silu), &[0.0, 0.731_058_6, -0.238_405_84, 3.928_055]);
        close(&run(UnaryOp::Scale(-0.5)), &[-0.0, -0.5, 1.0, -2.0]);
        close(&run(UnaryOp::AddScalar(1.5)), &[1.5, 2.5, -0.5, 5.5]);
    }

    #[test]
    fn binary_broadcasts_numpy_style() {
        // [2, 1] + [3] -> [2, 3]: a along columns, b along rows.
        let mut out = [0.0; 6];
        binary(BinaryOp::Add, &[10.0, 20.0], &[2, 1], &[1.0, 2.0, 3.0], &[3], &mut out, &[2, 3]);
        close(&out, &[11.0, 12.0, 13.0, 21.0, 22.0, 23.0]);
        // A scalar (rank 0) on the right.
        let mut out = [0.0; 4];
        binary(BinaryOp::Sub, &[1.0, 2.0, 3.0, 4.0], &[2, 2], &[0.5], &[], &mut out, &[2, 2]);
        close(&out, &[0.5, 1.5, 2.5, 3.5]);
        // Both broadcast: [1, 2] / [2, 1] -> [2, 2]; division by zero is IEEE.
        let mut out = [0.0; 4];
        binary(BinaryOp::Div, &[1.0, -6.0], &[1, 2], &[2.0, 0.0], &[2, 1], &mut out, &[2, 2]);
        close(&out, &[0.5, -3.0, f32::INFINITY, f32::NEG_INFINITY]);
        // A middle dimension broadcast: [2, 1, 2] * [2, 2, 2].
        let mut out = [0.0; 8];
        let b: Vec<f32> = (1..=8).map(|v| v as f32).collect();
        binary(BinaryOp::Mul, &[1.0, 10.0, 100.0, 1000.0], &[2, 1, 2], &b, &[2, 2, 2], &mut out, &[2, 2, 2]);
        close(&out, &[1.0, 20.0, 3.0, 40.0, 500.0, 6000.0, 700.0, 8000.0]);
    }

    #[test]
    #[should_panic(expected = "does not broadcast")]
    fn binary_rejects_incompatible_shapes() {
        let mut out = [0.0; 6];
        binary(BinaryOp::Add, &[0.0; 2], &[2], &[0.0; 3], &[3], &mut out, &[2, 3]);
    }

    #[test]
    fn accumulates_in_place() {
        let mut y = [1.0, 2.0, 3.0];
        add_assign(&mut y, &[0.5, -2.0, 4.0]);
        close(&y, &[1.5, 0.0, 7.0]);
    }

    #[test]
    fn reduces_one_axis() {
        // x[o, k, i] = 100 o + 10 k + i, shape [2, 3, 2].
        let x: Vec<f32> =
            (0..2).flat_map(|o| (0..3).flat_map(move |k| (0..2).map(move |i| (100 * o + 10 * k + i) as f32))).collect();
        let mut y = [0.0; 4];
        reduce_axis(ReduceOp::Sum, &x, 2, 3, 2, &mut y);
        close(&y, &[30.0, 33.0, 330.0, 333.0]);
        reduce_axis(ReduceOp::Max, &x, 2, 3, 2, &mut y);
        close(&y, &[20.0, 21.0, 120.0, 121.0]);
        // Max ignores NaN (an all-NaN row is -inf, as f32::max from -inf); an empty axis gives
        // the identity.
        let mut y = [0.0; 2];
        reduce_axis(ReduceOp::Max, &[f32::NAN, -3.0, f32::NAN, f32::NAN], 2, 2, 1, &mut y);
        close(&y, &[-3.0, f32::NEG_INFINITY]);
        let mut y = [7.0; 3];
        reduce_axis(ReduceOp::Sum, &[], 1, 0, 3, &mut y);
        close(&y, &[0.0; 3]);
        reduce_axis(ReduceOp::Max, &[], 3, 0, 1, &mut y);
        close(&y, &[f32::NEG_INFINITY; 3]);
    }

    #[test]
    fn sum_in_f64_keeps_small_terms() {
        // In f32, 1 + 2^-24 + 2^-24 ... stays 1; in f64 the 1000 small terms add up first.
        let mut x = vec![2f32.powi(-24); 1001];
        x[0] = 1.0;
        let mut y = [0.0];
        reduce_axis(ReduceOp::Sum, &x, 1, 1001, 1, &mut y);
        assert_eq!(y[0], (1.0 + 1000.0 * 2f64.powi(-24)) as f32);
        assert!(y[0] > 1.0);
    }

    #[test]
    fn sums_back_to_a_broadcast_shape() {
        // x = [[0, 1, 2], [3, 4, 5]]
        let x: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let mut cols = [0.0; 3];
        sum_to(&x, &[2, 3], &mut cols, &[3]);
        close(&cols, &[3.0, 5.0, 7.0]);
        let mut rows = [0.0; 2];
        sum_to(&x, &[2, 3], &mut rows, &[2, 1]);
        close(&rows, &[3.0, 12.0]);
        let mut all = [0.0; 1];
        sum_to(&x, &[2, 3], &mut all, &[]);
        close(&all, &[15.0]);
        let mut same = [0.0; 6];
        sum_to(&x, &[2, 3], &mut same, &[2, 3]);
        close(&same, &x);
        // [2, 3, 2] -> [1, 3, 1]: the middle dimension kept, both others summed.
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut mid = [0.0; 3];
        sum_to(&x, &[2, 3, 2], &mut mid, &[1, 3, 1]);
        close(&mid, &[0.0 + 1.0 + 6.0 + 7.0, 2.0 + 3.0 + 8.0 + 9.0, 4.0 + 5.0 + 10.0 + 11.0]);
        // An empty x sums to zeros.
        let mut z = [5.0; 2];
        sum_to(&[], &[0, 2], &mut z, &[2]);
        close(&z, &[0.0, 0.0]);
    }

    #[test]
    fn softmax_is_stable_and_matches_by_hand() {
        let mut y = [0.0; 6];
        softmax_rows(&[1.0, 2.0, 3.0, 1000.0, 1000.0, 1000.0], &mut y, 2, 3);
        close(&y, &[0.090_030_57, 0.244_728_48, 0.665_240_9, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0]);
        // A row of -inf has no maximum to subtract: NaN, as echo-tensor's softmax_last.
        let mut y = [0.0; 2];
        softmax_rows(&[f32::NEG_INFINITY; 2], &mut y, 1, 2);
        assert!(y.iter().all(|v| v.is_nan()));
        // -inf entries get probability 0.
        softmax_rows(&[f32::NEG_INFINITY, 0.0], &mut y, 1, 2);
        close(&y, &[0.0, 1.0]);
    }

    #[test]
    fn copies_blocks_of_rows() {
        // Narrow: columns 1..3 of a [3, 4] into a [3, 2].
        let src: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut dst = [0.0; 6];
        copy_2d(&src, 1, 4, &mut dst, 0, 2, 3, 2);
        close(&dst, &[1.0, 2.0, 5.0, 6.0, 9.0, 10.0]);
        // Concat: the [3, 2] into columns 3..5 of a [3, 5], the rest untouched.
        let mut cat = [-1.0; 15];
        copy_2d(&dst, 0, 2, &mut cat, 3, 5, 3, 2);
        close(&cat, &[-1.0, -1.0, -1.0, 1.0, 2.0, -1.0, -1.0, -1.0, 5.0, 6.0, -1.0, -1.0, -1.0, 9.0, 10.0]);
        // Pitch 0 repeats one source row.
        let mut rep = [0.0; 4];
        copy_2d(&[7.0, 8.0], 0, 0, &mut rep, 0, 2, 2, 2);
        close(&rep, &[7.0, 8.0, 7.0, 8.0]);
    }

    #[test]
    fn permutes_dimensions() {
        // [2, 3] transposed.
        let x: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let mut y = [0.0; 6];
        permute(&x, &[2, 3], &[1, 0], &mut y);
        close(&y, &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        // [2, 2, 2] with perm [2, 0, 1]: y[a, b, c] = x[b, c, a].
        let x: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let mut y = [0.0; 8];
        permute(&x, &[2, 2, 2], &[2, 0, 1], &mut y);
        close(&y, &[0.0, 2.0, 4.0, 6.0, 1.0, 3.0, 5.0, 7.0]);
    }

    #[test]
    fn fills_and_strides() {
        let mut y = [0.0; 3];
        fill(&mut y, -2.5);
        close(&y, &[-2.5; 3]);
        assert_eq!(strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(strides(&[]), Vec::<usize>::new());
        assert_eq!(numel(&[]), 1);
    }
}
