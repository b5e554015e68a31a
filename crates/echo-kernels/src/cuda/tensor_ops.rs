//! Launch wrappers for the generic tensor kernels (`kernels/tensor.cu`): what echo-tensor's
//! generic ops (broadcasting arithmetic, maps, reductions, softmax, layout) run on the GPU.
//! The CPU twins, which define the results, are `cpu::tensor_ref`.
//!
//! The shape work happens here on the host, in pure functions (`*_plan`, tested without a
//! GPU): broadcasting becomes per-operand element strides (0 along a broadcast dimension),
//! size-1 dimensions are dropped and neighbours that every operand walks as one are merged,
//! and a reduction picks its kernel from the merged shape. Every buffer must hold exactly the
//! elements its shape says (a mismatch is a caller's bug, reported as an error, never an
//! out-of-bounds access); an empty result launches nothing. All work is queued on the
//! device's stream; nothing here synchronises.

use super::alloc::GpuBuf;
use super::runtime::{Arg, Gpu};
use super::{CudaError, Result};
pub use crate::cpu::tensor_ref::{BinaryOp, ReduceOp, UnaryOp};

/// The most dimensions a shape may have after merging (see [`binary`]); kernel parameters
/// hold six.
pub const MAX_DIMS: usize = super::tiles::TS_MAX_DIMS;

// tensor.cu's #defines.
use super::tiles::TS_COL_TILE;
use super::tiles::TS_THREADS;

/// Reduced axes up to this long run one thread per output (`tensor_reduce_strided`): a block
/// per output row would leave most of its threads idle.
const SHORT_AXIS: usize = 32;

fn bad(op: &str, msg: String) -> CudaError {
    CudaError::Unsupported(format!("{op}: {msg}"))
}

/// Buffers hold exactly their shape's elements.
fn exact(op: &str, what: &str, have: usize, want: usize) -> Result<()> {
    if have != want {
        return Err(bad(op, format!("{what} holds {have} elements, {want} expected")));
    }
    Ok(())
}

fn numel(op: &str, what: &str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad(op, format!("{what} shape {shape:?} overflows")))
}

fn i64_arg(v: usize) -> Arg {
    Arg::I64(v as i64) // sizes of real buffers (checked against them): far below i64::MAX
}

/// Six parameters for a shape or stride vector, right-aligned: leading slots get `pad`
/// (1 for a dimension, 0 for a stride).
fn vec6(v: &[usize], pad: usize) -> [Arg; MAX_DIMS] {
    debug_assert!(v.len() <= MAX_DIMS);
    let mut out = [i64_arg(pad); MAX_DIMS];
    for (o, &x) in out[MAX_DIMS - v.len()..].iter_mut().zip(v) {
        *o = i64_arg(x);
    }
    out
}

/// One thread per element (element-wise kernels), `n > 0`.
fn launch_flat(gpu: &Gpu, name: &str, n: usize, args: &[Arg]) -> Result<()> {
    let blocks = n.div_ceil(TS_THREADS as usize);
    let blocks = u32::try_from(blocks)
        .ok()
        .filter(|&b| b <= i32::MAX as u32)
        .ok_or_else(|| bad(name, format!("{n} elements need too many blocks")))?;
    gpu.launch(name, (blocks, 1, 1), (TS_THREADS, 1, 1), args)
}

/// One block per unit of work (a row), `n > 0`.
fn launch_blocks(gpu: &Gpu, name: &str, n: usize, args: &[Arg]) -> Result<()> {
    let blocks = u32::try_from(n)
        .ok()
        .filter(|&b| b <= i32::MAX as u32)
        .ok_or_else(|| bad(name, format!("{n} blocks exceed the grid")))?;
    gpu.launch(name, (blocks, 1, 1), (TS_THREADS, 1, 1), args)
}

// ---------------------------------------------------------------- shape planning (host only)

