//! Finite-difference gradient checking, used by the tests of every op.
//!
//! The op's output is contracted with a fixed random tensor `R` (so every output element
//! matters) and `L = sum(out ⊙ R)` is differentiated both ways: by backward seeded with `R`,
//! and by central differences on each input element. Inputs are f32, so the step is fairly
//! large and the comparison is `|analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|)`.

use crate::{ParamStore, Result, Tape, Var};
use echo_tensor::{Rng, Tensor};

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub eps: f32,
    pub atol: f32,
    pub rtol: f32,
    /// Check at most this many elements per input (chosen at random), to bound run time.
    pub max_elements: usize,
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options { eps: 1e-2, atol: 1e-3, rtol: 2e-2, max_elements: 96, seed: 7 }
    }
}

/// Result for one input.
#[derive(Debug, Clone)]
pub struct InputReport {
    pub checked: usize,
    pub worst_excess: f32,
    pub worst: Option<(usize, f32, f32)>,
    pub max_abs_grad: f32,
}

impl InputReport {
    pub fn passed(&self) -> bool {
        self.worst_excess <= 0.0
    }
}

fn project(out: &Tensor, r: &Tensor) -> f64 {
    out.as_f32().iter().zip(r.as_f32()).map(|(a, b)| *a as f64 * *b as f64).sum()
}

/// Checks the gradients of `f` with respect to every input. `f` must be deterministic.
pub fn check<F>(inputs: &[Tensor], f: F, opts: Options) -> Result<Vec<InputReport>>
where
    F: Fn(&[Var]) -> Result<Var>,
{
    let tape = Tape::new();
    let vars: Vec<Var> = inputs.iter().map(|t| tape.leaf(t.clone())).collect();
    let out = f(&vars)?;
    let mut rng = Rng::new(opts.seed);
    let r = Tensor::randn(out.shape().clone(), 1.0, &mut rng);
    let grads = tape.backward_from(&out, r.clone(), &mut ParamStore::new())?;

    let eval = |inputs: &[Tensor]| -> Result<f64> {
        let t = Tape::inference();
        let vars: Vec<Var> = inputs.iter().map(|x| t.constant(x.clone())).collect();
        Ok(project(f(&vars)?.value(), &r))
    };
    let mut reports = Vec::new();
    for (i, v) in vars.iter().enumerate() {
        let analytic = grads.get(v).map(|g| g.as_f32().to_vec()).unwrap_or_else(|| vec![0.0; inputs[i].numel()]);
        let n = inputs[i].numel();
        let mut idx: Vec<usize> = (0..n).collect();
        if n > opts.max_elements {
            for k in 0..opts.max_elements {
                let j = k + rng.below(n - k);
                idx.swap(k, j);
            }
            idx.truncate(opts.max_elements);
        }
        let mut rep = InputReport {
            checked: idx.len(),
            worst_excess: f32::NEG_INFINITY,
            worst: None,
            max_abs_grad: analytic.iter().fold(0.0f32, |m, g| m.max(g.abs())),
        };
        for &j in &idx {
            let mut probe = inputs.to_vec();
            let base = inputs[i].as_f32()[j];
            probe[i].f32_mut("gradcheck")?[j] = base + opts.eps;
            let plus = eval(&probe)?;
            probe[i].f32_mut("gradcheck")?[j] = base - opts.eps;
            let minus = eval(&probe)?;
            let numeric = ((plus - minus) / (2.0 * opts.eps as f64)) as f32;
            let a = analytic[j];
            let excess = (a - numeric).abs() - (opts.atol + opts.rtol * a.abs().max(numeric.abs()));
            if excess > rep.worst_excess {
                rep.worst_excess = excess;
                rep.worst = Some((j, a, numeric));
            }
        }
        reports.push(rep);
    }
    Ok(reports)
}

/// [`check`], then panics with a readable report unless every input passes and at least one
/// analytic gradient is non-zero (a check of an op that ignores its inputs proves nothing).
pub fn assert_gradients<F>(name: &str, inputs: &[Tensor], f: F, opts: Options)
where
    F: Fn(&[Var]) -> Result<Var>,
{
    let reports = check(inputs, f, opts).unwrap_or_else(|e| panic!("{name}: gradcheck failed to run: {e}"));
    let mut nonzero = false;
    for (i, r) in reports.iter().enumerate() {
        nonzero |= r.max_abs_grad > 0.0;
        if let Some((j, a, n)) = r.worst {
            assert!(r.passed(), "{name}: input {i} element {j}: analytic {a} vs numeric {n} ({r:?})");
        }
    }
    assert!(nonzero, "{name}: every analytic gradient is zero");
}
