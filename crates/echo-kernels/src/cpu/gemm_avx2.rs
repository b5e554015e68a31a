//! f32 GEMM for x86-64 with AVX2 + FMA, BLIS-style; [`super::gemm::gemm`] dispatches here when
//! the CPU has both features and the shape suits it (see [`use_for`]).
//!
//! Loop nest, innermost last:
//!
//! ```text
//! jc: nc columns of C    B block (all k, or k > 2048 in super-blocks, x nc: <= 4 MiB) packed
//!                        into NR-column panels, per k block
//!   ic: MC rows of C     work items, taken by the rayon threads dynamically
//!     pc: kc of k        A block (MC x kc = 432 KiB at kc 768) packed into MR-row panels (L2)
//!       jr: NR columns   one B panel (kc x NR = 48 KiB at kc 768), reread from L1/L2
//!         ir: MR rows    micro-kernel: a 6 x 16 tile of C in 12 ymm accumulators
//! ```
//!
//! Packing reads any row/column strides (transposes and per-head slices cost nothing extra) and
//! zero-pads the edge panels, so the micro-kernel always runs a full 6 x 16 tile; edge tiles are
//! written back with masked loads/stores. Where packing would not pay, an operand is read in
//! place: A when each of its micro-panels meets at most 4 B panels (n <= 64) and one of its
//! strides is 1, B when it has column stride 1 and m <= 24 (its partial edge panel is still
//! packed).
//!
//! Parallelism (`Par::Rayon`): per column block, the threads first pack B's panels (shared
//! tasks), then take the work items: MC rows of C each (times a share of the columns when there
//! are fewer than 2 row blocks per thread), each item packing its rows of A into its thread's
//! own buffer. Two fork-joins per column block and k super-block (a single block of each for
//! every shape of the model's projections); `Par::Serial` runs the same loops on the calling
//! thread only.
//!
//! With a single row block (m <= MC: LoRA's `dA = dz^T x`, where m is the rank) each B panel
//! meets only one item, so there is no pack phase: the item packs each panel right before its
//! micro-kernels use it, while it is still in L1/L2, instead of all panels going out to L3 and
//! coming back. Measured in interleaved paired runs at 32 x 1500 x 576 and 32 x 1500 x 1536
//! (A transposed): 6-24% faster than packing first.
//!
//! Each C element gets the same arithmetic whatever tile or thread computes it (same k
//! blocking, same order, `fma(acc, alpha, c)`), so `Serial` and `Rayon` give bit-identical
//! results, and the results do not depend on the thread count.
#![cfg(target_arch = "x86_64")]

use super::gemm::{MatRef, Par};
use std::arch::x86_64::*;
use std::cell::Cell;

/// Micro-tile rows (A values broadcast per k step).
const MR: usize = 6;
/// Micro-tile columns (two ymm vectors of C per row).
const NR: usize = 16;
/// Largest k block; k is cut into equal blocks no longer than this (576 -> 1 x 576,
/// 1536 -> 2 x 768, 1700 -> 3 x 567). Fewer k blocks mean fewer read-modify-write passes over
/// C, which costs more here than a B panel spilling from L1 to L2: in interleaved paired runs
/// against 256 on the 2-core Zen 3 machine, 768 was 3-9% faster at 1024 x 576 x 1536 and
/// 1024 x 1536 x 576 and no slower on the dW shapes (384 and 512 gained less).
const KC_MAX: usize = 768;
/// Largest row block (multiple of MR); m is cut into equal blocks (1024 -> 8 x 128).
const MC: usize = 144;
/// Floats of packed B at a time (4 MiB): all of k times as many columns as fit (576 -> 1808,
/// 1536 -> 672), but at least NC_MIN columns, k then being packed in super-blocks.
const B_BLOCK: usize = 1 << 20;
/// Fewest columns per column block: A is packed once per column block.
const NC_MIN: usize = 512;
/// A is read in place when each of its micro-panels meets at most this many B panels.
const DIRECT_A_PANELS: usize = 4;
/// B (column stride 1) is read in place when m spans at most this many micro-panels...
const DIRECT_B_PANELS: usize = 4;
/// ...and its rows are closer than this many floats (a 4 KiB page). Farther apart, a panel's
/// rows land in few cache sets and the hardware prefetcher does not follow them: in paired
/// runs at m = 16, k = 1500, reading in place was 9-10% faster than packing at n = 768 but
/// 1.4-1.8x slower at n = 1280, 1536 and 2048 (mixed at 1024).
const DIRECT_B_MAX_STRIDE: usize = 1024;
/// Below this many multiply-adds (160³) a `Rayon` call runs on one thread: at 128³ the two
/// fork-joins cost more than the second thread gave on the (busy) development machine.
const PAR_MIN_MACS: usize = 1 << 22;

