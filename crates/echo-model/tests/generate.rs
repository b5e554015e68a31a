//! Generation with the KV cache against the full forward (`Llama::forward` on an inference tape,
//! re-run over the whole sequence at every step) on tiny-llama-a: same logits, same greedy
//! tokens, for a batch of two prompts of different lengths; EOS stops a sequence; sampling is
//! seeded; the projection is pluggable.

use echo_autograd::Tape;
use echo_model::generate::{argmax, generate, Decoder, GenerateOptions, PlainInfer, Sampling};
use echo_model::{Batch, Llama, Plain, Proj, Result};
use echo_tensor::Tensor;

fn model() -> Llama {
    Llama::load(&echo_testdata::tiny_llama_a()).unwrap()
}

/// Two prompts of different lengths (token ids from the fixture's batch).
fn prompts() -> Vec<Vec<u32>> {
    vec![vec![304, 281, 271, 313, 283, 297, 272, 299, 287, 14, 283], vec![54, 74, 71, 312, 281, 286]]
}

/// Greedy decoding by re-running the full forward over the whole sequence at every step.
/// Returns the tokens and the logits each step chose from.
fn full_recompute(m: &Llama, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut seq: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    let (mut toks, mut all) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = seq.len();
        let batch = Batch::new(&seq, &vec![1; t], 1, t, m.config.vocab_size).unwrap();
        let tape = Tape::inference();
        let out = m.forward(&tape, &batch, &mut Plain, &[]).unwrap();
        let logits = m.logits_at(&out.hidden, &[t - 1]).unwrap().value().to_vec_f32();
        let next = argmax(&logits);
        toks.push(next);
        all.push(logits);
        seq.push(next as i64);
    }
    (toks, all)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn no_eos(n: usize) -> GenerateOptions {
    GenerateOptions { max_new_tokens: n, eos_token_ids: vec![], pad_token_id: Some(0), sampling: None }
}

#[test]
fn kv_cache_matches_full_recompute_at_every_step() {
    let m = model();
    let v = m.config.vocab_size;
    let n = 10;
    let refs: Vec<_> = prompts().iter().map(|p| full_recompute(&m, p, n)).collect();

    // Step by step through the decoder, comparing logits.
    let mut dec = Decoder::new(&m, 2, 11 + n).unwrap();
    let mut logits = dec.prefill(&prompts(), &mut PlainInfer).unwrap();
    assert_eq!(dec.cache().pads(), &[0, 5], "the shorter prompt is left-padded");
    let mut worst = 0f32;
    for step in 0..n {
        let l = logits.to_vec_f32();
        let mut feed = Vec::new();
        for (row, (toks, want)) in refs.iter().enumerate() {
            let got = &l[row * v..(row + 1) * v];
            worst = worst.max(max_diff(got, &want[step]));
            assert_eq!(argmax(got), toks[step], "row {row} step {step}");
            feed.push(toks[step]);
        }
        if step + 1 < n {
            logits = dec.step(&feed, &mut PlainInfer).unwrap();
        }
    }
    println!("max |logit(kv cache) - logit(full forward)| over {n} steps: {worst:e}");
    assert!(worst < 1e-4, "KV-cache logits differ from the full forward by {worst}");

    // And through `generate`.
    let g = generate(&m, &prompts(), &no_eos(n), &mut PlainInfer).unwrap();
    assert_eq!(g.tokens, vec![refs[0].0.clone(), refs[1].0.clone()]);
    assert_eq!(g.stopped_on_eos, vec![false, false]);
    assert_eq!(g.stats.new_tokens, 2 * n);
    assert_eq!(g.stats.decode_steps, n - 1);
    assert_eq!(g.stats.prompt_tokens, 17);
    // The random model must not be degenerate, or the comparison proves little.
    assert!(refs[0].0.iter().collect::<std::collections::HashSet<_>>().len() > 2, "{:?}", refs[0].0);
}

#[test]
fn eos_stops_each_sequence_on_its_own() {
    let m = model();
    let n = 10;
    let free = generate(&m, &prompts(), &no_eos(n), &mut PlainInfer).unwrap();
    let eos = free.tokens[0][3];
    let mut opts = no_eos(n);
    opts.eos_token_ids = vec![eos];
    let g = generate(&m, &prompts(), &opts, &mut PlainInfer).unwrap();
    for row in 0..2 {
        let want: Vec<u32> = match free.tokens[row].iter().position(|&t| t == eos) {
            Some(i) => free.tokens[row][..=i].to_vec(),
            None => free.tokens[row].clone(),
        };
        assert_eq!(g.tokens[row], want, "row {row}");
        assert_eq!(g.stopped_on_eos[row], want.len() < n || want.last() == Some(&eos), "row {row}");
    }
    assert!(g.tokens[0].len() <= 4 && g.stopped_on_eos[0], "row 0 stops at its EOS: {:?}", g.tokens[0]);
    // When both rows stop, generation stops: no decode step runs past the last EOS.
    if g.stopped_on_eos.iter().all(|&s| s) {
        let longest = g.tokens.iter().map(Vec::len).max().unwrap();
        assert_eq!(g.stats.decode_steps, longest - 1);
    }
}

