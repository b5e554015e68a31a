//! The evaluation on tiny-llama-a: loglik scores against an independent full forward,
//! generation independent of batching, and the bad inputs (missing test.json, unknown
//! dataset, record without answer, adapter for another model).

use echo_autograd::Tape;
use echo_data::{Record, Template, Tokenizer};
use echo_eval::{apply_adapter, load, score_dataset, EvalOptions, Mode};
use echo_model::weights::{save_safetensors, SaveTensor, WeightFiles};
use echo_model::{Batch, Llama, Plain};
use echo_tensor::Tensor;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    echo_testdata::tiny_llama_a()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("echo-eval-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn arc_record(q: &str, n: usize, answer: usize) -> Record {
    let opts: Vec<String> = (1..=n).map(|i| format!("Answer{i}: opt {i}")).collect();
    let fmt: Vec<String> = (1..=n).map(|i| format!("answer{i}")).collect();
    Record {
        instruction: format!("Please choose: {q}\n\n{}\n\nAnswer format: {}", opts.join(" "), fmt.join("/")),
        input: String::new(),
        output: format!("the correct answer is answer{answer}"),
        answer: Some(format!("answer{answer}")),
    }
}

fn bool_record(q: &str, a: &str) -> Record {
    Record {
        instruction: format!("{q}\n\nAnswer format: true/false"),
        input: String::new(),
        output: format!("the correct answer is {a}"),
        answer: Some(a.into()),
    }
}

fn write_set(root: &Path, name: &str, records: &[Record]) {
    std::fs::create_dir_all(root.join(name)).unwrap();
    echo_data::write_records_json(root.join(name).join("test.json"), records).unwrap();
}

fn data_dir(name: &str) -> PathBuf {
    let d = temp_dir(name);
    let arc = vec![
        arc_record("why?", 4, 2),
        arc_record("a longer question about the sun and moon?", 3, 1),
        arc_record("x", 5, 5),
        arc_record("what now", 4, 4),
        arc_record("ok", 4, 3),
    ];
    write_set(&d, "ARC-Easy", &arc);
    write_set(
        &d,
        "boolq",
        &[bool_record("is it?", "true"), bool_record("is it not, really?", "false"), bool_record("maybe", "true")],
    );
    // Any LLM-Adapters test set whose name has a known pattern works as found.
    let wino = |a: &str| Record {
        instruction: "Fill in: _ went home.\n\nOption1: Al Option2: Bo\n\nAnswer format: option1/option2".into(),
        input: String::new(),
        output: format!("the correct answer is {a}"),
        answer: Some(a.into()),
    };
    write_set(&d, "winogrande", &[wino("option1"), wino("option2")]);
    d
}

/// Sum of log-softmax over `tokens[from..]`, each scored from the logits one position earlier,
/// by one full forward over the whole sequence (no KV cache).
fn full_forward_log_prob(m: &Llama, tokens: &[u32], from: usize) -> f64 {
    let t = tokens.len();
    let ids: Vec<i64> = tokens.iter().map(|&x| x as i64).collect();
    let batch = Batch::new(&ids, &vec![1; t], 1, t, m.config.vocab_size).unwrap();
    let tape = Tape::inference();
    let out = m.forward(&tape, &batch, &mut Plain, &[]).unwrap();
    let rows: Vec<usize> = (from - 1..t - 1).collect();
    let logits = m.logits_at(&out.hidden, &rows).unwrap().value().to_vec_f32();
    let v = m.config.vocab_size;
    rows.iter()
        .enumerate()
        .map(|(k, &r)| {
            let row = &logits[k * v..(k + 1) * v];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            row[tokens[r + 1] as usize] as f64 - lse
        })
        .sum()
}

