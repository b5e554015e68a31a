//! Rotary position embedding in HF's "rotate half" layout: for a head vector of size `d`
//! with `h = d/2`, dims `i` and `i + h` rotate together by angle `pos * inv_freq[i]`.

use super::rows_per_task;
use rayon::prelude::*;

/// LLaMA-3 frequency scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// Precomputed cos/sin for positions `0..max_pos`, `half` frequencies each.
#[derive(Clone, Debug)]
pub struct RopeTable {
    pub half: usize,
    pub max_pos: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

/// Inverse frequencies `theta^(-2i/d)`, with LLaMA-3 smoothing when given (as transformers'
/// `_compute_llama3_parameters`).
pub fn inv_freq(head_dim: usize, theta: f64, scaling: Option<Llama3Scaling>) -> Vec<f64> {
    let half = head_dim / 2;
    (0..half)
        .map(|i| {
            let f = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            match scaling {
                None => f,
                Some(s) => {
                    let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
                    let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / s.factor
                    } else {
                        let smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor)
                            / (s.high_freq_factor - s.low_freq_factor);
                        (1.0 - smooth) * f / s.factor + smooth * f
                    }
                }
            }
        })
        .collect()
}

impl RopeTable {
    pub fn new(head_dim: usize, max_pos: usize, theta: f64, scaling: Option<Llama3Scaling>) -> Self {
        let freqs = inv_freq(head_dim, theta, scaling);
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for f in &freqs {
                // HF computes the angle in f32; f64 here is at least as exact.
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        RopeTable { half, max_pos, cos, sin }
    }
}

/// Rotates `x` laid out as `[tokens, heads, 2*half]` in place; token `t` sits at position
/// `pos[t]`. `inverse` rotates by the negative angle, which is exactly the backward pass
/// (a rotation's Jacobian transpose is its inverse).
pub fn rope_apply(x: &mut [f32], pos: &[usize], heads: usize, table: &RopeTable, inverse: bool) {
    let half = table.half;
    let d = 2 * half;
    let row = heads * d;
    let chunk = rows_per_task(row);
    x.par_chunks_mut(row * chunk).zip(pos.par_chunks(chunk)).for_each(|(x, pos)| {
        for (tok, &p) in x.chunks_mut(row).zip(pos) {
            let cos = &table.cos[p * half..(p + 1) * half];
            let sin = &table.sin[p * half..(p + 1) * half];
            for head in tok.chunks_mut(d) {
                let (lo, hi) = head.split_at_mut(half);
                for i in 0..half {
                    let (c, s) = (cos[i], if inverse { -sin[i] } else { sin[i] });
                    let (a, b) = (lo[i], hi[i]);
                    lo[i] = a * c - b * s;
                    hi[i] = b * c + a * s;
                }
            }
        }
    });
}
