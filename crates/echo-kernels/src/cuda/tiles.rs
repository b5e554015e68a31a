//! The CUDA kernels' tile sizes and block shapes, defined once. The `.cu` files do not define
//! them: NVRTC (and nvcc in `cargo xtask check-kernels`) gets each as a `-DNAME=VALUE` option
//! ([`defines`]), and the launch wrappers size their grids from the same constants, so the two
//! sides cannot drift apart. A `.cu` file compiled without them stops at an `#error`.

/// attention.cu: the largest head dimension.
pub const ATT_DMAX: usize = 128;
/// attention.cu: keys per shared-memory tile (one per lane of a warp).
pub const ATT_BK: usize = 32;
/// attention.cu: warps per block.
pub const ATT_WARPS: usize = 4;
/// attention.cu: queries per warp in the forward, in dQ; keys per warp in dK/dV.
pub const ATT_FWD_QPW: usize = 4;
pub const ATT_DQ_QPW: usize = 2;
pub const ATT_DKV_KPW: usize = 2;
/// attention.cu: threads, queries (keys) per block, as the kernels derive them.
pub const ATT_THREADS: u32 = (ATT_WARPS * 32) as u32;
pub const ATT_FWD_BQ: usize = ATT_WARPS * ATT_FWD_QPW;
pub const ATT_DQ_BQ: usize = ATT_WARPS * ATT_DQ_QPW;
pub const ATT_DKV_BK: usize = ATT_WARPS * ATT_DKV_KPW;

/// lowrank.cu: threads per block, rows and k-tile of the shrink, the largest rank.
pub const LR_THREADS: u32 = 256;
pub const SHRINK_ROWS: usize = 16;
pub const SHRINK_KT: usize = 32;
pub const LR_MAX_RANK: usize = 128;
/// lowrank.cu: outputs per thread in the shrink (`SHRINK_ROWS * LR_MAX_RANK / LR_THREADS`).
pub const SHRINK_PER_THREAD: usize = SHRINK_ROWS * LR_MAX_RANK / LR_THREADS as usize;
/// lowrank.cu: rows and columns of the expand's tile; the weight-gradient tile and k-tile.
pub const EXPAND_ROWS: usize = 8;
pub const EXPAND_COLS: usize = 256;
pub const WG_TILE: usize = 64;
pub const WG_KT: usize = 16;

/// norm.cu and loss.cu: threads per block (one block per row).
pub const NORM_THREADS: u32 = 256;
pub const LOSS_THREADS: u32 = 256;

/// tensor.cu: threads per block, dimensions a shape may have, the column reduction's tile.
pub const TS_THREADS: u32 = 256;
pub const TS_MAX_DIMS: usize = 6;
pub const TS_COL_TILE: usize = 32;
/// tensor.cu: row groups per block of the column reduction (`TS_COL_TILE * TS_COL_GROUPS = TS_THREADS`).
pub const TS_COL_GROUPS: usize = TS_THREADS as usize / TS_COL_TILE;

/// Every constant the kernels read, as `-DNAME=VALUE` compiler options (NVRTC and nvcc).
pub fn defines() -> Vec<String> {
    let values: [(&str, usize); 20] = [
        ("ATT_DMAX", ATT_DMAX),
        ("ATT_BK", ATT_BK),
        ("ATT_WARPS", ATT_WARPS),
        ("ATT_FWD_QPW", ATT_FWD_QPW),
        ("ATT_DQ_QPW", ATT_DQ_QPW),
        ("ATT_DKV_KPW", ATT_DKV_KPW),
        ("LR_THREADS", LR_THREADS as usize),
        ("SHRINK_ROWS", SHRINK_ROWS),
        ("SHRINK_KT", SHRINK_KT),
        ("LR_MAX_RANK", LR_MAX_RANK),
        ("SHRINK_PER_THREAD", SHRINK_PER_THREAD),
        ("EXPAND_ROWS", EXPAND_ROWS),
        ("EXPAND_COLS", EXPAND_COLS),
        ("WG_TILE", WG_TILE),
        ("WG_KT", WG_KT),
        ("NORM_THREADS", NORM_THREADS as usize),
        ("LOSS_THREADS", LOSS_THREADS as usize),
        ("TS_THREADS", TS_THREADS as usize),
        ("TS_MAX_DIMS", TS_MAX_DIMS),
        ("TS_COL_TILE", TS_COL_TILE),
    ];
    let mut out: Vec<String> = values.iter().map(|(n, v)| format!("-D{n}={v}")).collect();
    out.push(format!("-DTS_COL_GROUPS={TS_COL_GROUPS}"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_sizes_hold_and_every_define_is_used_by_a_kernel() {
        assert_eq!(SHRINK_PER_THREAD * LR_THREADS as usize, SHRINK_ROWS * LR_MAX_RANK);
        assert_eq!(TS_COL_TILE * TS_COL_GROUPS, TS_THREADS as usize);
        let all: String = super::super::source::SOURCES.iter().map(|s| s.src).collect();
        for d in defines() {
            let name = d.trim_start_matches("-D").split('=').next().unwrap().to_string();
            assert!(all.contains(&name), "{name} is passed to the compiler but no kernel reads it");
            assert!(!all.contains(&format!("#define {name} ")), "{name} is still defined in a .cu file");
        }
    }
}
