//! Paired comparison of two evaluations on the same test records (one study arm against its
//! reference arm): per dataset and on the macro average over datasets, the accuracy of each,
//! the difference in percentage points with a paired bootstrap 95% interval, and McNemar's
//! exact test on the discordant records.
//!
//! - **Pairing.** Records are matched by (dataset, index in the dataset's test.json); the two
//!   evaluations must cover exactly the same records ([`pair_records`]).
//! - **Bootstrap.** Each resample draws every dataset's records with replacement (as many as
//!   it has), the pair of outcomes travelling together, and takes the difference of the two
//!   accuracies; the average's resample is the mean of the datasets' resampled differences
//!   (the unweighted macro average the study's table uses). The interval is the 2.5% and 97.5%
//!   percentiles (linear interpolation between order statistics) of [`RESAMPLES`] resamples,
//!   drawn from `Rng::derive(SEED, "paired bootstrap")`, so a table is reproducible.
//! - **McNemar.** With b records only the reference got right and c only the arm, under "no
//!   difference" each discordant record is a fair coin: p = min(1, 2 P(X <= min(b, c))),
//!   X ~ Binomial(b + c, 1/2), summed in log space (no overflow for thousands of pairs). The
//!   average's test pools the discordant records of every dataset.

use echo_eval::Prediction;
use echo_tensor::Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Bootstrap resamples behind every interval.
pub const RESAMPLES: usize = 10_000;
/// The bootstrap's seed (fixed: the same reports give the same table).
pub const SEED: u64 = 20_240_518;

/// One dataset's records, paired: (reference correct, arm correct), in record-index order.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetPairs {
    pub name: String,
    pub pairs: Vec<(bool, bool)>,
}

impl DatasetPairs {
    /// (b, c): records only the reference got right, records only the arm got right.
    fn discordant(&self) -> (usize, usize) {
        let b = self.pairs.iter().filter(|&&(r, a)| r && !a).count();
        let c = self.pairs.iter().filter(|&&(r, a)| !r && a).count();
        (b, c)
    }
    fn accuracies(&self) -> (f64, f64) {
        let n = self.pairs.len().max(1) as f64;
        let r = self.pairs.iter().filter(|p| p.0).count() as f64;
        let a = self.pairs.iter().filter(|p| p.1).count() as f64;
        (r / n, a / n)
    }
}

/// Matches the predictions of two evaluations by (dataset, index). Datasets come in the order
/// the reference's predictions first name them. An error (naming the side, the dataset and
/// the first few records) when a record is in one and not the other, or listed twice.
pub fn pair_records(reference: &[Prediction], arm: &[Prediction]) -> anyhow::Result<Vec<DatasetPairs>> {
    fn index<'a>(side: &str, preds: &'a [Prediction]) -> anyhow::Result<BTreeMap<(&'a str, usize), bool>> {
        let mut m = BTreeMap::new();
        for p in preds {
            if m.insert((p.dataset.as_str(), p.index), p.correct).is_some() {
                anyhow::bail!("the {side} lists {} record {} twice", p.dataset, p.index);
            }
        }
        Ok(m)
    }
    let r = index("reference", reference)?;
    let a = index("arm", arm)?;
    let describe = |keys: Vec<&(&str, usize)>| {
        let shown: Vec<String> = keys.iter().take(5).map(|(d, i)| format!("{d} {i}")).collect();
        format!("{} record(s) ({}{})", keys.len(), shown.join(", "), if keys.len() > 5 { ", ..." } else { "" })
    };
    let only_r: Vec<_> = r.keys().filter(|k| !a.contains_key(*k)).collect();
    let only_a: Vec<_> = a.keys().filter(|k| !r.contains_key(*k)).collect();
    if !only_r.is_empty() || !only_a.is_empty() {
        let mut parts = Vec::new();
        if !only_r.is_empty() {
            parts.push(format!("only the reference has {}", describe(only_r)));
        }
        if !only_a.is_empty() {
            parts.push(format!("only the arm has {}", describe(only_a)));
        }
        anyhow::bail!(
            "the two evaluations do not cover the same test records: {} (evaluate both with the same datasets \
             and limit)",
            parts.join("; ")
        );
    }
    let mut order: Vec<&str> = Vec::new();
    let mut seen = BTreeSet::new();
    for p in reference {
        if seen.insert(p.dataset.as_str()) {
            order.push(&p.dataset);
        }
    }
    Ok(order
        .into_iter()
        .map(|name| DatasetPairs {
            name: name.to_string(),
            pairs: r.range((name, 0)..=(name, usize::MAX)).map(|(k, &rc)| (rc, a[k])).collect(),
        })
        .collect())
}

