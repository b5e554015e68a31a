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
                // One sigmoid for both: the same arithmetic as `silu_grad` and `silu`, one exp
                // fewer per element.
                let (x, s) = (g[i], sigmoid(g[i]));
                dg[i] = d[i] * u[i] * (s * (1.0 + x * (1.0 - s)));
                du[i] = d[i] * (x * s);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared-sigmoid backward is bit for bit `silu_grad` and `silu`.
    #[test]
    fn swiglu_backward_matches_the_scalar_formulas_exactly() {
        let n = 40_000; // more than two chunks
        let gate: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 9.0).collect();
        let up: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos() * 2.0).collect();
        let dout: Vec<f32> = (0..n).map(|i| ((i % 17) as f32 - 8.0) * 0.25).collect();
        let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
        swiglu_backward(&dout, &gate, &up, &mut dg, &mut du);
        for i in 0..n {
            assert_eq!(dg[i].to_bits(), (dout[i] * up[i] * silu_grad(gate[i])).to_bits(), "dgate[{i}]");
            assert_eq!(du[i].to_bits(), (dout[i] * silu(gate[i])).to_bits(), "dup[{i}]");
        }
    }
}
