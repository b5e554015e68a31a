//! Batching on hand-made examples: layout, padding, epochs, resume, bucketing.

use echo_data::{Batch, BatchConfig, BatchPosition, Batcher, Example};

/// An example of `len` tokens whose first `prompt` are prompt; ids encode (example, position).
fn ex(i: usize, len: usize, prompt: usize) -> Example {
    Example {
        source: 0,
        record: i,
        input_ids: (0..len).map(|t| (1000 * (i + 1) + t) as u32).collect(),
        prompt_len: prompt,
        masked: Vec::new(),
        train_on_inputs: false,
        truncated: false,
        boundary_merge: false,
    }
}

fn varied(n: usize) -> Vec<Example> {
    (0..n).map(|i| ex(i, 3 + (i * 37) % 41, 1 + (i % 3))).collect()
}

#[test]
fn padding_layout_is_right_padded_row_major() {
    let es = [ex(0, 3, 1), ex(1, 5, 2), ex(2, 2, 1)];
    let b = Batch::from_examples(&es.iter().collect::<Vec<_>>(), 7);
    assert_eq!((b.batch_size, b.seq_len), (3, 5));
    assert_eq!(b.input_ids, vec![1000, 1001, 1002, 7, 7, 2000, 2001, 2002, 2003, 2004, 3000, 3001, 7, 7, 7,]);
    assert_eq!(b.attention_mask, vec![1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]);
    assert_eq!(
        b.labels,
        vec![-100, 1001, 1002, -100, -100, -100, -100, 2002, 2003, 2004, -100, 3001, -100, -100, -100,]
    );
    assert_eq!(b.prompt_mask, vec![1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0]);
    assert_eq!(b.lengths, vec![3, 5, 2]);
    assert_eq!(b.prompt_lengths, vec![1, 2, 1]);
    assert_eq!((b.tokens(), b.label_tokens()), (10, 6));
}

