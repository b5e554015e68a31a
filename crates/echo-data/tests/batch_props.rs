//! Property test: a batch plan resumes exactly. For any data set, batch size, seed, bucketing
//! and last-batch policy, a `Batcher` that is stopped at any point and rebuilt from the
//! examples, the config and the saved position gives the same batches, in the same order, as
//! the one that never stopped; and `batch_at` agrees with both.

use echo_data::{BatchConfig, Batcher, Example};
use proptest::prelude::*;

fn ex(i: usize, len: usize, prompt: usize) -> Example {
    Example {
        source: i % 3,
        record: i,
        input_ids: (0..len).map(|t| (1000 * (i + 1) + t) as u32).collect(),
        prompt_len: prompt.min(len - 1),
        masked: Vec::new(),
        train_on_inputs: false,
        truncated: false,
        boundary_merge: false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn a_batcher_rebuilt_from_its_position_continues_exactly(
        lengths in prop::collection::vec((2usize..40, 1usize..20), 1..60),
        batch_size in 1usize..9,
        seed in any::<u64>(),
        shuffle in any::<bool>(),
        bucket in prop::option::of(1usize..5),
        drop_last in any::<bool>(),
        stop_after in 0usize..40,
    ) {
        let examples: Vec<Example> = lengths.iter().enumerate().map(|(i, &(l, p))| ex(i, l, p)).collect();
        let cfg = BatchConfig { batch_size, seed, shuffle, bucket, drop_last };
        let Ok(mut straight) = Batcher::new(examples.clone(), 0, cfg.clone()) else {
            // Too few examples for one batch with drop_last: refused, nothing to resume.
            prop_assert!(drop_last && examples.len() < batch_size);
            return Ok(());
        };
        let mut stopped = Batcher::new(examples.clone(), 0, cfg.clone()).unwrap();
        for _ in 0..stop_after {
            prop_assert_eq!(stopped.next_batch(), straight.next_batch());
        }
        let position = stopped.position();
        drop(stopped);
        let mut resumed = Batcher::new(examples, 0, cfg).unwrap();
        resumed.seek(position).unwrap();
        for _ in 0..(2 * resumed.batches_per_epoch() + 1) {
            let at = resumed.batch_at(resumed.position()).unwrap();
            let next = resumed.next_batch();
            prop_assert_eq!(&next, &at);
            prop_assert_eq!(next, straight.next_batch());
        }
    }
}