/// Drops size-1 dimensions and merges each dimension into its inner neighbour wherever every
/// operand walks the two as one (`stride[d] == stride[d + 1] * dims[d + 1]`). The row-major
/// order of the elements is unchanged; the kernels just peel fewer coordinates. All `dims`
/// are > 0 (an empty shape launches nothing).
fn merge_dims(dims: &[usize], strides: &[Vec<usize>]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut md: Vec<usize> = Vec::new();
    let mut ms: Vec<Vec<usize>> = vec![Vec::new(); strides.len()];
    for (d, &size) in dims.iter().enumerate() {
        if size == 1 {
            continue;
        }
        let joins =
            !md.is_empty() && ms.iter().zip(strides).all(|(m, s)| *m.last().expect("same length as md") == s[d] * size);
        if joins {
            *md.last_mut().expect("non-empty") *= size;
            for (m, s) in ms.iter_mut().zip(strides) {
                *m.last_mut().expect("non-empty") = s[d];
            }
        } else {
            md.push(size);
            for (m, s) in ms.iter_mut().zip(strides) {
                m.push(s[d]);
            }
        }
    }
    (md, ms)
}

/// The element strides with which an operand of `shape` is read when broadcast to `out`
/// (right-aligned; 0 along the dimensions it lacks or has as 1 where out's is larger), or an
/// error naming both.
fn broadcast_strides(op: &str, what: &str, shape: &[usize], out: &[usize]) -> Result<Vec<usize>> {
    let incompatible = || bad(op, format!("{what} shape {shape:?} does not broadcast to {out:?}"));
    if shape.len() > out.len() {
        return Err(incompatible());
    }
    let off = out.len() - shape.len();
    let own = crate::cpu::tensor_ref::strides(shape);
    let mut st = vec![0; out.len()];
    for (d, &s) in shape.iter().enumerate() {
        if s == out[off + d] {
            st[off + d] = own[d];
        } else if s != 1 {
            return Err(incompatible());
        }
    }
    Ok(st)
}

fn check_rank(op: &str, what: &str, dims: &[usize]) -> Result<()> {
    if dims.len() > MAX_DIMS {
        return Err(bad(
            op,
            format!("{what} has {} dimensions after merging, at most {MAX_DIMS} are supported", dims.len()),
        ));
    }
    Ok(())
}

/// The index space of a broadcasting binary op: merged dimensions of `out` and the strides of
/// `a` and `b` along them. An operand dimension may be 1 or out's (so out may also be larger
/// than both operands' broadcast: each is broadcast to out).
#[derive(Clone, Debug, PartialEq, Eq)]
struct BinaryPlan {
    dims: Vec<usize>,
    a: Vec<usize>,
    b: Vec<usize>,
}

fn binary_plan(op: &str, a_shape: &[usize], b_shape: &[usize], out_shape: &[usize]) -> Result<BinaryPlan> {
    let sa = broadcast_strides(op, "a", a_shape, out_shape)?;
    let sb = broadcast_strides(op, "b", b_shape, out_shape)?;
    let (dims, mut s) = merge_dims(out_shape, &[sa, sb]);
    check_rank(op, "out", &dims)?;
    let b = s.pop().expect("two operands");
    let a = s.pop().expect("two operands");
    Ok(BinaryPlan { dims, a, b })
}

/// How a reduction runs. Every kernel gives the twin's result (sums in double), the choice
/// is about speed only.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ReducePlan {
    /// `y[r] = reduce x[r, 0..n)`, contiguous rows: one block per row.
    Rows { rows: usize, n: usize },
    /// `y[o, i] = reduce x[o, 0..n, i]`, `inner > 1`: 32 columns x 8 row groups per block.
    Cols { outer: usize, n: usize, inner: usize },
    /// Any pattern: y's (kept) dimensions with their strides in x, the reduced dimensions
    /// with theirs; one thread per output element.
    Strided { kept: Vec<usize>, kept_strides: Vec<usize>, red: Vec<usize>, red_strides: Vec<usize> },
}