#[test]
fn packed_layout_is_one_row_without_padding() {
    // Plain-text style example (every token learned) in the middle: its first label must still
    // be dropped, or the previous example's last position would be scored against it.
    let mut plain = ex(1, 3, 0);
    plain.train_on_inputs = true;
    let es = [ex(0, 3, 1), plain, ex(2, 2, 1)];
    let b = Batch::packed(&es.iter().collect::<Vec<_>>());
    assert_eq!((b.batch_size, b.seq_len, b.examples()), (1, 8, 3));
    assert_eq!(b.packed, Some(vec![vec![3, 3, 2]]));
    assert_eq!(b.input_ids, vec![1000, 1001, 1002, 2000, 2001, 2002, 3000, 3001]);
    assert_eq!(b.attention_mask, vec![1; 8]);
    assert_eq!(b.labels, vec![-100, 1001, 1002, -100, 2001, 2002, -100, 3001]);
    assert_eq!(b.prompt_mask, vec![1, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!((b.lengths, b.prompt_lengths), (vec![3, 3, 2], vec![1, 0, 1]));
    // The padded batch of the same examples counts the same learned positions under the shift.
    let p = Batch::from_examples(&es.iter().collect::<Vec<_>>(), 7);
    assert_eq!(p.packed, None);
    let shifted = |l: &[i64], rows: usize| {
        let t = l.len() / rows;
        (0..rows).map(|r| l[r * t + 1..(r + 1) * t].iter().filter(|&&x| x != -100).count()).sum::<usize>()
    };
    assert_eq!(shifted(&b.labels, 1), shifted(&p.labels, 3));
}

fn epoch(b: &mut Batcher) -> Vec<Batch> {
    (0..b.batches_per_epoch()).map(|_| b.next_batch()).collect()
}

fn covers_once(batches: &[Batch], n: usize) {
    let mut all: Vec<usize> = batches.iter().flat_map(|b| b.example_indices.clone()).collect();
    all.sort_unstable();
    assert_eq!(all, (0..n).collect::<Vec<_>>());
}

#[test]
fn each_epoch_is_a_new_permutation_of_every_example() {
    let cfg = BatchConfig { batch_size: 8, seed: 1, shuffle: true, bucket: None, drop_last: false };
    let mut b = Batcher::new(varied(61), 0, cfg).unwrap();
    assert_eq!(b.batches_per_epoch(), 8);
    let e0 = epoch(&mut b);
    assert_eq!(b.position(), BatchPosition { epoch: 1, index: 0 });
    let e1 = epoch(&mut b);
    covers_once(&e0, 61);
    covers_once(&e1, 61);
    assert_ne!(e0, e1);
    assert_eq!(e0.last().unwrap().batch_size, 61 % 8);
    assert_eq!(e0[3].position, BatchPosition { epoch: 0, index: 3 });
    let unshuffled = Batcher::new(varied(61), 0, BatchConfig { shuffle: false, ..b.config().clone() }).unwrap();
    assert_eq!(unshuffled.epoch_plan(0)[0], (0..8).collect::<Vec<_>>());
    assert_eq!(unshuffled.epoch_plan(0), unshuffled.epoch_plan(5));
}

#[test]
fn resuming_from_a_position_continues_exactly() {
    let cfg = BatchConfig { batch_size: 5, seed: 3, shuffle: true, bucket: Some(2), drop_last: false };
    let mut a = Batcher::new(varied(23), 0, cfg.clone()).unwrap();
    let first: Vec<Batch> = (0..7).map(|_| a.next_batch()).collect();
    let saved = serde_json::to_string(&a.position()).unwrap();
    let rest: Vec<Batch> = (0..9).map(|_| a.next_batch()).collect();

    let mut b = Batcher::new(varied(23), 0, cfg.clone()).unwrap();
    b.seek(serde_json::from_str(&saved).unwrap()).unwrap();
    let resumed: Vec<Batch> = (0..9).map(|_| b.next_batch()).collect();
    assert_eq!(resumed, rest);
    assert_eq!(b.batch_at(first[2].position).unwrap(), first[2]);
    // The end of an epoch is the start of the next.
    b.seek(BatchPosition { epoch: 2, index: b.batches_per_epoch() }).unwrap();
    assert_eq!(b.position(), BatchPosition { epoch: 3, index: 0 });
    assert!(b.seek(BatchPosition { epoch: 0, index: b.batches_per_epoch() + 1 }).is_err());
    assert!(b.batch_at(BatchPosition { epoch: 0, index: b.batches_per_epoch() }).is_err());
}

#[test]
fn bucketing_cuts_padding_and_puts_the_longest_batch_first() {
    let n = 400;
    let padding = |bucket| {
        let cfg = BatchConfig { batch_size: 8, seed: 11, shuffle: true, bucket, drop_last: false };
        let mut b = Batcher::new(varied(n), 0, cfg).unwrap();
        let e = epoch(&mut b);
        covers_once(&e, n);
        let longest = e.iter().map(|x| x.seq_len).max().unwrap();
        if bucket.is_some() {
            assert_eq!(e[0].seq_len, longest, "the longest batch comes first");
        }
        e.iter().map(|x| x.batch_size * x.seq_len - x.tokens()).sum::<usize>()
    };
    let (plain, bucketed) = (padding(None), padding(Some(10)));
    assert!(bucketed * 3 < plain, "padding {bucketed} with bucketing vs {plain} without");
}

#[test]
fn drop_last_keeps_full_batches_only() {
    let cfg = BatchConfig { batch_size: 8, seed: 1, shuffle: true, bucket: None, drop_last: true };
    let mut b = Batcher::new(varied(61), 0, cfg.clone()).unwrap();
    assert_eq!(b.batches_per_epoch(), 7);
    assert!(epoch(&mut b).iter().all(|x| x.batch_size == 8));
    let bucketed = Batcher::new(varied(61), 0, BatchConfig { bucket: Some(2), ..cfg }).unwrap();
    assert!(bucketed.epoch_plan(0).iter().all(|x| x.len() == 8));
}

#[test]
fn bad_batcher_configs_are_refused() {
    let cfg = BatchConfig::default();
    assert!(Batcher::new(Vec::<Example>::new(), 0, cfg.clone()).is_err());
    assert!(Batcher::new(varied(4), 0, BatchConfig { batch_size: 0, ..cfg.clone() }).is_err());
    assert!(Batcher::new(varied(4), 0, BatchConfig { bucket: Some(0), ..cfg.clone() }).is_err());
    assert!(Batcher::new(varied(4), 0, BatchConfig { batch_size: 8, drop_last: true, ..cfg }).is_err());
}

#[test]
fn from_arrays_rebuilds_the_pipelines_batches() {
    let es = [ex(0, 3, 1), ex(1, 5, 2), ex(2, 2, 1)];
    let refs: Vec<&Example> = es.iter().collect();
    let wide = |v: &[u32]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
    let wide8 = |v: &[u8]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
    for want in [Batch::from_examples(&refs, 7), Batch::packed(&refs)] {
        let (ids, mask) = (wide(&want.input_ids), wide8(&want.attention_mask));
        let got =
            Batch::from_arrays(&ids, &mask, &want.labels, want.batch_size, want.seq_len, want.packed.clone()).unwrap();
        assert_eq!(got.example_indices, vec![0, 1, 2]);
        assert_eq!(Batch { example_indices: Vec::new(), ..got }, want);
    }
    // Bad arrays are errors, not panics.
    let e = |r: Result<Batch, echo_data::Error>| r.unwrap_err().to_string();
    assert!(e(Batch::from_arrays(&[1, 2], &[1], &[-100, 2], 1, 2, None)).contains("attention_mask 1"));
    assert!(e(Batch::from_arrays(&[-1, 2], &[1, 1], &[-100, 2], 1, 2, None)).contains("input_ids[0, 0] = -1"));
    assert!(e(Batch::from_arrays(&[1, 2], &[1, 2], &[-100, 2], 1, 2, None)).contains("attention_mask[0, 1] = 2"));
    assert!(e(Batch::from_arrays(&[1, 2], &[1, 1], &[-100, 2], 1, 2, Some(vec![vec![2, 1]]))).contains("more than 2"));
}
