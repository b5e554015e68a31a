//! ggml tensor types: their block sizes, dequantisation to f32, and llama.cpp's reference
//! quantisers for the simple block formats (used by tests and the GGUF writer).
//!
//! A quantised ggml row is a sequence of blocks of 32 (or, for the K-quants, 256) values,
//! each block carrying an f16 scale (and, for the `_1` / K formats, an f16 minimum) and the
//! packed integer codes. The layouts and the arithmetic below follow ggml's
//! `dequantize_row_*` exactly (`ggml-quants.c`), so our f32 values are the ones llama.cpp
//! computes. Dequantising is exact: every value is `d * q (+ m)` with `d`, `m` f16 and `q` a
//! small integer, which f32 represents without rounding (except where ggml itself computes
//! `d * sc` in f32 first, which we mirror).

use half::{bf16, f16};

/// A ggml tensor type (`enum ggml_type`). Only the ones with a known block layout are listed;
/// an unknown code is a format error when the file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

/// `(type, code, name, values per block, bytes per block)`, as ggml's `type_traits`.
const TABLE: &[(GgmlType, u32, &str, usize, usize)] = &[
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "Q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "Q8_0", 32, 34),
    (GgmlType::Q8_1, 9, "Q8_1", 32, 40),
    (GgmlType::Q2_K, 10, "Q2_K", 256, 84),
    (GgmlType::Q3_K, 11, "Q3_K", 256, 110),
    (GgmlType::Q4_K, 12, "Q4_K", 256, 144),
    (GgmlType::Q5_K, 13, "Q5_K", 256, 176),
    (GgmlType::Q6_K, 14, "Q6_K", 256, 210),
    (GgmlType::Q8_K, 15, "Q8_K", 256, 292),
    (GgmlType::IQ2_XXS, 16, "IQ2_XXS", 256, 66),
    (GgmlType::IQ2_XS, 17, "IQ2_XS", 256, 74),
    (GgmlType::IQ3_XXS, 18, "IQ3_XXS", 256, 98),
    (GgmlType::IQ1_S, 19, "IQ1_S", 256, 50),
    (GgmlType::IQ4_NL, 20, "IQ4_NL", 32, 18),
    (GgmlType::IQ3_S, 21, "IQ3_S", 256, 110),
    (GgmlType::IQ2_S, 22, "IQ2_S", 256, 82),
    (GgmlType::IQ4_XS, 23, "IQ4_XS", 256, 136),
    (GgmlType::I8, 24, "I8", 1, 1),
    (GgmlType::I16, 25, "I16", 1, 2),
    (GgmlType::I32, 26, "I32", 1, 4),
    (GgmlType::I64, 27, "I64", 1, 8),
    (GgmlType::F64, 28, "F64", 1, 8),
    (GgmlType::IQ1_M, 29, "IQ1_M", 256, 56),
    (GgmlType::BF16, 30, "BF16", 1, 2),
    (GgmlType::TQ1_0, 34, "TQ1_0", 256, 54),
    (GgmlType::TQ2_0, 35, "TQ2_0", 256, 66),
    (GgmlType::MXFP4, 39, "MXFP4", 32, 17),
];

/// The types [`dequantize`] handles.
pub const SUPPORTED: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::F64,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

impl GgmlType {
    fn row(self) -> &'static (GgmlType, u32, &'static str, usize, usize) {
        TABLE.iter().find(|r| r.0 == self).expect("every variant is in TABLE")
    }
    pub fn from_code(code: u32) -> Option<Self> {
        TABLE.iter().find(|r| r.1 == code).map(|r| r.0)
    }
    pub fn code(self) -> u32 {
        self.row().1
    }
    pub fn name(self) -> &'static str {
        self.row().2
    }
    /// `(values per block, bytes per block)`.
    pub fn block(self) -> (usize, usize) {
        let r = self.row();
        (r.3, r.4)
    }
}