/// Plans the reduction of a contiguous x whose dimensions are `(size, reduced)`, in order:
/// y has the kept ones. Size-1 dimensions are dropped and neighbours of one kind merged (x is
/// contiguous, so they always can be); a run `[kept] reduced [kept]` goes to the row or
/// column kernel unless the reduced axis is short, anything else to the strided one.
fn reduce_plan(op: &str, x_dims: &[(usize, bool)]) -> Result<ReducePlan> {
    let shape: Vec<usize> = x_dims.iter().map(|d| d.0).collect();
    let st = crate::cpu::tensor_ref::strides(&shape);
    let mut runs: Vec<(usize, usize, bool)> = Vec::new(); // (size, innermost stride, reduced)
    for (&(size, reduced), &s) in x_dims.iter().zip(&st) {
        match runs.last_mut() {
            _ if size == 1 => {}
            Some(last) if last.2 == reduced => {
                last.0 *= size;
                last.1 = s;
            }
            _ => runs.push((size, s, reduced)),
        }
    }
    let kinds: Vec<bool> = runs.iter().map(|r| r.2).collect();
    let sizes: Vec<usize> = runs.iter().map(|r| r.0).collect();
    let (outer, n, inner) = match kinds[..] {
        [true] => (1, sizes[0], 1),
        [false, true] => (sizes[0], sizes[1], 1),
        [true, false] => (1, sizes[0], sizes[1]),
        [false, true, false] => (sizes[0], sizes[1], sizes[2]),
        _ => (0, 0, 0), // no single reduced run: strided
    };
    if n > SHORT_AXIS {
        return Ok(if inner == 1 { ReducePlan::Rows { rows: outer, n } } else { ReducePlan::Cols { outer, n, inner } });
    }
    let pick = |reduced: bool| -> (Vec<usize>, Vec<usize>) {
        runs.iter().filter(|r| r.2 == reduced).map(|r| (r.0, r.1)).unzip()
    };
    let ((kept, kept_strides), (red, red_strides)) = (pick(false), pick(true));
    check_rank(op, "the kept dimensions", &kept)?;
    check_rank(op, "the reduced dimensions", &red)?;
    Ok(ReducePlan::Strided { kept, kept_strides, red, red_strides })
}

/// The dimensions of x for `sum_to` (`y_shape` broadcasts to `x_shape`): reduced where y
/// lacks the dimension or has it as 1.
fn sum_to_dims(op: &str, x_shape: &[usize], y_shape: &[usize]) -> Result<Vec<(usize, bool)>> {
    broadcast_strides(op, "y", y_shape, x_shape)?;
    let off = x_shape.len() - y_shape.len();
    Ok(x_shape.iter().enumerate().map(|(d, &s)| (s, d < off || y_shape[d - off] != s)).collect())
}

/// `y` dimensions and x strides of a permutation: output dimension `d` is x's `perm[d]`.
fn permute_plan(op: &str, x_shape: &[usize], perm: &[usize]) -> Result<(Vec<usize>, Vec<usize>)> {
    let mut seen = vec![false; x_shape.len()];
    if perm.len() != x_shape.len() || perm.iter().any(|&p| p >= x_shape.len() || std::mem::replace(&mut seen[p], true))
    {
        return Err(bad(op, format!("{perm:?} is not a permutation of the dimensions of {x_shape:?}")));
    }
    let xs = crate::cpu::tensor_ref::strides(x_shape);
    let dims: Vec<usize> = perm.iter().map(|&p| x_shape[p]).collect();
    let strides: Vec<usize> = perm.iter().map(|&p| xs[p]).collect();
    let (dims, mut s) = merge_dims(&dims, &[strides]);
    check_rank(op, "the permuted shape", &dims)?;
    Ok((dims, s.pop().expect("one operand")))
}

// ---------------------------------------------------------------- launches

fn unary_code(op: UnaryOp) -> (i32, f32) {
    match op {
        UnaryOp::Neg => (0, 0.0),
        UnaryOp::Exp => (1, 0.0),
        UnaryOp::Ln => (2, 0.0),
        UnaryOp::Sqr => (3, 0.0),
        UnaryOp::Sigmoid => (4, 0.0),
        UnaryOp::Silu => (5, 0.0),
        UnaryOp::Scale(s) => (6, s),
        UnaryOp::AddScalar(s) => (7, s),
    }
}

fn reduce_code(op: ReduceOp) -> i32 {
    match op {
        ReduceOp::Sum => 0,
        ReduceOp::Max => 1,
    }
}