#[test]
fn loglik_scores_match_a_full_forward() {
    let m = Llama::load(&fixture()).unwrap();
    let tok = Tokenizer::from_dir(fixture()).unwrap();
    let dir = data_dir("loglik");
    let mut sets = load(&dir, &["ARC-Easy".into(), "boolq".into()], None).unwrap();
    // Candidates of several tokens that part early: every row forks the cache and feeds
    // candidate tokens of different lengths (the commonsense patterns part at the last token).
    let multi: &'static [&'static str] = &["blue whale songs", "red fox", "a very long green answer indeed"];
    let rec = |q: &str, a: &str| Record {
        instruction: q.into(),
        input: String::new(),
        output: format!("the correct answer is {a}"),
        answer: Some(a.into()),
    };
    sets.push(echo_eval::Dataset {
        name: "multi".into(),
        path: dir.join("multi"),
        records: vec![
            rec("colour?", "red fox"),
            rec("which animal sings at sea, usually?", "blue whale songs"),
            rec("hm", "a very long green answer indeed"),
        ],
        pattern: multi,
    });
    let template = Template::alpaca();
    let mut worst = 0f64;
    for ds in &sets {
        // Batch 2: rows of different lengths (left padding) and forks of the cache.
        let preds = score_dataset(
            &m,
            &tok,
            &template,
            ds,
            &EvalOptions { mode: Mode::Loglik, batch: 2, max_new_tokens: 0 },
            &mut |_| {},
        )
        .unwrap();
        assert!(preds.skipped.is_empty(), "every record fits: {:?}", preds.skipped);
        let preds = preds.predictions;
        assert_eq!(preds.len(), ds.records.len());
        for (p, r) in preds.iter().zip(&ds.records) {
            let scores = p.scores.as_ref().unwrap();
            let n_expected = match ds.name.as_str() {
                "boolq" => 2,
                "multi" => 3,
                _ => r.instruction.matches("Answer").count() - 1,
            };
            assert_eq!(scores.len(), n_expected, "candidates from the Answer format line");
            let prompt = tok.encode(&template.prompt(r)).unwrap();
            let conts: Vec<Vec<u32>> =
                scores.iter().map(|(c, _)| tok.encode_plain(&format!("the correct answer is {c}")).unwrap()).collect();
            // Tokens every continuation shares are context; each score covers the rest.
            let shortest = conts.iter().map(Vec::len).min().unwrap();
            let shared = (0..shortest - 1).take_while(|&i| conts.iter().all(|c| c[i] == conts[0][i])).count();
            for ((cand, score), cont) in scores.iter().zip(&conts) {
                let full: Vec<u32> = prompt.iter().chain(cont).copied().collect();
                let reference = full_forward_log_prob(&m, &full, prompt.len() + shared);
                worst = worst.max((score - reference).abs());
                assert!(
                    (score - reference).abs() < 1e-3,
                    "{} record {} candidate {cand}: {score} vs full forward {reference}",
                    ds.name,
                    p.index
                );
            }
            let best = scores.iter().fold(&scores[0], |b, s| if s.1 > b.1 { s } else { b });
            assert_eq!(p.prediction.as_deref(), Some(best.0.as_str()));
            assert_eq!(p.correct, p.prediction == r.answer);
        }
    }
    eprintln!("loglik vs full forward: worst |diff| {worst:.2e}");
}

#[test]
fn generation_does_not_depend_on_batching() {
    let m = Llama::load(&fixture()).unwrap();
    let tok = Tokenizer::from_dir(fixture()).unwrap();
    let dir = data_dir("generate");
    let sets = load(&dir, &[], Some(4)).unwrap();
    assert_eq!(
        sets.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["ARC-Easy", "boolq", "winogrande"],
        "all found, sorted"
    );
    assert_eq!(sets[0].records.len(), 4, "--limit keeps the first records");
    let template = Template::alpaca();
    for ds in &sets {
        let run = |batch| {
            score_dataset(
                &m,
                &tok,
                &template,
                ds,
                &EvalOptions { mode: Mode::Generate, batch, max_new_tokens: 12 },
                &mut |_| {},
            )
            .unwrap()
        };
        let (one, three) = (run(1), run(3));
        assert_eq!(one, three, "{}: batch 1 vs batch 3", ds.name);
        assert!(one.skipped.is_empty());
        assert_eq!(one.predictions.len(), ds.records.len());
        for p in &one.predictions {
            let text = p.output.as_deref().unwrap();
            assert_eq!(p.prediction, echo_eval::extract_answer(text, ds.pattern));
        }
    }
}