fn h(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Dequantises `n` values of type `t` from `bytes` (exactly `n / block * block_bytes` long).
/// Returns a message naming the type when it is not supported.
pub fn dequantize(t: GgmlType, bytes: &[u8], n: usize) -> std::result::Result<Vec<f32>, String> {
    let (block, bb) = t.block();
    if !n.is_multiple_of(block) || bytes.len() != n / block * bb {
        return Err(format!("{} data of {} bytes does not hold {n} values", t.name(), bytes.len()));
    }
    let mut out = vec![0.0f32; n];
    let blocks = bytes.chunks_exact(bb).zip(out.chunks_exact_mut(block));
    match t {
        GgmlType::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = h(b, 0)),
        GgmlType::BF16 => blocks.for_each(|(b, y)| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlType::F64 => blocks.for_each(|(b, y)| y[0] = f64::from_le_bytes(b.try_into().unwrap()) as f32),
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| {
            let d = h(b, 0);
            for j in 0..16 {
                y[j] = ((b[2 + j] & 0x0F) as i32 - 8) as f32 * d;
                y[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
            }
        }),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| {
            let (d, m) = (h(b, 0), h(b, 2));
            for j in 0..16 {
                y[j] = (b[4 + j] & 0x0F) as f32 * d + m;
                y[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
            }
        }),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| {
            let d = h(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for j in 0..16 {
                let xh0 = (((qh >> j) << 4) & 0x10) as u8;
                let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
                y[j] = (((b[6 + j] & 0x0F) | xh0) as i32 - 16) as f32 * d;
                y[j + 16] = (((b[6 + j] >> 4) | xh1) as i32 - 16) as f32 * d;
            }
        }),
        GgmlType::Q5_1 => blocks.for_each(|(b, y)| {
            let (d, m) = (h(b, 0), h(b, 2));
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            for j in 0..16 {
                let xh0 = (((qh >> j) << 4) & 0x10) as u8;
                let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
                y[j] = ((b[8 + j] & 0x0F) | xh0) as f32 * d + m;
                y[j + 16] = ((b[8 + j] >> 4) | xh1) as f32 * d + m;
            }
        }),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| {
            let d = h(b, 0);
            for j in 0..32 {
                y[j] = (b[2 + j] as i8) as f32 * d;
            }
        }),
        GgmlType::Q4_K => blocks.for_each(|(b, y)| {
            let (d, min) = (h(b, 0), h(b, 2));
            let scales = &b[4..16];
            let q = &b[16..144];
            for (c, j) in (0..256).step_by(64).enumerate() {
                let (sc1, m1) = scale_min_k4(2 * c, scales);
                let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
                let (d1, m1, d2, m2) = (d * sc1 as f32, min * m1 as f32, d * sc2 as f32, min * m2 as f32);
                let q = &q[32 * c..32 * c + 32];
                for l in 0..32 {
                    y[j + l] = d1 * (q[l] & 0x0F) as f32 - m1;
                    y[j + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
                }
            }
        }),
        GgmlType::Q5_K => blocks.for_each(|(b, y)| {
            let (d, min) = (h(b, 0), h(b, 2));
            let scales = &b[4..16];
            let qh = &b[16..48];
            let ql = &b[48..176];
            let (mut u1, mut u2) = (1u8, 2u8);
            for (c, j) in (0..256).step_by(64).enumerate() {
                let (sc1, m1) = scale_min_k4(2 * c, scales);
                let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
                let (d1, m1, d2, m2) = (d * sc1 as f32, min * m1 as f32, d * sc2 as f32, min * m2 as f32);
                let ql = &ql[32 * c..32 * c + 32];
                for l in 0..32 {
                    let hi1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                    let hi2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                    y[j + l] = d1 * ((ql[l] & 0x0F) + hi1) as f32 - m1;
                    y[j + 32 + l] = d2 * ((ql[l] >> 4) + hi2) as f32 - m2;
                }
                u1 <<= 2;
                u2 <<= 2;
            }
        }),
        GgmlType::Q6_K => blocks.for_each(|(b, y)| {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = h(b, 208);
            for half in 0..2 {
                let (ql, qh, sc, y) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..], &mut y[128 * half..]);
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }),
        other => {
            let names: Vec<&str> = SUPPORTED.iter().map(|t| t.name()).collect();
            return Err(format!(
                "GGML tensor type {} is not supported (supported: {})",
                other.name(),
                names.join(", ")
            ));
        }
    }
    Ok(out)
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` of a Q4_K/Q5_K block.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

// ---- Reference quantisers (llama.cpp's `quantize_row_*_ref`), for tests and fixtures. ----

/// The signed value of largest magnitude in a block (ties: the first), as llama.cpp picks it.
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter().fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

fn inv(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Quantises `x` (a multiple of the block size long) into type `t`: F32, F16, BF16, Q4_0, Q4_1,
/// Q5_0, Q5_1 and Q8_0. Panics on other types (a test helper, not a user path).
pub fn quantize(t: GgmlType, x: &[f32]) -> Vec<u8> {
    let (block, _) = t.block();
    assert!(x.len().is_multiple_of(block), "quantize: {} values are not whole {} blocks", x.len(), t.name());
    let mut out = Vec::new();
    for x in x.chunks_exact(block) {
        match t {
            GgmlType::F32 => out.extend(x[0].to_le_bytes()),
            GgmlType::F16 => out.extend(f16::from_f32(x[0]).to_le_bytes()),
            GgmlType::BF16 => out.extend(bf16::from_f32(x[0]).to_le_bytes()),
            GgmlType::Q4_0 => {
                let d = signed_absmax(x) / -8.0;
                let id = inv(d);
                out.extend(f16::from_f32(d).to_le_bytes());
                for j in 0..16 {
                    let q0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
                    let q1 = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
                    out.push(q0 | (q1 << 4));
                }
            }
            GgmlType::Q4_1 => {
                let (lo, hi) = min_max(x);
                let d = (hi - lo) / 15.0;
                let id = inv(d);
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(f16::from_f32(lo).to_le_bytes());
                for j in 0..16 {
                    let q0 = (((x[j] - lo) * id + 0.5) as i8).min(15) as u8;
                    let q1 = (((x[j + 16] - lo) * id + 0.5) as i8).min(15) as u8;
                    out.push(q0 | (q1 << 4));
                }
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                let one = t == GgmlType::Q5_1;
                let (d, m) = if one {
                    let (lo, hi) = min_max(x);
                    ((hi - lo) / 31.0, lo)
                } else {
                    (signed_absmax(x) / -16.0, 0.0)
                };
                let id = inv(d);
                out.extend(f16::from_f32(d).to_le_bytes());
                if one {
                    out.extend(f16::from_f32(m).to_le_bytes());
                }
                let code = |v: f32| -> u32 {
                    if one {
                        ((v - m) * id + 0.5) as u8 as u32
                    } else {
                        ((v * id + 16.5) as i8).min(31) as u32
                    }
                };
                let mut qh = 0u32;
                let mut qs = [0u8; 16];
                for j in 0..16 {
                    let (q0, q1) = (code(x[j]), code(x[j + 16]));
                    qs[j] = ((q0 & 0x0F) | ((q1 & 0x0F) << 4)) as u8;
                    qh |= ((q0 & 0x10) >> 4) << j;
                    qh |= ((q1 & 0x10) >> 4) << (j + 16);
                }
                out.extend(qh.to_le_bytes());
                out.extend(qs);
            }
            GgmlType::Q8_0 => {
                let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = inv(d);
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
            }
            other => panic!("quantize: no reference quantiser for {}", other.name()),
        }
    }
    out
}
