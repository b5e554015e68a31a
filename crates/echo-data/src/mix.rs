//! Mixing several datasets with weights, and a held-out validation split.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use echo_rng::Rng;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MixSource {
    pub path: PathBuf,
    pub weight: f64,
}

/// A weighted mix.
///
/// - `total = None`: the weight multiplies each dataset's size: 1 takes every record once,
///   0.5 a seeded random half, 2.5 every record twice plus a random half.
/// - `total = Some(n)`: weights are proportions of `n` (normalised to sum 1); counts are
///   rounded by largest remainder so they add up to exactly `n`.
///
/// Within a dataset, whole passes are taken first and the remainder is a seeded sample
/// without replacement, so no record repeats more than needed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MixSpec {
    pub sources: Vec<MixSource>,
    #[serde(default)]
    pub total: Option<usize>,
    #[serde(default)]
    pub seed: u64,
}

impl MixSpec {
    /// How many items to take from each source, given their sizes.
    pub fn counts(&self, sizes: &[usize]) -> Result<Vec<usize>> {
        if self.sources.is_empty() {
            return Err(Error::Mix("no sources".into()));
        }
        if sizes.len() != self.sources.len() {
            return Err(Error::Mix(format!("{} sizes for {} sources", sizes.len(), self.sources.len())));
        }
        for (s, &n) in self.sources.iter().zip(sizes) {
            if !(s.weight.is_finite() && s.weight >= 0.0) {
                return Err(Error::Mix(format!(
                    "{}: weight {} (expected a finite number >= 0)",
                    s.path.display(),
                    s.weight
                )));
            }
            if n == 0 && s.weight > 0.0 {
                return Err(Error::Mix(format!("{}: empty dataset with weight {}", s.path.display(), s.weight)));
            }
        }
        let wsum: f64 = self.sources.iter().map(|s| s.weight).sum();
        if wsum <= 0.0 {
            return Err(Error::Mix("all weights are zero".into()));
        }
        let targets: Vec<f64> = match self.total {
            None => self.sources.iter().zip(sizes).map(|(s, &n)| s.weight * n as f64).collect(),
            Some(t) => self.sources.iter().map(|s| s.weight / wsum * t as f64).collect(),
        };
        let mut counts: Vec<usize> = targets.iter().map(|&x| x.floor() as usize).collect();
        let want = match self.total {
            Some(t) => t,
            None => targets.iter().sum::<f64>().round() as usize,
        };
        // Largest remainder; ties to the earlier source.
        let mut order: Vec<usize> = (0..counts.len()).collect();
        order.sort_by(|&a, &b| {
            let (ra, rb) = (targets[a] - targets[a].floor(), targets[b] - targets[b].floor());
            rb.partial_cmp(&ra).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b))
        });
        let mut have: usize = counts.iter().sum();
        for &k in order.iter().cycle().take(order.len() * 2) {
            if have >= want {
                break;
            }
            if targets[k] > counts[k] as f64 {
                counts[k] += 1;
                have += 1;
            }
        }
        Ok(counts)
    }

    /// Mixes per-source item lists: returns `(source, item)` in a seeded shuffled order.
    pub fn apply<T: Clone>(&self, per_source: Vec<Vec<T>>) -> Result<Vec<(usize, T)>> {
        let sizes: Vec<usize> = per_source.iter().map(Vec::len).collect();
        let counts = self.counts(&sizes)?;
        let mut out = Vec::with_capacity(counts.iter().sum());
        for (s, (items, &want)) in per_source.iter().zip(&counts).enumerate() {
            let n = items.len();
            if want == 0 {
                continue;
            }
            for _ in 0..want / n {
                out.extend(items.iter().cloned().map(|x| (s, x)));
            }
            let mut idx: Vec<usize> = (0..n).collect();
            Rng::derive(self.seed, &format!("data.mix/source {s}")).shuffle(&mut idx);
            let mut rest = idx[..want % n].to_vec();
            rest.sort_unstable();
            out.extend(rest.into_iter().map(|i| (s, items[i].clone())));
        }
        Rng::derive(self.seed, "data.mix/order").shuffle(&mut out);
        Ok(out)
    }
}

