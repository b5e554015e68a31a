//! Data pipeline throughput on the boolq train set (9427 records) with the fixture tokenizer
//! (`fixtures/tiny-llama-a`, byte-level BPE, vocabulary 512), in records/s
//! (criterion's "elem/s"):
//!
//! - `tokenise`: records → examples (prompt and full text tokenised, prefix check, EOS,
//!   cutoff 256), parallel over the machine's cores as in training;
//! - `tokenise+batch`: the same, then one shuffled, length-bucketed epoch of padded batches of
//!   16 (`[B, T]` ids, attention mask, labels, prompt mask);
//! - `batch`: the batching alone, on pre-tokenised examples (the cost a cached run pays).
//!
//! The records are read once, outside the timing (reading is a small share and depends on
//! the disk).

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use echo_data::{encode_records, read_records, BatchConfig, Batcher, EncodeConfig, Example, Template, Tokenizer};

fn one_epoch(examples: Vec<Example>, pad: u32) -> usize {
    let cfg = BatchConfig { batch_size: 16, seed: 1, shuffle: true, bucket: Some(8), drop_last: false };
    let mut b = Batcher::new(examples, pad, cfg).expect("batcher");
    (0..b.batches_per_epoch()).map(|_| b.next_batch().input_ids.len()).sum()
}

fn bench_data(c: &mut Criterion) {
    let data = echo_testdata::commonsense().join("boolq/train.json");
    let tok = Tokenizer::from_dir(echo_testdata::tiny_llama_a()).expect("fixture tokenizer");
    let records = read_records(&data).expect("boolq train");
    let tpl = Template::alpaca();
    let cfg = EncodeConfig::default();
    let encode = || encode_records(&tok, &tpl, &records, &cfg, &data, 0).expect("encode");
    let examples = encode().examples;
    assert_eq!(examples.len(), records.len());

    let mut g = c.benchmark_group("data_boolq_train");
    g.throughput(Throughput::Elements(records.len() as u64));
    g.bench_function("tokenise", |b| b.iter(|| black_box(encode())));
    g.bench_function("tokenise+batch", |b| b.iter(|| black_box(one_epoch(encode().examples, tok.pad_id()))));
    g.bench_function("batch", |b| b.iter(|| black_box(one_epoch(examples.clone(), tok.pad_id()))));
    g.finish();
}

// One tokenise pass is well under a second: 10 samples keep the whole bench near 30 s.
criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(8));
    targets = bench_data
}
criterion_main!(benches);