/// Whether the CPU has what the micro-kernel needs (AVX2 and FMA). The standard library caches
/// the detection, so this is a couple of loads.
pub fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Whether [`super::gemm::gemm`] should use this kernel for an `m x k` by `k x n` product with
/// `B` as given: AVX2 + FMA present, and a shape where it beat the `gemm` crate path on the
/// 2-core Zen 3 development machine. The crate wins where our 6 x 16 tile runs mostly empty or
/// packing cannot pay: `n < 16`, `k < 4`, `m = 1` (its GEMV), `m < 6` with B's rows contiguous,
/// and products below 32³ multiply-adds. It also stayed ahead on vocabulary-sized products
/// (ours at 0.81-0.93x its speed at 256 x 576 x 49152, 0.87-1.0x at 256 x 49152 x 576), so n
/// or k above 16384 stay with it. On CPUs with AVX-512 the crate keeps every shape: its 512-bit kernels there
/// have not been measured against this one.
pub fn use_for(m: usize, n: usize, k: usize, b: &MatRef<'_>) -> bool {
    (16..=16384).contains(&n)
        && (4..=16384).contains(&k)
        && (m >= 6 || (m >= 2 && b.cs != 1))
        && m * n * k >= 1 << 15
        && available()
        && !is_x86_feature_detected!("avx512f")
}

/// `C = alpha * op(A) op(B)` (`accumulate = false`, old C never read) or
/// `C += alpha * op(A) op(B)` (`accumulate = true`), the same contract as
/// [`super::gemm::gemm`] without its FLOP counting.
///
/// # Panics
/// If AVX2 or FMA is missing, or a view does not fit in its slice.
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
    assert!(available(), "gemm_avx2: the CPU lacks AVX2 or FMA");
    if m == 0 || n == 0 {
        return;
    }
    let last = c_offset + (m - 1) * c_rs + (n - 1);
    assert!(last < c.len(), "gemm_avx2: C view reaches element {last}, slice has {}", c.len());
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[c_offset + i * c_rs..c_offset + i * c_rs + n].fill(0.0);
            }
        }
        return;
    }
    for (v, rows, cols, what) in [(&a, m, k, "A"), (&b, k, n, "B")] {
        let last = v.offset + (rows - 1) * v.rs + (cols - 1) * v.cs;
        assert!(last < v.data.len(), "gemm_avx2: {what} view reaches element {last}, slice has {}", v.data.len());
    }
    let job = Job {
        a: Mat { ptr: a.data[a.offset..].as_ptr(), rs: a.rs, cs: a.cs },
        b: Mat { ptr: b.data[b.offset..].as_ptr(), rs: b.rs, cs: b.cs },
        c: c[c_offset..].as_mut_ptr(),
        c_rs,
        alpha,
        accumulate,
    };
    let threads = match par {
        Par::Serial => 1,
        Par::Rayon => rayon::current_num_threads(),
    };
    let threads = if m * n * k >= PAR_MIN_MACS { threads.max(1) } else { 1 };
    // SAFETY: the asserts above prove that every element of the m x k, k x n and m x n views
    // lies inside its slice; `c` is borrowed mutably, so it aliases neither operand;
    // `available()` was checked.
    unsafe { job.run(m, n, k, threads) };
}