/// Splits off `n_val` items as a held-out validation set, chosen by a seeded shuffle (as
/// LLM-Adapters' `train_test_split(test_size=val_set_size, shuffle=True, seed=42)`). Both
/// parts keep the input order. `n_val = 0` keeps everything for training.
pub fn split_validation<T>(items: Vec<T>, n_val: usize, seed: u64) -> Result<(Vec<T>, Vec<T>)> {
    let n = items.len();
    if n_val >= n && n_val > 0 {
        return Err(Error::Split(format!("{n_val} validation items out of {n} leaves nothing to train on")));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    Rng::derive(seed, "data.validation").shuffle(&mut idx);
    let mut is_val = vec![false; n];
    for &i in &idx[..n_val] {
        is_val[i] = true;
    }
    let (mut train, mut val) = (Vec::with_capacity(n - n_val), Vec::with_capacity(n_val));
    for (x, v) in items.into_iter().zip(is_val) {
        if v {
            val.push(x);
        } else {
            train.push(x);
        }
    }
    Ok((train, val))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(weights: &[f64], total: Option<usize>) -> MixSpec {
        MixSpec {
            sources: weights
                .iter()
                .enumerate()
                .map(|(i, &w)| MixSource { path: format!("s{i}").into(), weight: w })
                .collect(),
            total,
            seed: 5,
        }
    }

    #[test]
    fn multiplier_weights() {
        assert_eq!(spec(&[1.0, 0.5, 2.5], None).counts(&[10, 10, 4]).unwrap(), vec![10, 5, 10]);
    }

    #[test]
    fn proportional_weights_sum_to_total() {
        let c = spec(&[1.0, 1.0, 1.0], Some(100)).counts(&[5, 50, 500]).unwrap();
        assert_eq!(c.iter().sum::<usize>(), 100);
        assert_eq!(c, vec![34, 33, 33]);
        let c = spec(&[3.0, 1.0], Some(8)).counts(&[1, 1]).unwrap();
        assert_eq!(c, vec![6, 2]);
    }

    #[test]
    fn apply_takes_passes_then_a_sample() {
        let m = spec(&[2.5, 1.0], None).apply(vec![vec![0, 1, 2, 3], vec![10, 11]]).unwrap();
        assert_eq!(m.len(), 12);
        for x in 0..4 {
            let k = m.iter().filter(|(s, v)| *s == 0 && *v == x).count();
            assert!(k == 2 || k == 3, "item {x} taken {k} times");
        }
        assert_eq!(m.iter().filter(|(s, _)| *s == 1).count(), 2);
        // Seeded: same spec, same mix; other seed, other order.
        let again = spec(&[2.5, 1.0], None).apply(vec![vec![0, 1, 2, 3], vec![10, 11]]).unwrap();
        assert_eq!(m, again);
        let mut s2 = spec(&[2.5, 1.0], None);
        s2.seed = 6;
        assert_ne!(m, s2.apply(vec![vec![0, 1, 2, 3], vec![10, 11]]).unwrap());
    }

    #[test]
    fn bad_mixes_are_refused() {
        assert!(spec(&[], None).counts(&[]).is_err());
        assert!(spec(&[-1.0], None).counts(&[3]).is_err());
        assert!(spec(&[f64::NAN], None).counts(&[3]).is_err());
        assert!(spec(&[0.0, 0.0], None).counts(&[3, 3]).is_err());
        assert!(spec(&[1.0], None).counts(&[0]).is_err());
    }

    #[test]
    fn validation_split_by_count() {
        let (train, val) = split_validation((0..100).collect::<Vec<_>>(), 10, 42).unwrap();
        assert_eq!((train.len(), val.len()), (90, 10));
        let mut all: Vec<_> = train.iter().chain(&val).copied().collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert!(train.windows(2).all(|w| w[0] < w[1]) && val.windows(2).all(|w| w[0] < w[1]));
        assert_ne!(val, (0..10).collect::<Vec<_>>(), "the held-out items are a random choice");
        assert_eq!(split_validation((0..100).collect::<Vec<_>>(), 10, 42).unwrap().1, val);
        assert!(split_validation(vec![1, 2], 2, 0).is_err());
        assert_eq!(split_validation(vec![1, 2], 0, 0).unwrap(), (vec![1, 2], vec![]));
    }
}
