//! Interleaved, paired timing of two implementations of the same work: the yardstick
//! `gemm_paired` uses to compare our GEMM with OpenBLAS inside one process.
//!
//! Why not two separate runs (criterion, then numpy)? On a shared 2-vCPU virtual machine the
//! speed of the cores drifts by 10-25% over tens of seconds (neighbours on the host), so two
//! runs made a minute apart compare two different machines. Here every round times one call
//! of each, back to back, in alternating order, and the statistic is the median over rounds
//! of the per-round ratio: drift that is slow compared to a round cancels out.

use std::time::Instant;

/// Per-call seconds of both sides over all rounds, in round order.
#[derive(Clone, Debug, Default)]
pub struct Paired {
    pub ours: Vec<f64>,
    pub reference: Vec<f64>,
}

/// Quartiles (25th, 50th, 75th percentile, nearest rank) of `v`.
///
/// # Panics
/// If `v` is empty or holds a NaN.
pub fn quartiles(v: &[f64]) -> [f64; 3] {
    assert!(!v.is_empty(), "quartiles of nothing");
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).expect("NaN timing"));
    let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    [at(0.25), at(0.5), at(0.75)]
}

impl Paired {
    /// Runs `rounds` rounds; each times one call of `ours` and one of `reference`, ours first
    /// in even rounds and second in odd ones (so neither side always inherits the other's
    /// cache state or thread wake-ups).
    pub fn run(rounds: usize, mut ours: impl FnMut(), mut reference: impl FnMut()) -> Paired {
        let time = |f: &mut dyn FnMut()| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        };
        let mut p = Paired::default();
        for round in 0..rounds {
            if round % 2 == 0 {
                p.ours.push(time(&mut ours));
                p.reference.push(time(&mut reference));
            } else {
                p.reference.push(time(&mut reference));
                p.ours.push(time(&mut ours));
            }
        }
        p
    }

    /// Median seconds of (ours, reference) in the rounds where that side ran first, and in
    /// those where it ran second: a check that neither side slows the other down (a pool of
    /// threads still spinning after its call, say), which the alternation alone would hide.
    pub fn by_position(&self) -> [[f64; 2]; 2] {
        let pick = |v: &[f64], parity: usize| v.iter().skip(parity).step_by(2).copied().collect::<Vec<_>>();
        // Even rounds: ours first, reference second.
        [
            [quartiles(&pick(&self.ours, 0))[1], quartiles(&pick(&self.ours, 1))[1]],
            [quartiles(&pick(&self.reference, 1))[1], quartiles(&pick(&self.reference, 0))[1]],
        ]
    }

    /// Per-round speed of ours relative to the reference (`reference time / our time`: above 1,
    /// ours is faster).
    pub fn ratios(&self) -> Vec<f64> {
        self.ours.iter().zip(&self.reference).map(|(o, r)| r / o).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_nearest_rank() {
        assert_eq!(quartiles(&[3.0, 1.0, 2.0, 5.0, 4.0]), [2.0, 3.0, 4.0]);
        assert_eq!(quartiles(&[7.0]), [7.0, 7.0, 7.0]);
    }

    #[test]
    fn rounds_alternate_sides() {
        let order = std::cell::RefCell::new(String::new());
        let p = Paired::run(4, || order.borrow_mut().push('o'), || order.borrow_mut().push('r'));
        assert_eq!(order.into_inner(), "orroorro");
        assert_eq!((p.ours.len(), p.reference.len()), (4, 4));
    }

    #[test]
    fn ratio_is_reference_time_over_ours() {
        let p = Paired { ours: vec![1.0, 2.0], reference: vec![3.0, 1.0] };
        assert_eq!(p.ratios(), vec![3.0, 0.5]);
    }

    #[test]
    fn by_position_splits_first_and_second() {
        // Rounds: 0 ours first, 1 reference first, 2 ours first, 3 reference first.
        let p = Paired { ours: vec![1.0, 2.0, 1.0, 2.0], reference: vec![4.0, 3.0, 4.0, 3.0] };
        assert_eq!(p.by_position(), [[1.0, 2.0], [3.0, 4.0]]);
    }
}