/// A strided read-only operand: element (i, j) at `ptr + i*rs + j*cs`.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

impl Mat {
    /// The element (i, j).
    ///
    /// # Safety
    /// (i, j) must lie inside the view's slice.
    #[inline(always)]
    unsafe fn at(&self, i: usize, j: usize) -> *const f32 {
        self.ptr.add(i * self.rs + j * self.cs)
    }
}

/// One GEMM: C (m x n, row stride `c_rs`, unit column stride) `= alpha A B` or `+= alpha A B`.
#[derive(Clone, Copy)]
struct Job {
    a: Mat,
    b: Mat,
    c: *mut f32,
    c_rs: usize,
    alpha: f32,
    accumulate: bool,
}

/// A raw pointer that rayon tasks may share.
#[derive(Clone, Copy)]
struct SharedPtr(*mut f32);

impl SharedPtr {
    /// The pointer (a method, so that closures capture the whole `SharedPtr`, not the field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: a `Job` (or a `SharedPtr` to its packed B block) is shared between the tasks of one
// `gemm` call only; they read `a`, `b` and the packed B block, and write disjoint parts of `c`
// and of the B block (see `Job::run`). The memory behind the pointers outlives the call.
unsafe impl Sync for Job {}
unsafe impl Send for Job {}
unsafe impl Sync for SharedPtr {}
unsafe impl Send for SharedPtr {}

/// Thread-local buffer `cell` grown to at least `floats` f32 (64-byte aligned), lent to `f`.
/// Taken out of the cell while in use, so a re-entrant call gets a fresh one instead of aliasing.
fn with_buffer<R>(
    cell: &'static std::thread::LocalKey<Cell<Vec<Line>>>,
    floats: usize,
    f: impl FnOnce(*mut f32) -> R,
) -> R {
    cell.with(|cell| {
        let mut buf = cell.take();
        let need = floats.div_ceil(NR);
        if buf.len() < need {
            buf = vec![Line([0.0; NR]); need];
        }
        let r = f(buf.as_mut_ptr() as *mut f32);
        cell.set(buf);
        r
    })
}

impl Job {
    /// The whole problem, on `threads` rayon threads (1: the calling thread only).
    ///
    /// Per column block: all of its k blocks of B packed into the calling thread's buffer
    /// (tasks of a few panels each), then the work items (a row block, or a share of its
    /// columns), each running every k block over its rows and packing them into its own
    /// thread-local buffer. See the module documentation.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; every element of the m x k, k x n and m x n views must
    /// lie inside live allocations, C aliasing neither A nor B, and no other thread may touch C
    /// meanwhile.
    unsafe fn run(&self, m: usize, n: usize, k: usize, threads: usize) {
        let kc_max = k.div_ceil(k.div_ceil(KC_MAX));
        // Row blocks of equal height (a multiple of MR), at most MC.
        let mc_blk = m.div_ceil(m.div_ceil(MC)).div_ceil(MR) * MR;
        let m_blocks = m.div_ceil(mc_blk);
        // Column blocks: as many columns as B_BLOCK floats hold with all of k, but at least
        // NC_MIN (then k is cut into super-blocks of whole k blocks, packed one at a time).
        let nc_max = (B_BLOCK / k).max(NC_MIN) / NR * NR;
        let n_panels_max = n.min(nc_max).div_ceil(NR);
        let ks_max = (B_BLOCK / (n_panels_max * NR) / kc_max).max(1) * kc_max;
        // With few row blocks, also cut the columns so every thread gets work.
        let col_parts = if threads > 1 { (2 * threads).div_ceil(m_blocks).min(n_panels_max) } else { 1 };
        let items = m_blocks * col_parts;
        // Operands read in place instead of packed, where packing would not pay: A when each
        // of its micro-panels meets few B panels (and one of its strides is 1), B when it has
        // unit column stride and meets few A micro-panels (its edge panel is still packed).
        let direct_a = (self.a.cs == 1 || self.a.rs == 1) && n_panels_max.div_ceil(col_parts) <= DIRECT_A_PANELS;
        let direct_b = self.b.cs == 1 && self.b.rs < DIRECT_B_MAX_STRIDE && m.div_ceil(MR) <= DIRECT_B_PANELS;
        // One row block: each item packs its own B panels as it goes (module docs).
        let pack_b_in_items = m_blocks == 1;
        // +NR: the A packer's overlapping 8-wide stores may spill up to 2 floats past a panel.
        let a_len = mc_blk * kc_max + NR;
        let b_len = n_panels_max * NR * ks_max.min(k);
        with_buffer(&PACK_B, b_len, |b_buf| {
            let b_buf = SharedPtr(b_buf);
            for jc in (0..n).step_by(nc_max) {
                let nc = nc_max.min(n - jc);
                let panels = nc.div_ceil(NR);
                // The k block starting at pc sits at b_buf + (pc - ks) * panels * NR.
                let stride = panels * NR;
                for ks in (0..k).step_by(ks_max) {
                    let ke = (ks + ks_max).min(k);
                    let k_blocks = (ke - ks).div_ceil(kc_max);
                    // Pack task q: panels [p0, p1) of k block kb.
                    let chunk =
                        if threads > 1 { panels.div_ceil((4 * threads).div_ceil(k_blocks)).max(1) } else { panels };
                    let chunks = panels.div_ceil(chunk);
                    // With a single row block the items pack their own panels: no pack tasks.
                    let pack_tasks = if pack_b_in_items { 0 } else { k_blocks * chunks };
                    let pack = |q: usize| {
                        let (kb, c) = (q / chunks, q % chunks);
                        let (pc, p1) = (ks + kb * kc_max, ((c + 1) * chunk).min(panels));
                        let kc = kc_max.min(ke - pc);
                        // In place: only a partial last panel needs packing (zero padding).
                        let p0 = if direct_b { (c * chunk).max(nc / NR) } else { c * chunk };
                        if p0 < p1 {
                            let (j0, j1) = (p0 * NR, (p1 * NR).min(nc));
                            let dst = b_buf.get().add((pc - ks) * stride + j0 * kc);
                            // SAFETY: columns [j0, j1) of B's k block, into their own panels.
                            unsafe { pack_b(kc, j1 - j0, self.b.at(pc, jc + j0), self.b.rs, self.b.cs, dst) }
                        }
                    };
                    let item = |t: usize| {
                        let (ib, part) = (t / col_parts, t % col_parts);
                        let ic = ib * mc_blk;
                        let mc = mc_blk.min(m - ic);
                        let (p0, p1) = (part * panels / col_parts, (part + 1) * panels / col_parts);
                        let (j0, j1) = (p0 * NR, (p1 * NR).min(nc));
                        for pc in (ks..ke).step_by(kc_max) {
                            let kc = kc_max.min(ke - pc);
                            // The first k block overwrites C unless accumulating; later ones add.
                            let beta = self.accumulate || pc > 0;
                            let bp = b_buf.get().add((pc - ks) * stride);
                            let b = BBlock { buf: bp, direct: direct_b, pack_here: pack_b_in_items };
                            // SAFETY (both): rows [ic, ic + mc) x columns [j0, j1) of C, and (with
                            // a single row block) panels [j0, j1) of the B block, are this item's
                            // alone; otherwise the B block is packed (where not read in place).
                            if direct_a {
                                unsafe { self.macro_kernel(ic, mc, pc, kc, jc, j0, j1, None, b, beta) }
                            } else {
                                with_buffer(&PACK_A, a_len, |a_buf| unsafe {
                                    self.macro_kernel(ic, mc, pc, kc, jc, j0, j1, Some(a_buf), b, beta)
                                });
                            }
                        }
                    };
                    if threads > 1 {
                        use rayon::prelude::*;
                        (0..pack_tasks).into_par_iter().with_max_len(1).for_each(pack);
                        (0..items).into_par_iter().with_max_len(1).for_each(item);
                    } else {
                        (0..pack_tasks).for_each(pack);
                        (0..items).for_each(item);
                    }
                }
            }
        });
    }