/// `y[i] = op(x[i])`; `x` and `y` have the same length.
pub fn unary(gpu: &Gpu, op: UnaryOp, x: &GpuBuf<f32>, y: &mut GpuBuf<f32>) -> Result<()> {
    exact("unary", "y", y.len(), x.len())?;
    let n = x.len();
    if n == 0 {
        return Ok(());
    }
    let (code, s) = unary_code(op);
    launch_flat(
        gpu,
        "tensor_unary",
        n,
        &[Arg::Ptr(x.ptr()), Arg::Ptr(y.ptr()), i64_arg(n), Arg::I32(code), Arg::F32(s)],
    )
}

/// `out = a op b` with numpy broadcasting: `a_shape` and `b_shape` are right-aligned with
/// `out_shape` (they may have fewer dimensions), each dimension 1 or out's. Any rank works
/// as long as the merged index space has at most [`MAX_DIMS`] dimensions (always true up to 6).
#[allow(clippy::too_many_arguments)]
pub fn binary(
    gpu: &Gpu,
    op: BinaryOp,
    a: &GpuBuf<f32>,
    a_shape: &[usize],
    b: &GpuBuf<f32>,
    b_shape: &[usize],
    out: &mut GpuBuf<f32>,
    out_shape: &[usize],
) -> Result<()> {
    let name = "binary";
    exact(name, "a", a.len(), numel(name, "a", a_shape)?)?;
    exact(name, "b", b.len(), numel(name, "b", b_shape)?)?;
    let n = numel(name, "out", out_shape)?;
    exact(name, "out", out.len(), n)?;
    let plan = binary_plan(name, a_shape, b_shape, out_shape)?;
    if n == 0 {
        return Ok(());
    }
    let code = match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
    };
    let mut args = vec![Arg::Ptr(a.ptr()), Arg::Ptr(b.ptr()), Arg::Ptr(out.ptr()), i64_arg(n), Arg::I32(code)];
    args.extend(vec6(&plan.dims, 1));
    args.extend(vec6(&plan.a, 0));
    args.extend(vec6(&plan.b, 0));
    launch_flat(gpu, "tensor_binary", n, &args)
}

/// `y += x`, same length (gradient accumulation).
pub fn add_assign(gpu: &Gpu, y: &mut GpuBuf<f32>, x: &GpuBuf<f32>) -> Result<()> {
    exact("add_assign", "x", x.len(), y.len())?;
    let n = y.len();
    if n == 0 {
        return Ok(());
    }
    launch_flat(gpu, "tensor_add_assign", n, &[Arg::Ptr(y.ptr()), Arg::Ptr(x.ptr()), i64_arg(n)])
}

fn run_reduce(gpu: &Gpu, op: ReduceOp, plan: &ReducePlan, x: &GpuBuf<f32>, y: &mut GpuBuf<f32>) -> Result<()> {
    let (xp, yp, code) = (Arg::Ptr(x.ptr()), Arg::Ptr(y.ptr()), Arg::I32(reduce_code(op)));
    match plan {
        ReducePlan::Rows { rows, n } => {
            launch_blocks(gpu, "tensor_reduce_rows", *rows, &[xp, yp, i64_arg(*rows), i64_arg(*n), code])
        }
        ReducePlan::Cols { outer, n, inner } => {
            let name = "tensor_reduce_cols";
            let blocks =
                outer.checked_mul(inner.div_ceil(TS_COL_TILE)).ok_or_else(|| bad(name, "too many blocks".into()))?;
            launch_blocks(gpu, name, blocks, &[xp, yp, i64_arg(*outer), i64_arg(*n), i64_arg(*inner), code])
        }
        ReducePlan::Strided { kept, kept_strides, red, red_strides } => {
            let (n_out, n_red) = (kept.iter().product::<usize>(), red.iter().product::<usize>());
            let mut args = vec![xp, yp, i64_arg(n_out), i64_arg(n_red), code];
            args.extend(vec6(kept, 1));
            args.extend(vec6(kept_strides, 0));
            args.extend(vec6(red, 1));
            args.extend(vec6(red_strides, 0));
            launch_flat(gpu, "tensor_reduce_strided", n_out, &args)
        }
    }
}