#[test]
fn bad_data_folders_are_clear_errors() {
    let dir = data_dir("bad");
    std::fs::create_dir_all(dir.join("piqa")).unwrap();
    let e = load(&dir, &["piqa".into()], None).unwrap_err().to_string();
    assert!(e.contains("piqa") && e.contains("has no test.json") && e.contains("ARC-Easy, boolq, winogrande"), "{e}");
    let e = load(&dir, &["hellaswag".into()], None).unwrap_err().to_string();
    assert!(
        e.contains("no dataset `hellaswag`") && e.contains("ARC-Easy, boolq, winogrande"),
        "lists what was found: {e}"
    );
    write_set(&dir, "mystery", &[bool_record("q", "true")]);
    let e = load(&dir, &["mystery".into()], None).unwrap_err().to_string();
    assert!(e.contains("no answer pattern") && e.contains("winogrande"), "{e}");
    let mut r = bool_record("q", "true");
    r.answer = None;
    write_set(&dir, "boolq", &[bool_record("q", "true"), r]);
    let e = load(&dir, &["boolq".into()], None).unwrap_err().to_string();
    assert!(e.contains("record 1") && e.contains("answer"), "{e}");
    let empty = temp_dir("empty");
    let e = load(&empty, &[], None).unwrap_err().to_string();
    assert!(e.contains("no test set found"), "{e}");
}

#[test]
fn an_adapter_for_another_model_is_refused() {
    // The fixture's LoRA adapter with every lora_A widened: made for a model with a larger
    // hidden size.
    let src = fixture().join("peft-lora");
    let dir = temp_dir("adapter");
    std::fs::copy(src.join("adapter_config.json"), dir.join("adapter_config.json")).unwrap();
    let files = WeightFiles::open_files(&[src.join("adapter_model.safetensors")]).unwrap();
    let mut tensors = Vec::new();
    for name in files.names() {
        let t = files.f32_tensor(name, None).unwrap();
        let t = if name.contains("lora_A") {
            let d = t.dims().to_vec();
            Tensor::new(vec![0.1; d[0] * d[1] * 2], vec![d[0], d[1] * 2]).unwrap()
        } else {
            t
        };
        tensors.push((name.to_string(), SaveTensor::from_tensor(&t)));
    }
    save_safetensors(&dir.join("adapter_model.safetensors"), tensors, None).unwrap();
    let mut m = Llama::load(&fixture()).unwrap();
    let e = apply_adapter(&mut m, &dir, &fixture()).unwrap_err().to_string();
    assert!(e.contains("does not fit the model") && e.contains("lora_A"), "{e}");

    // The genuine adapter merges and changes the weights it targets.
    let mut m = Llama::load(&fixture()).unwrap();
    let before = m.blocks[0].proj[0].to_vec_f32();
    let n = apply_adapter(&mut m, &src, &fixture()).unwrap();
    assert!(n > 0);
    assert_ne!(before, m.blocks[0].proj[0].to_vec_f32(), "q_proj of layer 0 merged");
}

/// Grows `base` with " a" until `needed(instruction)` reaches `target` exactly.
fn grow_to(base: &str, target: usize, needed: &dyn Fn(&str) -> usize) -> String {
    let mut s = base.to_string();
    while needed(&s) < target {
        s.push_str(" a");
    }
    assert_eq!(needed(&s), target, "filler steps by one token");
    s
}

