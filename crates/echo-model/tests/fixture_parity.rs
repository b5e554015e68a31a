//! The base model against HF transformers on `fixtures/tiny-llama-a` (float32, eager
//! attention): logits at every real position within 1e-4, and the masked loss.

use echo_autograd::Tape;
use echo_model::weights::WeightFiles;
use echo_model::{Batch, Llama, Plain};
use std::path::PathBuf;

fn fixture() -> PathBuf {
    echo_testdata::tiny_llama_a()
}

#[test]
fn base_logits_and_loss_match_transformers() {
    let dir = fixture();
    let model = Llama::load(&dir).expect("load tiny-llama-a");
    let reference = WeightFiles::open_files(&[dir.join("reference.safetensors")]).unwrap();
    let (ids, shape) = reference.i64_tensor("input_ids").unwrap();
    let (mask, _) = reference.i64_tensor("attention_mask").unwrap();
    let (labels, _) = reference.i64_tensor("labels").unwrap();
    let (b, t) = (shape[0], shape[1]);
    let batch = Batch::new(&ids, &mask, b, t, model.config.vocab_size).unwrap();

    let tape = Tape::inference();
    let out = model.forward(&tape, &batch, &mut Plain, &[]).unwrap();
    let all: Vec<usize> = (0..b * t).collect();
    let logits = model.logits_at(&out.hidden, &all).unwrap();
    let want = reference.f32_tensor("logits", Some(&[b, t, model.config.vocab_size])).unwrap();
    let v = model.config.vocab_size;
    let mut worst = 0f32;
    for row in 0..b * t {
        if mask[row] == 1 {
            let got = &logits.value().as_f32()[row * v..(row + 1) * v];
            let exp = &want.as_f32()[row * v..(row + 1) * v];
            worst = got.iter().zip(exp).fold(worst, |m, (a, b)| m.max((a - b).abs()));
        }
    }
    println!("max |logit - HF| over real positions: {worst:e}");
    assert!(worst < 1e-4, "logits differ from HF by {worst}");

    let (loss, count) = model.lm_loss(&out.hidden, &labels, &batch).unwrap();
    let want_loss = reference.f32_tensor("loss_base", None).unwrap().item().unwrap();
    let got_loss = loss.value().item().unwrap();
    println!("loss {got_loss} vs HF {want_loss} over {count} tokens");
    assert_eq!(count, 11, "the fixture README counts 11 target tokens");
    assert!(((got_loss - want_loss) / want_loss).abs() < 1e-5, "loss {got_loss} vs {want_loss}");
}

#[test]
fn rope_theta_matters() {
    // Guard against a parity test that would pass with RoPE ignored: changing theta must move
    // the logits far beyond the tolerance (the fixture README measures 1.8).
    let dir = fixture();
    let mut model = Llama::load(&dir).unwrap();
    model.rope = std::sync::Arc::new(echo_tensor::RopeTable::new(16, 256, 500_000.0, None));
    let reference = WeightFiles::open_files(&[dir.join("reference.safetensors")]).unwrap();
    let (ids, _) = reference.i64_tensor("input_ids").unwrap();
    let (mask, _) = reference.i64_tensor("attention_mask").unwrap();
    let batch = Batch::new(&ids, &mask, 2, 12, 512).unwrap();
    let out = model.forward(&Tape::inference(), &batch, &mut Plain, &[]).unwrap();
    let logits = model.logits_at(&out.hidden, &(0..24).collect::<Vec<_>>()).unwrap();
    let want = reference.f32_tensor("logits", None).unwrap();
    let diff = logits.value().reshape([2, 12, 512]).unwrap().max_abs_diff(&want).unwrap();
    assert!(diff > 0.1, "changing rope_theta moved logits by only {diff}");
}