/// `y[o, i] = reduce_k x[o, k, i]`: x viewed as `[outer, n, inner]`, y holds `outer * inner`.
/// `n == 0` gives 0 (sum) or -inf (max).
pub fn reduce_axis(
    gpu: &Gpu,
    op: ReduceOp,
    x: &GpuBuf<f32>,
    outer: usize,
    n: usize,
    inner: usize,
    y: &mut GpuBuf<f32>,
) -> Result<()> {
    let name = "reduce_axis";
    exact(name, "x", x.len(), numel(name, "x", &[outer, n, inner])?)?;
    exact(name, "y", y.len(), numel(name, "y", &[outer, inner])?)?;
    if y.is_empty() {
        return Ok(());
    }
    let plan = reduce_plan(name, &[(outer, false), (n, true), (inner, false)])?;
    run_reduce(gpu, op, &plan, x, y)
}

/// Sums `x` over the dimensions along which `y_shape` broadcasts to `x_shape` (y lacks them
/// or has them as 1): a broadcast operand's gradient. Nothing to sum over copies x.
pub fn sum_to(gpu: &Gpu, x: &GpuBuf<f32>, x_shape: &[usize], y: &mut GpuBuf<f32>, y_shape: &[usize]) -> Result<()> {
    let name = "sum_to";
    exact(name, "x", x.len(), numel(name, "x", x_shape)?)?;
    exact(name, "y", y.len(), numel(name, "y", y_shape)?)?;
    let dims = sum_to_dims(name, x_shape, y_shape)?;
    if y.is_empty() {
        return Ok(());
    }
    let plan = reduce_plan(name, &dims)?;
    run_reduce(gpu, ReduceOp::Sum, &plan, x, y)
}