#[test]
fn sampling_is_seeded_and_top_p_narrows_to_greedy() {
    let m = model();
    let greedy = generate(&m, &prompts(), &no_eos(8), &mut PlainInfer).unwrap();
    let with = |temperature: f32, top_p: f32, seed: u64| {
        let mut o = no_eos(8);
        o.sampling = Some(Sampling { temperature, top_p, seed });
        generate(&m, &prompts(), &o, &mut PlainInfer).unwrap().tokens
    };
    assert_eq!(with(1.0, 1e-6, 1), greedy.tokens, "a tiny nucleus keeps only the argmax");
    assert_eq!(with(0.0, 1.0, 1), greedy.tokens, "temperature 0 is greedy");
    let a = with(1.5, 0.95, 42);
    assert_eq!(with(1.5, 0.95, 42), a, "same seed, same tokens");
    let others: Vec<_> = (0..4).map(|s| with(1.5, 0.95, s)).collect();
    assert!(others.iter().any(|o| *o != a), "different seeds never changed the sample");
    for row in &a {
        assert!(row.iter().all(|&t| (t as usize) < m.config.vocab_size));
    }
}

#[test]
fn projection_is_pluggable() {
    let m = model();
    let greedy = generate(&m, &prompts(), &no_eos(5), &mut PlainInfer).unwrap();
    let mut calls = 0usize;
    let mut same = |_l: usize, _p: Proj, x: &Tensor, w: &Tensor| -> Result<Tensor> {
        calls += 1;
        Ok(x.linear(w)?)
    };
    let g = generate(&m, &prompts(), &no_eos(5), &mut same).unwrap();
    assert_eq!(g.tokens, greedy.tokens);
    // Prefill + 4 decode steps, 7 projections in each of 4 layers.
    assert_eq!(calls, 5 * 7 * 4);

    // An "adapter" on layer 0's value projection changes the logits.
    let mut adapted = |l: usize, p: Proj, x: &Tensor, w: &Tensor| -> Result<Tensor> {
        let y = x.linear(w)?;
        if l == 0 && p == Proj::V {
            return Ok(y.add(&x.linear(w)?.scale(0.5)?)?);
        }
        Ok(y)
    };
    let mut dec = Decoder::new(&m, 2, 12).unwrap();
    let a = dec.prefill(&prompts(), &mut adapted).unwrap();
    let mut dec = Decoder::new(&m, 2, 12).unwrap();
    let b = dec.prefill(&prompts(), &mut PlainInfer).unwrap();
    assert!(max_diff(&a.to_vec_f32(), &b.to_vec_f32()) > 1e-3);
}

#[test]
fn bad_requests_are_errors() {
    let m = model();
    let err = |p: Vec<Vec<u32>>, n: usize| generate(&m, &p, &no_eos(n), &mut PlainInfer).unwrap_err().to_string();
    assert!(err(vec![vec![1, 2], vec![]], 3).contains("prompt 1 is empty"));
    assert!(err(vec![vec![1, 600]], 3).contains("outside the vocabulary"));
    assert!(err(vec![vec![1; 250]], 10).contains("max_position_embeddings"));
    assert!(err(vec![], 3).contains("no prompts"));
    let mut o = no_eos(3);
    o.sampling = Some(Sampling { temperature: 1.0, top_p: 0.0, seed: 0 });
    assert!(generate(&m, &prompts(), &o, &mut PlainInfer).unwrap_err().to_string().contains("top_p"));
    // A full cache is an error, not a panic.
    let mut dec = Decoder::new(&m, 1, 3).unwrap();
    dec.prefill(&[vec![1, 2, 3]], &mut PlainInfer).unwrap();
    assert!(dec.step(&[4], &mut PlainInfer).unwrap_err().to_string().contains("KV cache full"));
}

#[test]
fn positions_are_the_real_token_positions() {
    // RoPE only sees position differences, so a row shifted by its left padding would still
    // match above. With a table that is not a rotation by position (random cos/sin per
    // position), absolute positions matter: the left-padded row must use 0, 1, 2, ...
    let mut m = model();
    let mut rng = echo_tensor::Rng::new(3);
    let (half, max_pos) = (m.rope.half, m.rope.max_pos);
    let cos = (0..half * max_pos).map(|_| rng.uniform_range(-1.0, 1.0)).collect();
    let sin = (0..half * max_pos).map(|_| rng.uniform_range(-1.0, 1.0)).collect();
    m.rope = std::sync::Arc::new(echo_tensor::RopeTable { half, max_pos, cos, sin });
    let n = 4;
    let g = generate(&m, &prompts(), &no_eos(n), &mut PlainInfer).unwrap();
    for (row, p) in prompts().iter().enumerate() {
        assert_eq!(g.tokens[row], full_recompute(&m, p, n).0, "row {row}");
    }
    let mut dec = Decoder::new(&m, 2, 12).unwrap();
    let l = dec.prefill(&prompts(), &mut PlainInfer).unwrap().to_vec_f32();
    let want = &full_recompute(&m, &prompts()[1], 1).1[0];
    let v = m.config.vocab_size;
    assert!(max_diff(&l[v..2 * v], want) < 1e-4);
}
