//! RMSNorm as LLaMA defines it: `y = w * x / sqrt(mean(x^2) + eps)`, per row.
//! Without a weight it is the echo path's parameter-free RMSNorm on vectors.

use super::rows_per_task;
use rayon::prelude::*;

/// Forward over `rows` rows of length `dim`. Writes `y` and the per-row reciprocal RMS
/// `rstd`, which backward reuses.
pub fn rmsnorm_forward(x: &[f32], w: Option<&[f32]>, y: &mut [f32], rstd: &mut [f32], dim: usize, eps: f32) {
    let chunk = rows_per_task(dim);
    y.par_chunks_mut(dim * chunk).zip(rstd.par_chunks_mut(chunk)).zip(x.par_chunks(dim * chunk)).for_each(
        |((y, rstd), x)| {
            for ((y, r), x) in y.chunks_mut(dim).zip(rstd.iter_mut()).zip(x.chunks(dim)) {
                let ms = x.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / dim as f64;
                let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
                *r = inv;
                match w {
                    Some(w) => y.iter_mut().zip(x).zip(w).for_each(|((y, x), w)| *y = w * (x * inv)),
                    None => y.iter_mut().zip(x).for_each(|(y, x)| *y = x * inv),
                }
            }
        },
    );
}

/// Backward: `dx = rstd * (g - xhat * mean(g * xhat))` with `g = dy * w`, `xhat = x * rstd`;
/// `dw += sum_rows(dy * xhat)` when asked for.
pub fn rmsnorm_backward(
    dy: &[f32],
    x: &[f32],
    w: Option<&[f32]>,
    rstd: &[f32],
    dx: &mut [f32],
    dw: Option<&mut [f32]>,
    dim: usize,
) {
    let chunk = rows_per_task(dim);
    dx.par_chunks_mut(dim * chunk)
        .zip(dy.par_chunks(dim * chunk))
        .zip(x.par_chunks(dim * chunk))
        .zip(rstd.par_chunks(chunk))
        .for_each(|(((dx, dy), x), rstd)| {
            for (((dx, dy), x), &r) in dx.chunks_mut(dim).zip(dy.chunks(dim)).zip(x.chunks(dim)).zip(rstd) {
                let mut dot = 0.0f64;
                for i in 0..dim {
                    let g = dy[i] * w.map_or(1.0, |w| w[i]);
                    dot += (g * x[i] * r) as f64;
                }
                let mean = (dot / dim as f64) as f32;
                for i in 0..dim {
                    let g = dy[i] * w.map_or(1.0, |w| w[i]);
                    dx[i] = r * (g - x[i] * r * mean);
                }
            }
        });
    if let Some(dw) = dw {
        let partial = dy
            .par_chunks(dim * chunk)
            .zip(x.par_chunks(dim * chunk))
            .zip(rstd.par_chunks(chunk))
            .map(|((dy, x), rstd)| {
                let mut acc = vec![0.0f32; dim];
                for ((dy, x), &r) in dy.chunks(dim).zip(x.chunks(dim)).zip(rstd) {
                    for i in 0..dim {
                        acc[i] += dy[i] * x[i] * r;
                    }
                }
                acc
            })
            .reduce(
                || vec![0.0f32; dim],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        dw.iter_mut().zip(&partial).for_each(|(d, p)| *d += p);
    }
}