/// McNemar's exact test, two-sided: p = min(1, 2 P(X <= min(b, c))), X ~ Binomial(b + c, 1/2).
/// The binomial terms are formed and summed in log space (log-sum-exp), so b + c in the
/// thousands neither overflows nor loses the tail; b = c = 0 gives 1.
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    let m = b.min(c);
    // ln P(X = k) for k = 0..=m: ln P(0) = -n ln 2, P(k+1) = P(k) (n - k) / (k + 1).
    let mut logs = Vec::with_capacity(m + 1);
    let mut l = -(n as f64) * std::f64::consts::LN_2;
    logs.push(l);
    for k in 0..m {
        l += ((n - k) as f64).ln() - ((k + 1) as f64).ln();
        logs.push(l);
    }
    // k <= m <= n/2: the terms grow with k, so the last is the largest.
    let top = logs[m];
    let tail = top + logs.iter().map(|x| (x - top).exp()).sum::<f64>().ln();
    (std::f64::consts::LN_2 + tail).exp().min(1.0)
}

/// The `q` quantile of sorted values, linear interpolation between order statistics.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// One comparison row: a dataset, or the average over datasets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairedStat {
    /// The dataset's name, or `average` (the macro average over datasets).
    pub dataset: String,
    /// Records compared.
    pub records: usize,
    pub reference_accuracy: f64,
    pub arm_accuracy: f64,
    /// arm − reference, percentage points.
    pub difference_pp: f64,
    /// Paired bootstrap 95% interval of the difference, percentage points.
    pub interval_pp: [f64; 2],
    /// Records only the reference got right.
    pub b: usize,
    /// Records only the arm got right.
    pub c: usize,
    /// McNemar's exact two-sided p-value on b and c.
    pub mcnemar_p: f64,
}

impl PairedStat {
    /// The interval contains 0: reported as "no difference".
    pub fn no_difference(&self) -> bool {
        self.interval_pp[0] <= 0.0 && 0.0 <= self.interval_pp[1]
    }
}

/// Every dataset's comparison and the average's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub datasets: Vec<PairedStat>,
    pub average: PairedStat,
    pub bootstrap_resamples: usize,
    pub bootstrap_seed: u64,
}

