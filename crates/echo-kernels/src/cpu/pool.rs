//! Masked mean over the token axis: `out[b] = sum_t m[b,t] x[b,t] / sum_t m[b,t]`.
//! A sample whose mask is all zero pools to the zero vector (and passes no gradient).

use rayon::prelude::*;

fn counts(mask: &[f32], seq: usize) -> Vec<f32> {
    mask.chunks(seq).map(|m| m.iter().sum()).collect()
}

pub fn masked_mean_forward(x: &[f32], mask: &[f32], seq: usize, dim: usize, out: &mut [f32]) {
    let n = counts(mask, seq);
    out.par_chunks_mut(dim).enumerate().for_each(|(b, o)| {
        o.fill(0.0);
        if n[b] == 0.0 {
            return;
        }
        for t in 0..seq {
            let w = mask[b * seq + t] / n[b];
            if w != 0.0 {
                let row = &x[(b * seq + t) * dim..(b * seq + t + 1) * dim];
                o.iter_mut().zip(row).for_each(|(o, x)| *o += w * x);
            }
        }
    });
}

pub fn masked_mean_backward(dout: &[f32], mask: &[f32], seq: usize, dim: usize, dx: &mut [f32]) {
    let n = counts(mask, seq);
    dx.par_chunks_mut(dim).enumerate().for_each(|(bt, d)| {
        let b = bt / seq;
        let w = if n[b] == 0.0 { 0.0 } else { mask[bt] / n[b] };
        d.iter_mut().zip(&dout[b * dim..(b + 1) * dim]).for_each(|(d, g)| *d = w * g);
    });
}