    /// Rows `[ic, ic + mc)` times columns `[jc + j0, jc + j1)` of C for the k block
    /// `[pc, pc + kc)`: packs those rows of A into `a_buf` (or, with `None`, reads A in
    /// place), then runs the micro-kernel over the tiles, reading B's full panels in place when
    /// `b.direct` and from `b.buf` otherwise (packing each panel there first if `b.pack_here`).
    ///
    /// # Safety
    /// As [`Job::run`]; `a_buf` holds `mc` rounded up to MR, times `kc`, plus NR floats;
    /// `b.buf` holds the packed panels of the `kc x nc` B block (or, with `b.pack_here`, room
    /// for them, panels `[j0, j1)` written by no one else meanwhile), 32-byte aligned; `j0` is a
    /// multiple of NR; `b.direct` only with B's column stride 1, `None` only with one of A's
    /// strides 1.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn macro_kernel(
        &self,
        ic: usize,
        mc: usize,
        pc: usize,
        kc: usize,
        jc: usize,
        j0: usize,
        j1: usize,
        a_buf: Option<*mut f32>,
        b: BBlock,
        beta: bool,
    ) {
        // Element (i, p) of the rows at `a + i*a_rs + p*a_ps`; panels MR rows apart.
        let (a, a_rs, a_ps, a_panel) = match a_buf {
            Some(buf) => {
                pack_a(mc, kc, self.a.at(ic, pc), self.a.rs, self.a.cs, buf);
                (buf as *const f32, 1, MR, MR * kc)
            }
            None => (self.a.at(ic, pc), self.a.rs, self.a.cs, MR * self.a.rs),
        };
        for jr in (j0..j1).step_by(NR) {
            let nr = NR.min(j1 - jr);
            let in_place = b.direct && nr == NR;
            let panel = b.buf.add(jr * kc);
            if b.pack_here && !in_place {
                pack_b(kc, nr, self.b.at(pc, jc + jr), self.b.rs, self.b.cs, panel);
            }
            let (bp, b_ps) = if in_place { (self.b.at(pc, jc + jr), self.b.rs) } else { (panel as *const f32, NR) };
            for ir in (0..mc).step_by(MR) {
                let mr = MR.min(mc - ir);
                let cp = self.c.add((ic + ir) * self.c_rs + jc + jr);
                kernel(kc, a.add(ir / MR * a_panel), a_rs, a_ps, bp, b_ps, cp, self.c_rs, self.alpha, beta, mr, nr);
            }
        }
    }
}