/// Softmax over each row of `cols` (`x`, `y` hold `rows * cols`), numerically stable.
pub fn softmax_rows(gpu: &Gpu, x: &GpuBuf<f32>, y: &mut GpuBuf<f32>, rows: usize, cols: usize) -> Result<()> {
    let name = "softmax_rows";
    let n = numel(name, "x", &[rows, cols])?;
    exact(name, "x", x.len(), n)?;
    exact(name, "y", y.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    launch_blocks(
        gpu,
        "tensor_softmax_rows",
        rows,
        &[Arg::Ptr(x.ptr()), Arg::Ptr(y.ptr()), i64_arg(rows), i64_arg(cols)],
    )
}

/// The last element a block of `rows` x `cols` at `off` with `pitch` touches, plus one.
fn span_end(op: &str, what: &str, off: usize, pitch: usize, rows: usize, cols: usize) -> Result<usize> {
    (rows - 1)
        .checked_mul(pitch)
        .and_then(|v| v.checked_add(off))
        .and_then(|v| v.checked_add(cols))
        .ok_or_else(|| bad(op, format!("{what} block overflows")))
}

/// `dst[dst_off + r dst_pitch + c] = src[src_off + r src_pitch + c]` for `r < rows`,
/// `c < cols` (narrow and concat along any dimension: one call per part). `src_pitch` may be
/// anything (0 repeats a row); `dst_pitch` must be at least `cols` so rows do not overlap.
#[allow(clippy::too_many_arguments)]
pub fn copy_2d(
    gpu: &Gpu,
    src: &GpuBuf<f32>,
    src_off: usize,
    src_pitch: usize,
    dst: &mut GpuBuf<f32>,
    dst_off: usize,
    dst_pitch: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let name = "copy_2d";
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    if rows > 1 && dst_pitch < cols {
        return Err(bad(name, format!("dst pitch {dst_pitch} < {cols} columns: rows would overlap")));
    }
    for (what, len, off, pitch) in [("src", src.len(), src_off, src_pitch), ("dst", dst.len(), dst_off, dst_pitch)] {
        let end = span_end(name, what, off, pitch, rows, cols)?;
        if end > len {
            return Err(bad(
                name,
                format!(
                    "{what} block of {rows} x {cols} at {off} (pitch {pitch}) ends at {end}, past its {len} elements"
                ),
            ));
        }
    }
    let n = numel(name, "block", &[rows, cols])?;
    let args = [
        Arg::Ptr(src.ptr()),
        i64_arg(src_off),
        i64_arg(src_pitch),
        Arg::Ptr(dst.ptr()),
        i64_arg(dst_off),
        i64_arg(dst_pitch),
        i64_arg(rows),
        i64_arg(cols),
    ];
    launch_flat(gpu, "tensor_copy_2d", n, &args)
}

/// `y` = `x` (of `x_shape`) with its dimensions reordered: y's dimension `d` is x's `perm[d]`.
pub fn permute(gpu: &Gpu, x: &GpuBuf<f32>, x_shape: &[usize], perm: &[usize], y: &mut GpuBuf<f32>) -> Result<()> {
    let name = "permute";
    let n = numel(name, "x", x_shape)?;
    exact(name, "x", x.len(), n)?;
    exact(name, "y", y.len(), n)?;
    let (dims, strides) = permute_plan(name, x_shape, perm)?;
    if n == 0 {
        return Ok(());
    }
    let mut args = vec![Arg::Ptr(x.ptr()), Arg::Ptr(y.ptr()), i64_arg(n)];
    args.extend(vec6(&dims, 1));
    args.extend(vec6(&strides, 0));
    launch_flat(gpu, "tensor_gather", n, &args)
}

/// Every element of `y` set to `value`.
pub fn fill(gpu: &Gpu, y: &mut GpuBuf<f32>, value: f32) -> Result<()> {
    let n = y.len();
    if n == 0 {
        return Ok(());
    }
    launch_flat(gpu, "tensor_fill", n, &[Arg::Ptr(y.ptr()), i64_arg(n), Arg::F32(value)])
}

#[cfg(test)]
mod tests {
    //! The plans against the twins, through a host copy of the kernels' index arithmetic
    //! (`offset` is tensor.cu's `ts_offset`; the reductions loop as the kernels do): what the
    //! kernels are told is checked here without a GPU; the kernels themselves in `check`.
    use super::*;
    use crate::cpu::tensor_ref as twin;
    use crate::cuda::check::TestRng;

    fn pad6(v: &[usize], pad: usize) -> [usize; MAX_DIMS] {
        let mut out = [pad; MAX_DIMS];
        out[MAX_DIMS - v.len()..].copy_from_slice(v);
        out
    }

    /// tensor.cu's ts_offset.
    fn offset(mut i: usize, dims: &[usize], strides: &[usize]) -> usize {
        let (d6, s6) = (pad6(dims, 1), pad6(strides, 0));
        let mut off = 0;
        for d in (1..MAX_DIMS).rev() {
            if i == 0 {
                break;
            }
            off += (i % d6[d]) * s6[d];
            i /= d6[d];
        }
        off + i * s6[0]
    }

    fn emulate_reduce(op: ReduceOp, plan: &ReducePlan, x: &[f32], n_out: usize) -> Vec<f32> {
        let fold = |vals: &mut dyn Iterator<Item = f32>| -> f32 {
            match op {
                ReduceOp::Sum => vals.map(f64::from).sum::<f64>() as f32,
                ReduceOp::Max => vals.fold(f32::NEG_INFINITY, f32::max),
            }
        };
        match plan {
            ReducePlan::Rows { rows, n } => {
                assert_eq!(*rows, n_out);
                (0..*rows).map(|r| fold(&mut (0..*n).map(|k| x[r * n + k]))).collect()
            }
            ReducePlan::Cols { outer, n, inner } => {
                assert_eq!(outer * inner, n_out);
                (0..outer * inner)
                    .map(|j| fold(&mut (0..*n).map(|k| x[((j / inner) * n + k) * inner + j % inner])))
                    .collect()
            }
            ReducePlan::Strided { kept, kept_strides, red, red_strides } => {
                let n_red: usize = red.iter().product();
                (0..n_out)
                    .map(|j| {
                        fold(&mut (0..n_red).map(|r| x[offset(j, kept, kept_strides) + offset(r, red, red_strides)]))
                    })
                    .collect()
            }
        }
    }

    /// A random shape of `rank` small dimensions, ones common.
    fn shape(rng: &mut TestRng, rank: usize) -> Vec<usize> {
        (0..rank).map(|_| if rng.below(3) == 0 { 1 } else { 1 + rng.below(4) }).collect()
    }

    #[test]
    fn merging_keeps_the_walk() {
        // Contiguous: everything merges into one dimension.
        assert_eq!(merge_dims(&[2, 3, 4], &[vec![12, 4, 1]]), (vec![24], vec![vec![1]]));
        // A broadcast inner dimension stops the merge; size-1 dimensions vanish.
        assert_eq!(
            merge_dims(&[2, 1, 3, 4], &[vec![12, 12, 4, 1], vec![1, 0, 0, 0]]),
            (vec![2, 12], vec![vec![12, 1], vec![1, 0]])
        );
        assert_eq!(merge_dims(&[1, 1], &[vec![0, 0]]), (vec![], vec![vec![]]));
    }

    #[test]
    fn binary_plans_match_the_twin() {
        let mut rng = TestRng::new(5);
        for case in 0..400 {
            let rank = rng.below(MAX_DIMS + 1);
            let out = shape(&mut rng, rank);
            // Each operand: a suffix of out with some dimensions set to 1.
            let operand = |rng: &mut TestRng| -> Vec<usize> {
                let r = rng.below(out.len() + 1);
                out[out.len() - r..].iter().map(|&d| if rng.below(3) == 0 { 1 } else { d }).collect()
            };
            let (sa, sb) = (operand(&mut rng), operand(&mut rng));
            let (a, b) = (rng.vec(twin::numel(&sa), 1.0), rng.vec(twin::numel(&sb), 1.0));
            let plan = binary_plan("t", &sa, &sb, &out).unwrap();
            assert!(plan.dims.len() <= MAX_DIMS && plan.dims.iter().all(|&d| d > 1), "{plan:?}");
            let n = twin::numel(&out);
            let got: Vec<f32> =
                (0..n).map(|i| a[offset(i, &plan.dims, &plan.a)] - b[offset(i, &plan.dims, &plan.b)]).collect();
            let mut want = vec![0.0; n];
            twin::binary(BinaryOp::Sub, &a, &sa, &b, &sb, &mut want, &out);
            assert_eq!(got, want, "case {case}: {sa:?} - {sb:?} -> {out:?}, {plan:?}");
        }
    }

    #[test]
    fn binary_plan_rejects_bad_shapes() {
        for (a, b, out) in [(&[3][..], &[2][..], &[3][..]), (&[2, 3], &[3], &[3]), (&[4], &[1], &[2])] {
            let e = binary_plan("binary", a, b, out).unwrap_err().to_string();
            assert!(e.contains("does not broadcast"), "{e}");
        }
        // Seven dimensions are fine when they merge, not when they cannot.
        assert!(binary_plan("t", &[2; 7], &[2; 7], &[2; 7]).is_ok());
        let alternating = [2, 1, 2, 1, 2, 1, 2];
        let e = binary_plan("t", &alternating, &[2; 7], &[2; 7]).unwrap_err().to_string();
        assert!(e.contains("at most 6"), "{e}");
    }

    #[test]
    fn reduce_plans_match_the_twin() {
        let mut rng = TestRng::new(6);
        // reduce_axis: every route, short and long axes, size-1 and empty axes.
        for &(outer, n, inner) in
            &[(1, 1, 1), (3, 5, 7), (2, 40, 1), (1, 100, 3), (4, 33, 9), (5, 0, 2), (1, 7, 1), (6, 1, 5)]
        {
            let x = rng.vec(outer * n * inner, 1.0);
            let plan = reduce_plan("t", &[(outer, false), (n, true), (inner, false)]).unwrap();
            for op in [ReduceOp::Sum, ReduceOp::Max] {
                let mut want = vec![0.0; outer * inner];
                twin::reduce_axis(op, &x, outer, n, inner, &mut want);
                assert_eq!(emulate_reduce(op, &plan, &x, outer * inner), want, "{outer} {n} {inner} {op:?} {plan:?}");
            }
        }
        // sum_to: random broadcast patterns up to six dimensions, some with long axes.
        for case in 0..300 {
            let rank = 1 + rng.below(MAX_DIMS);
            let mut xs = shape(&mut rng, rank);
            if case % 5 == 0 {
                let d = rng.below(xs.len());
                xs[d] = 40 + rng.below(30);
            }
            let r = rng.below(xs.len() + 1);
            let ys: Vec<usize> = xs[xs.len() - r..].iter().map(|&d| if rng.below(2) == 0 { 1 } else { d }).collect();
            let x = rng.vec(twin::numel(&xs), 1.0);
            let plan = reduce_plan("t", &sum_to_dims("t", &xs, &ys).unwrap()).unwrap();
            let mut want = vec![0.0; twin::numel(&ys)];
            twin::sum_to(&x, &xs, &mut want, &ys);
            assert_eq!(emulate_reduce(ReduceOp::Sum, &plan, &x, want.len()), want, "{xs:?} -> {ys:?}: {plan:?}");
        }
    }

    #[test]
    fn reductions_pick_their_kernel() {
        let p = |dims: &[(usize, bool)]| reduce_plan("t", dims).unwrap();
        assert_eq!(p(&[(64, false), (577, true)]), ReducePlan::Rows { rows: 64, n: 577 });
        assert_eq!(p(&[(64, true), (577, false)]), ReducePlan::Cols { outer: 1, n: 64, inner: 577 });
        assert_eq!(
            p(&[(2, false), (3, true), (20, true), (1, false), (5, false)]),
            ReducePlan::Cols { outer: 2, n: 60, inner: 5 }
        );
        // A short axis, and a kept-reduced-kept-reduced pattern, go one thread per output.
        assert!(matches!(p(&[(1000, false), (3, true)]), ReducePlan::Strided { .. }));
        assert!(matches!(p(&[(50, true), (7, false), (50, true)]), ReducePlan::Strided { .. }));
        // Nothing reduced: a copy through the strided kernel (one term per output).
        assert_eq!(
            p(&[(4, false), (6, false)]),
            ReducePlan::Strided { kept: vec![24], kept_strides: vec![1], red: vec![], red_strides: vec![] }
        );
    }

    #[test]
    fn sum_to_and_permute_reject_bad_shapes() {
        assert!(sum_to_dims("sum_to", &[2, 3], &[2]).unwrap_err().to_string().contains("does not broadcast"));
        assert!(sum_to_dims("sum_to", &[3], &[1, 3]).is_err());
        for perm in [&[0, 0][..], &[0], &[0, 2], &[1, 0, 2]] {
            let e = permute_plan("permute", &[2, 3], perm).unwrap_err().to_string();
            assert!(e.contains("not a permutation"), "{e}");
        }
    }

    #[test]
    fn permute_plans_match_the_twin() {
        let mut rng = TestRng::new(7);
        for _ in 0..300 {
            let rank = rng.below(MAX_DIMS + 1);
            let xs = shape(&mut rng, rank);
            let mut perm: Vec<usize> = (0..xs.len()).collect();
            for i in (1..perm.len()).rev() {
                perm.swap(i, rng.below(i + 1));
            }
            let x = rng.vec(twin::numel(&xs), 1.0);
            let (dims, strides) = permute_plan("t", &xs, &perm).unwrap();
            let got: Vec<f32> = (0..x.len()).map(|i| x[offset(i, &dims, &strides)]).collect();
            let mut want = vec![0.0; x.len()];
            twin::permute(&x, &xs, &perm, &mut want);
            assert_eq!(got, want, "{xs:?} {perm:?}");
        }
        // The identity is one contiguous run.
        assert_eq!(permute_plan("t", &[3, 4, 5], &[0, 1, 2]).unwrap(), (vec![60], vec![1]));
    }

    #[test]
    fn copy_bounds() {
        assert_eq!(span_end("t", "src", 3, 10, 4, 5).unwrap(), 3 + 30 + 5);
        assert_eq!(span_end("t", "src", 0, 0, 7, 2).unwrap(), 2);
        assert!(span_end("t", "src", 1, usize::MAX, 3, 1).is_err());
    }
}