#[test]
fn records_beyond_the_context_are_skipped_and_the_rest_scored() {
    let m = Llama::load(&fixture()).unwrap();
    let tok = Tokenizer::from_dir(fixture()).unwrap();
    let limit = m.config.max_position_embeddings;
    let template = Template::alpaca();
    let dir = temp_dir("skip");
    let prompt_len = |instruction: &str| {
        let r = Record { instruction: instruction.into(), input: String::new(), output: String::new(), answer: None };
        tok.encode(&template.prompt(&r)).unwrap().len()
    };
    let cont_len = |c: &str| tok.encode_plain(&format!("the correct answer is {c}")).unwrap().len();
    let rec = |instruction: String, a: &str| Record {
        instruction,
        input: String::new(),
        output: format!("the correct answer is {a}"),
        answer: Some(a.into()),
    };

    // Generate mode: prompt + max_new_tokens == limit fits, one token more is skipped.
    let max_new = 8;
    let fits = grow_to("Is it?\n\nAnswer format: true/false\n\n", limit - max_new, &|s| prompt_len(s));
    let over = format!("{fits} a");
    assert_eq!(prompt_len(&over) + max_new, limit + 1);
    let records = vec![rec("is it?".into(), "true"), rec(over.clone(), "false"), rec(fits.clone(), "true")];
    let ds = echo_eval::Dataset {
        name: "boolq".into(),
        path: dir.join("boolq"),
        records,
        pattern: echo_eval::answer_pattern("boolq").unwrap(),
    };
    let mut seen = Vec::new();
    let opts = EvalOptions { mode: Mode::Generate, batch: 4, max_new_tokens: max_new };
    let out = score_dataset(&m, &tok, &template, &ds, &opts, &mut |n| seen.push(n)).unwrap();
    assert_eq!(out.predictions.iter().map(|p| p.index).collect::<Vec<_>>(), [0, 2], "record order, the fit kept");
    assert_eq!(out.skipped, [echo_eval::Skipped { dataset: "boolq".into(), index: 1, positions: limit + 1, limit }]);
    assert_eq!(seen.last(), Some(&3), "progress counts the skipped record as done");
    // The record at the limit is generated in full (the budget, not an early EOS, decides).
    let alone = score_dataset(
        &m,
        &tok,
        &template,
        &echo_eval::Dataset { records: vec![ds.records[2].clone()], ..ds.clone() },
        &opts,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(alone.predictions[0].output, out.predictions[1].output, "batched with a short prompt or alone");

    // Loglik mode: prompt + longest continuation - 1 == limit fits. Record `long` has a long
    // candidate and a short prompt, record `edge` short candidates and a prompt at the limit:
    // each fits alone, together they would need more than the context, so they must go to the
    // decoder in separate batches (batch 2 would otherwise pair them).
    let pattern: &'static [&'static str] = &["yes", "no", "a very long green answer indeed, with more words"];
    let short = "Answer format: yes/no";
    let longest_short = cont_len("yes").max(cont_len("no"));
    let edge = grow_to(&format!("Q?\n\n{short}\n\n"), limit + 1 - longest_short, &|s| prompt_len(s));
    let edge_over = format!("{edge} a");
    let long = "Which one?".to_string();
    let long_positions = prompt_len(&long) + cont_len(pattern[2]) - 1;
    assert!(long_positions <= limit);
    assert!(prompt_len(&edge) + cont_len(pattern[2]) - 1 > limit, "together they overflow");
    let ds = echo_eval::Dataset {
        name: "multi".into(),
        path: dir.join("multi"),
        records: vec![rec(edge.clone(), "yes"), rec(long, pattern[2]), rec(edge_over, "no")],
        pattern,
    };
    let opts = EvalOptions { mode: Mode::Loglik, batch: 2, max_new_tokens: 0 };
    let out = score_dataset(&m, &tok, &template, &ds, &opts, &mut |_| {}).unwrap();
    assert_eq!(out.predictions.iter().map(|p| p.index).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(out.skipped, [echo_eval::Skipped { dataset: "multi".into(), index: 2, positions: limit + 1, limit }]);
    assert_eq!(out.predictions[0].scores.as_ref().unwrap().len(), 2, "the format line's candidates");
    let one = score_dataset(&m, &tok, &template, &ds, &EvalOptions { batch: 1, ..opts }, &mut |_| {}).unwrap();
    assert_eq!(one, out, "batch 2 scores as batch 1");

    // Through `evaluate`: the counts land in the dataset's score.
    let done = echo_eval::evaluate(&m, &tok, std::slice::from_ref(&ds), &opts, &mut |_, _| {}).unwrap();
    assert_eq!((done.scores[0].total, done.scores[0].skipped), (2, 1));
    assert_eq!(done.skipped.len(), 1);
}