/// How a macro-kernel gets B's panels for one k block: `buf` is the block's packed panels (at
/// `buf + j * kc` for column j of the block); `direct`: full panels are read in place instead;
/// `pack_here`: the macro-kernel packs each panel into `buf` itself before using it.
#[derive(Clone, Copy)]
struct BBlock {
    buf: *mut f32,
    direct: bool,
    pack_here: bool,
}

/// 64 bytes, the packing buffers' unit (cache-line alignment for the B panels).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; NR]);

thread_local! {
    /// Packing buffers, kept per thread between calls (taken out while in use): the rows of A
    /// a task works on, and the B block of a call (shared with its other tasks).
    static PACK_A: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
    static PACK_B: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
}

/// The 6 x 16 micro-kernel: `C[mr, nr] (= or +=) alpha * A B` over `kc` steps, with A's
/// element (i, p) at `a + i*a_rs + p*a_ps` (a packed panel: `a_rs = 1`, `a_ps = MR`) and B's
/// 16 values of step p at `b + p*b_ps` (a packed panel: `b_ps = NR`). Rows past `mr` read row
/// `mr - 1` again and are not stored; columns past `nr` must be readable (packed zeros).
/// `beta` false: C is overwritten without being read.
///
/// # Safety
/// AVX2 + FMA; those `mr x kc` elements of A and `kc x 16` of B are readable; the `mr x nr`
/// tile at `c` (row stride `c_rs`) is writable; `1 <= mr <= MR`, `1 <= nr <= NR`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    kc: usize,
    a: *const f32,
    a_rs: usize,
    a_ps: usize,
    b: *const f32,
    b_ps: usize,
    c: *mut f32,
    c_rs: usize,
    alpha: f32,
    beta: bool,
    mr: usize,
    nr: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    // Warm the C tile while the k loop runs.
    for i in 0..mr {
        _mm_prefetch::<_MM_HINT_T0>(c.add(i * c_rs) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(c.add(i * c_rs + NR - 1) as *const i8);
    }
    let rows: [*const f32; MR] = std::array::from_fn(|i| a.add(i.min(mr - 1) * a_rs));
    let mut bp = b;
    for p in 0..kc {
        let b0 = _mm256_loadu_ps(bp);
        let b1 = _mm256_loadu_ps(bp.add(8));
        let off = p * a_ps;
        for (row, &r) in acc.iter_mut().zip(&rows) {
            let av = _mm256_broadcast_ss(&*r.add(off));
            row[0] = _mm256_fmadd_ps(av, b0, row[0]);
            row[1] = _mm256_fmadd_ps(av, b1, row[1]);
        }
        bp = bp.add(b_ps);
    }
    let alpha = _mm256_set1_ps(alpha);
    if nr == NR {
        for (i, row) in acc.iter().enumerate().take(mr) {
            let cr = c.add(i * c_rs);
            for (h, &v) in row.iter().enumerate() {
                let cp = cr.add(8 * h);
                let out = if beta { _mm256_fmadd_ps(v, alpha, _mm256_loadu_ps(cp)) } else { _mm256_mul_ps(v, alpha) };
                _mm256_storeu_ps(cp, out);
            }
        }
    } else {
        // Columns past nr are masked out: neither read nor written.
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let masks = [
            _mm256_cmpgt_epi32(_mm256_set1_epi32(nr as i32), lanes),
            _mm256_cmpgt_epi32(_mm256_set1_epi32(nr as i32 - 8), lanes),
        ];
        for (i, row) in acc.iter().enumerate().take(mr) {
            let cr = c.add(i * c_rs);
            for (h, &v) in row.iter().enumerate() {
                let cp = cr.add(8 * h);
                let out = if beta {
                    _mm256_fmadd_ps(v, alpha, _mm256_maskload_ps(cp, masks[h]))
                } else {
                    _mm256_mul_ps(v, alpha)
                };
                _mm256_maskstore_ps(cp, masks[h], out);
            }
        }
    }
}