/// Compares paired outcomes: per dataset and on the macro average (over the datasets with at
/// least one record), with `resamples` bootstrap resamples from `seed`.
pub fn compare(data: &[DatasetPairs], resamples: usize, seed: u64) -> Comparison {
    assert!(resamples >= 2, "a bootstrap interval needs at least 2 resamples");
    let data: Vec<&DatasetPairs> = data.iter().filter(|d| !d.pairs.is_empty()).collect();
    // A resample only needs, per dataset, how many of its n draws land on a b record (−1)
    // and how many on a c record (+1): draw an index, the first b indices being the b
    // records and the next c the c records.
    let counts: Vec<(usize, usize, usize)> = data
        .iter()
        .map(|d| {
            let (b, c) = d.discordant();
            (d.pairs.len(), b, c)
        })
        .collect();
    let mut rng = Rng::derive(seed, "paired bootstrap");
    let mut per_dataset: Vec<Vec<f64>> = vec![Vec::with_capacity(resamples); data.len()];
    let mut average = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        let mut sum = 0.0;
        for (j, &(n, b, c)) in counts.iter().enumerate() {
            let diff = if b + c == 0 {
                0.0
            } else {
                let (mut nb, mut nc) = (0i64, 0i64);
                for _ in 0..n {
                    let i = rng.below(n);
                    if i < b {
                        nb += 1;
                    } else if i < b + c {
                        nc += 1;
                    }
                }
                (nc - nb) as f64 / n as f64
            };
            per_dataset[j].push(diff);
            sum += diff;
        }
        average.push(if data.is_empty() { 0.0 } else { sum / data.len() as f64 });
    }
    let interval = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        [100.0 * quantile(&xs, 0.025), 100.0 * quantile(&xs, 0.975)]
    };
    let stats: Vec<PairedStat> = data
        .iter()
        .zip(per_dataset)
        .map(|(d, xs)| {
            let (b, c) = d.discordant();
            let (r, a) = d.accuracies();
            PairedStat {
                dataset: d.name.clone(),
                records: d.pairs.len(),
                reference_accuracy: r,
                arm_accuracy: a,
                difference_pp: 100.0 * (a - r),
                interval_pp: interval(xs),
                b,
                c,
                mcnemar_p: mcnemar_exact(b, c),
            }
        })
        .collect();
    let k = stats.len().max(1) as f64;
    let (b, c) = (stats.iter().map(|s| s.b).sum(), stats.iter().map(|s| s.c).sum());
    let (r, a) = (
        stats.iter().map(|s| s.reference_accuracy).sum::<f64>() / k,
        stats.iter().map(|s| s.arm_accuracy).sum::<f64>() / k,
    );
    let avg = PairedStat {
        dataset: "average".into(),
        records: stats.iter().map(|s| s.records).sum(),
        reference_accuracy: r,
        arm_accuracy: a,
        difference_pp: 100.0 * (a - r),
        interval_pp: interval(average),
        b,
        c,
        mcnemar_p: mcnemar_exact(b, c),
    };
    Comparison { datasets: stats, average: avg, bootstrap_resamples: resamples, bootstrap_seed: seed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pred(dataset: &str, index: usize, correct: bool) -> Prediction {
        Prediction {
            dataset: dataset.into(),
            index,
            answer: "a".into(),
            prediction: Some(if correct { "a" } else { "b" }.into()),
            correct,
            output: None,
            scores: None,
        }
    }

    /// Two-sided exact p from integer binomial coefficients (Pascal's triangle in u128): an
    /// independent computation for small b + c.
    fn exact_small(b: usize, c: usize) -> f64 {
        let n = b + c;
        let mut row = vec![1u128];
        for _ in 0..n {
            let mut next = vec![1u128; row.len() + 1];
            for k in 1..row.len() {
                next[k] = row[k - 1] + row[k];
            }
            row = next;
        }
        let tail: u128 = row[..=b.min(c)].iter().sum();
        (2.0 * tail as f64 / 2f64.powi(n as i32)).min(1.0)
    }

    #[test]
    fn mcnemar_matches_hand_computed_values() {
        // b=0, c=5: 2 * (1/2)^5.
        assert_eq!(mcnemar_exact(0, 5), 0.0625);
        assert_eq!(mcnemar_exact(5, 0), 0.0625);
        // b=10, c=20: 2 * sum_{k<=10} C(30, k) / 2^30 = 2 * 53009102 / 1073741824.
        let p = mcnemar_exact(10, 20);
        assert!((p - 2.0 * 53_009_102.0 / 1_073_741_824.0).abs() < 1e-12, "{p}");
        assert!((p - 0.0987371467).abs() < 1e-9, "{p}");
        // b=2, c=7: 2 * (1 + 9 + 36) / 512 = 23/128.
        assert!((mcnemar_exact(2, 7) - 23.0 / 128.0).abs() < 1e-14);
        // No discordant pairs, or as many each way: no evidence at all.
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        for b in 0..25 {
            for c in 0..25 {
                let (x, y) = (mcnemar_exact(b, c), exact_small(b, c));
                assert!((x - y).abs() <= 1e-12 * y.max(1e-300), "b={b} c={c}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn mcnemar_holds_for_thousands_of_discordant_pairs() {
        // b=0, c=1000: 2^-999 (far below what the linear-space terms could hold).
        let p = mcnemar_exact(0, 1000);
        assert!((p / 2f64.powi(-999) - 1.0).abs() < 1e-9, "{p:e}");
        // b=1, c=1000: 2 (1 + 1001) / 2^1001.
        let p = mcnemar_exact(1, 1000);
        assert!((p / (2004.0 * 2f64.powi(-1001)) - 1.0).abs() < 1e-9, "{p:e}");
        // b=1000, c=1200: 2.1817026407914712e-05, from Python's exact integers
        // (2 * sum(math.comb(2200, k) for k in range(1001)) / 2**2200).
        let p = mcnemar_exact(1000, 1200);
        assert!((p / 2.1817026407914712e-05 - 1.0).abs() < 1e-9, "{p:e}");
        assert_eq!(mcnemar_exact(2000, 2000), 1.0);
        assert!(mcnemar_exact(3000, 3100).is_finite());
    }

    #[test]
    fn identical_records_give_a_zero_interval() {
        let d = DatasetPairs { name: "x".into(), pairs: (0..50).map(|i| (i % 3 == 0, i % 3 == 0)).collect() };
        let c = compare(&[d.clone(), d], 1000, 1);
        for s in c.datasets.iter().chain([&c.average]) {
            assert_eq!(s.difference_pp, 0.0);
            assert_eq!(s.interval_pp, [0.0, 0.0]);
            assert_eq!((s.b, s.c, s.mcnemar_p), (0, 0, 1.0));
            assert!(s.no_difference());
        }
    }

    /// Records drawn independently with accuracies `p_ref` and `p_arm` (true difference
    /// `p_arm - p_ref`).
    fn synthetic(n: usize, p_ref: f32, p_arm: f32, rng: &mut Rng) -> DatasetPairs {
        DatasetPairs { name: "s".into(), pairs: (0..n).map(|_| (rng.bernoulli(p_ref), rng.bernoulli(p_arm))).collect() }
    }

    #[test]
    fn the_interval_covers_a_known_difference_and_has_the_binomial_width() {
        let mut rng = Rng::new(7);
        let d = synthetic(4000, 0.60, 0.65, &mut rng);
        let c = compare(std::slice::from_ref(&d), RESAMPLES, SEED);
        let s = &c.datasets[0];
        let [lo, hi] = s.interval_pp;
        assert!(lo < 5.0 && 5.0 < hi, "true +5 pp not in [{lo}, {hi}]");
        assert!(lo > 0.0 && !s.no_difference(), "a 5 pp difference on 4000 records is resolved: [{lo}, {hi}]");
        // Independent records: the difference's standard error is sqrt(var(arm - ref) / n).
        let n = d.pairs.len() as f64;
        let diffs: Vec<f64> = d.pairs.iter().map(|&(r, a)| a as u8 as f64 - r as u8 as f64).collect();
        let mean = diffs.iter().sum::<f64>() / n;
        let se = (diffs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n / n).sqrt();
        let width = (hi - lo) / 100.0;
        assert!((width / (2.0 * 1.96 * se) - 1.0).abs() < 0.06, "width {width} vs normal {}", 2.0 * 1.96 * se);
        assert!((s.difference_pp - 100.0 * mean).abs() < 1e-9);
        assert!(s.mcnemar_p < 0.05, "{}", s.mcnemar_p);
    }

    #[test]
    fn the_interval_covers_the_truth_about_95_percent_of_the_time() {
        let mut rng = Rng::new(11);
        let (trials, mut covered) = (200, 0);
        for t in 0..trials {
            let d = synthetic(150, 0.5, 0.6, &mut rng);
            let [lo, hi] = compare(&[d], 1000, t).datasets[0].interval_pp;
            covered += (lo <= 10.0 && 10.0 <= hi) as usize;
        }
        // Binomial(200, 0.95) lies in [180, 198] with probability > 0.999.
        assert!((180..=198).contains(&covered), "covered {covered}/{trials}");
    }

    #[test]
    fn the_average_resamples_within_each_dataset_and_averages_them() {
        let mut rng = Rng::new(5);
        // A large dataset 10 pp apart and a small one 0 pp apart: the macro average is 5 pp,
        // its standard error sqrt(se1^2 + se2^2) / 2.
        let a = DatasetPairs { name: "big".into(), ..synthetic(3000, 0.5, 0.6, &mut rng) };
        let b = DatasetPairs { name: "small".into(), ..synthetic(300, 0.7, 0.7, &mut rng) };
        let c = compare(&[a.clone(), b.clone()], RESAMPLES, SEED);
        let mean_of = |x: &PairedStat, y: &PairedStat| (x.difference_pp + y.difference_pp) / 2.0;
        assert!((c.average.difference_pp - mean_of(&c.datasets[0], &c.datasets[1])).abs() < 1e-9);
        assert_eq!(c.average.records, 3300);
        assert_eq!((c.average.b, c.average.c), (c.datasets[0].b + c.datasets[1].b, c.datasets[0].c + c.datasets[1].c));
        let [lo, hi] = c.average.interval_pp;
        assert!(lo < 5.0 && 5.0 < hi, "[{lo}, {hi}]");
        let w = |s: &PairedStat| (s.interval_pp[1] - s.interval_pp[0]) / 2.0;
        let expected = (w(&c.datasets[0]).powi(2) + w(&c.datasets[1]).powi(2)).sqrt() / 2.0;
        assert!(((hi - lo) / 2.0 / expected - 1.0).abs() < 0.08, "{} vs {expected}", (hi - lo) / 2.0);
        // Pooling the records into one set (a micro average) would give a narrower interval,
        // dominated by the big set; the macro average weighs the small set as much.
        let pooled = DatasetPairs { name: "pooled".into(), pairs: [a.pairs.clone(), b.pairs.clone()].concat() };
        let pooled = compare(&[pooled], RESAMPLES, SEED);
        let wp = w(&pooled.datasets[0]);
        assert!((hi - lo) / 2.0 > 1.3 * wp, "{} vs pooled {wp}", (hi - lo) / 2.0);
        // Reproducible: the same seed gives the same table, another seed another interval.
        assert_eq!(compare(&[a.clone(), b.clone()], RESAMPLES, SEED), c);
        assert_ne!(compare(&[a, b], RESAMPLES, SEED + 1).average.interval_pp, c.average.interval_pp);
    }

    #[test]
    fn records_pair_by_dataset_and_index() {
        let r = vec![pred("A", 0, true), pred("A", 1, false), pred("B", 0, true), pred("B", 5, true)];
        // The arm lists them in another order.
        let a = vec![pred("B", 5, false), pred("A", 1, true), pred("B", 0, true), pred("A", 0, true)];
        let p = pair_records(&r, &a).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0], DatasetPairs { name: "A".into(), pairs: vec![(true, true), (false, true)] });
        assert_eq!(p[1], DatasetPairs { name: "B".into(), pairs: vec![(true, true), (true, false)] });
        let c = compare(&p, 200, 0);
        assert_eq!((c.datasets[0].b, c.datasets[0].c), (0, 1));
        assert_eq!((c.datasets[1].b, c.datasets[1].c), (1, 0));
        assert!((c.datasets[0].difference_pp - 50.0).abs() < 1e-12);
        assert!((c.datasets[1].difference_pp + 50.0).abs() < 1e-12);
    }

    #[test]
    fn mismatched_records_are_an_error() {
        let r = vec![pred("A", 0, true), pred("A", 1, false), pred("B", 0, true)];
        // The arm misses B 0 and has A 2.
        let e =
            pair_records(&r, &[pred("A", 0, true), pred("A", 1, true), pred("A", 2, true)]).unwrap_err().to_string();
        assert!(e.contains("do not cover the same test records"), "{e}");
        assert!(e.contains("only the reference has 1 record(s) (B 0)"), "{e}");
        assert!(e.contains("only the arm has 1 record(s) (A 2)"), "{e}");
        // Another dataset name.
        let e =
            pair_records(&r, &[pred("A", 0, true), pred("A", 1, true), pred("b", 0, true)]).unwrap_err().to_string();
        assert!(e.contains("B 0") && e.contains("b 0"), "{e}");
        // A record listed twice.
        let e =
            pair_records(&r, &[pred("A", 0, true), pred("A", 0, true), pred("B", 0, true)]).unwrap_err().to_string();
        assert!(e.contains("the arm lists A record 0 twice"), "{e}");
        // Fewer records (another limit).
        let e = pair_records(&r, &r[..2]).unwrap_err().to_string();
        assert!(e.contains("only the reference has 1 record(s) (B 0)"), "{e}");
    }
}
