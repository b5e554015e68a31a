//! Pointwise activations and SwiGLU (`silu(gate) * up`), forward and backward.

use rayon::prelude::*;

const CHUNK: usize = 16_384;

#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[inline]
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// d silu / dx = s (1 + x (1 - s)), s = sigmoid(x).
#[inline]
pub fn silu_grad(x: f32) -> f32 {
    let s = sigmoid(x);
    s * (1.0 + x * (1.0 - s))
}

pub fn swiglu_forward(gate: &[f32], up: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(CHUNK).zip(gate.par_chunks(CHUNK)).zip(up.par_chunks(CHUNK)).for_each(|((o, g), u)| {
        for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
            *o = silu(*g) * u;
        }
    });
}

pub fn swiglu_backward(dout: &[f32], gate: &[f32], up: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
    dgate
        .par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(dout.par_chunks(CHUNK))
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(((dg, du), d), (g, u))| {
            for i in 0..d.len() {
                dg[i] = d[i] * u[i] * silu_grad(g[i]);
                du[i] = d[i] * silu(g[i]);
            }
        });
}