/// Packs the `mc x kc` block of A at `a` (element (i, p) at `a + i*rs + p*cs`) into MR-row
/// panels: panel `t` at `dst + t*MR*kc`, element (i, p) of it at `p*MR + i`; rows past `mc`
/// are zero.
///
/// # Safety
/// AVX2; the block lies inside A's slice; `dst` holds `mc` rounded up to MR, times `kc`, plus
/// NR floats.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_a(mc: usize, kc: usize, a: *const f32, rs: usize, cs: usize, dst: *mut f32) {
    for i0 in (0..mc).step_by(MR) {
        let mr = MR.min(mc - i0);
        let src = a.add(i0 * rs);
        let d = dst.add(i0 * kc);
        let mut p0 = 0;
        if mr == MR && cs == 1 {
            // Rows contiguous along k: transpose 8 x 8 blocks (rows 6 and 7 zero) and store
            // each k step's 8 lanes at its 6-float slot; the 2 extra lanes land on the next
            // slot (or the next panel, or the buffer's tail) and are overwritten in turn.
            let z = _mm256_setzero_ps();
            while p0 + 8 <= kc {
                let r = [
                    _mm256_loadu_ps(src.add(p0)),
                    _mm256_loadu_ps(src.add(rs + p0)),
                    _mm256_loadu_ps(src.add(2 * rs + p0)),
                    _mm256_loadu_ps(src.add(3 * rs + p0)),
                    _mm256_loadu_ps(src.add(4 * rs + p0)),
                    _mm256_loadu_ps(src.add(5 * rs + p0)),
                    z,
                    z,
                ];
                let t = transpose8(r);
                for (q, &v) in t.iter().enumerate() {
                    _mm256_storeu_ps(d.add((p0 + q) * MR), v);
                }
                p0 += 8;
            }
        } else if mr == MR && rs == 1 {
            // Columns contiguous along m (a transposed A): six consecutive floats per k step.
            for p in 0..kc {
                std::ptr::copy_nonoverlapping(src.add(p * cs), d.add(p * MR), MR);
            }
            p0 = kc;
        }
        for p in p0..kc {
            for i in 0..MR {
                *d.add(p * MR + i) = if i < mr { *src.add(i * rs + p * cs) } else { 0.0 };
            }
        }
    }
}

/// Packs the `kc x nc` block of B at `b` (element (p, j) at `b + p*rs + j*cs`) into NR-column
/// panels: panel `t` at `dst + t*NR*kc`, element (p, j) of it at `p*NR + j`; columns past `nc`
/// are zero.
///
/// # Safety
/// AVX2; the block lies inside B's slice; `dst` is 32-byte aligned and holds `nc` rounded up to
/// NR, times `kc`, floats.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_b(kc: usize, nc: usize, b: *const f32, rs: usize, cs: usize, dst: *mut f32) {
    for j0 in (0..nc).step_by(NR) {
        let nr = NR.min(nc - j0);
        let src = b.add(j0 * cs);
        let d = dst.add(j0 * kc);
        if nr == NR && cs == 1 {
            // Rows of B contiguous: two vector copies per k step.
            for p in 0..kc {
                let s = src.add(p * rs);
                _mm256_store_ps(d.add(p * NR), _mm256_loadu_ps(s));
                _mm256_store_ps(d.add(p * NR + 8), _mm256_loadu_ps(s.add(8)));
            }
        } else if nr == NR && rs == 1 {
            // A transposed B (x W^T with W stored [n, k]): 8 x 8 transposes of W's rows.
            let mut p0 = 0;
            while p0 + 8 <= kc {
                for h in 0..2 {
                    let s = src.add(8 * h * cs + p0);
                    let r = [
                        _mm256_loadu_ps(s),
                        _mm256_loadu_ps(s.add(cs)),
                        _mm256_loadu_ps(s.add(2 * cs)),
                        _mm256_loadu_ps(s.add(3 * cs)),
                        _mm256_loadu_ps(s.add(4 * cs)),
                        _mm256_loadu_ps(s.add(5 * cs)),
                        _mm256_loadu_ps(s.add(6 * cs)),
                        _mm256_loadu_ps(s.add(7 * cs)),
                    ];
                    let t = transpose8(r);
                    for (q, &v) in t.iter().enumerate() {
                        _mm256_store_ps(d.add((p0 + q) * NR + 8 * h), v);
                    }
                }
                p0 += 8;
            }
            for p in p0..kc {
                for j in 0..NR {
                    *d.add(p * NR + j) = *src.add(p + j * cs);
                }
            }
        } else {
            for p in 0..kc {
                for j in 0..NR {
                    *d.add(p * NR + j) = if j < nr { *src.add(p * rs + j * cs) } else { 0.0 };
                }
            }
        }
    }
}

/// Transposes the 8 x 8 block whose rows are `r`: returns its columns.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    // s0 = columns 0 | 4 of rows 0-3, s1 = 1 | 5, s2 = 2 | 6, s3 = 3 | 7; s4-s7 rows 4-7.
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}
