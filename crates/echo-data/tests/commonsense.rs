//! The pipeline on the real LLM-Adapters commonsense train sets with the fixture tokenizer.

mod common;

use common::{tokenizer, train, SETS};
use echo_data::{
    encode_example, encode_file, read_records, BatchConfig, Batcher, EncodeConfig, Encoded, Example, Overlong,
    Progress, RecordStream, Template, IGNORE_INDEX,
};

#[test]
fn record_counts() {
    for (set, n) in SETS {
        let records = read_records(train(set)).unwrap();
        assert_eq!(records.len(), n, "{set}");
        // The streaming reader agrees with the whole-file one, record for record.
        let streamed: Vec<_> = RecordStream::open(train(set)).unwrap().map(Result::unwrap).collect();
        assert_eq!(streamed, records, "{set}");
        for r in &records {
            let a = r.answer.as_deref().unwrap_or_default();
            assert!(!a.is_empty(), "{set}: every commonsense record has an answer");
            assert!(r.output.ends_with(a), "{set}: output {:?} names answer {a:?}", r.output);
        }
    }
}

/// Checks one example against its record from scratch: the prompt's tokens are exactly the
/// prompt's own tokenisation and decode to it, the rest decodes to output + EOS, labels are
/// -100 exactly on the prompt, and the prompt mask is 1 exactly on the prompt.
fn check_example(tok: &echo_data::Tokenizer, tpl: &Template, r: &echo_data::Record, e: &Example) {
    let prompt = tpl.prompt(r);
    let pl = e.prompt_len;
    assert_eq!(e.input_ids[..pl], tok.encode(&prompt).unwrap()[..], "prompt tokens");
    assert_eq!(tok.decode(&e.input_ids[..pl], false).unwrap(), prompt);
    let answer = tok.decode(&e.input_ids[pl..], false).unwrap();
    assert_eq!(answer, format!("{}<|im_end|>", r.output), "answer tokens = output + EOS");
    assert_eq!(*e.input_ids.last().unwrap(), tok.eos_id());
    let labels = e.labels();
    let mask = e.prompt_mask();
    for (i, (&l, &m)) in labels.iter().zip(&mask).enumerate() {
        if i < pl {
            assert_eq!(l, IGNORE_INDEX, "prompt token {i} must not be counted");
            assert_eq!(m, 1);
        } else {
            assert_eq!(l, e.input_ids[i] as i64, "answer token {i} must be learned");
            assert_eq!(m, 0);
        }
    }
}

#[test]
fn mask_boundaries_on_real_records() {
    let tok = tokenizer();
    let tpl = Template::alpaca();
    let cfg = EncodeConfig { cutoff: None, ..Default::default() };
    for set in ["boolq", "ARC-Challenge"] {
        let records = read_records(train(set)).unwrap();
        for r in records.iter().take(20) {
            let Encoded::Kept(e) = encode_example(&tok, &tpl, r, &cfg).unwrap() else {
                panic!("nothing is dropped without a cutoff")
            };
            check_example(&tok, &tpl, r, &e);
            // The boundary sits right after the template's "### Response:\n".
            let last_prompt = tok.decode(&e.input_ids[e.prompt_len - 1..e.prompt_len], false).unwrap();
            assert!(last_prompt.ends_with('\n'), "{last_prompt:?}");
            assert!(tok.decode(&e.input_ids[..e.prompt_len], false).unwrap().ends_with("### Response:\n"));
            assert!(!e.boundary_merge);
        }
    }
}

#[test]
fn no_answer_token_masked_and_no_prompt_token_counted_on_every_record() {
    let tok = tokenizer();
    let tpl = Template::alpaca();
    let cfg = EncodeConfig { cutoff: None, ..Default::default() };
    for (set, n) in SETS {
        let records = read_records(train(set)).unwrap();
        let ds = encode_file(train(set), &tok, &tpl, &cfg, Progress::Hidden).unwrap();
        assert_eq!(ds.report.records, n);
        assert_eq!(ds.examples.len(), n, "{set}: nothing dropped without a cutoff");
        assert_eq!((ds.report.dropped, ds.report.truncated), (0, 0));
        let mut answer_tokens = 0;
        for (i, e) in ds.examples.iter().enumerate() {
            assert_eq!(e.record, i, "examples keep the file's order");
            check_example(&tok, &tpl, &records[i], e);
            answer_tokens += e.labels().iter().filter(|&&l| l != IGNORE_INDEX).count();
        }
        assert_eq!(ds.report.answer_tokens, answer_tokens, "{set}");
        let merges = ds.examples.iter().filter(|e| e.boundary_merge).count();
        assert_eq!(ds.report.boundary_merges, merges);
        eprintln!(
            "{set}: {} records, {} tokens, {} answer tokens, longest {}, boundary merges {}",
            ds.report.records, ds.report.tokens, ds.report.answer_tokens, ds.report.longest, merges
        );
    }
}

#[test]
fn train_on_inputs_learns_every_token_but_keeps_the_prompt_mask() {
    let tok = tokenizer();
    let tpl = Template::alpaca();
    let records = read_records(train("openbookqa")).unwrap();
    let cfg = EncodeConfig { train_on_inputs: true, cutoff: None, ..Default::default() };
    let masked = EncodeConfig { cutoff: None, ..Default::default() };
    for r in records.iter().take(10) {
        let (Encoded::Kept(e), Encoded::Kept(m)) =
            (encode_example(&tok, &tpl, r, &cfg).unwrap(), encode_example(&tok, &tpl, r, &masked).unwrap())
        else {
            panic!()
        };
        assert_eq!(e.input_ids, m.input_ids);
        assert_eq!(e.labels(), e.input_ids.iter().map(|&t| t as i64).collect::<Vec<_>>());
        assert_eq!(e.prompt_mask(), m.prompt_mask());
        assert!(e.prompt_mask().contains(&1));
    }
}

#[test]
fn cutoff_truncates_and_counts_like_llm_adapters() {
    let tok = tokenizer();
    let tpl = Template::alpaca();
    let full = encode_file(
        train("ARC-Challenge"),
        &tok,
        &tpl,
        &EncodeConfig { cutoff: None, ..Default::default() },
        Progress::Hidden,
    )
    .unwrap();
    let mut lens: Vec<usize> = full.examples.iter().map(Example::len).collect();
    lens.sort_unstable();
    let cutoff = lens[lens.len() * 3 / 4]; // a quarter of the samples are longer
    let cfg = EncodeConfig { cutoff: Some(cutoff), overlong: Overlong::Truncate, train_on_inputs: false };
    let cut = encode_file(train("ARC-Challenge"), &tok, &tpl, &cfg, Progress::Hidden).unwrap();
    let longer = full.examples.iter().filter(|e| e.len() > cutoff).count();
    let no_room = full.examples.iter().filter(|e| e.prompt_len >= cutoff).count();
    assert!(longer > 0);
    assert_eq!(cut.report.truncated + cut.report.dropped, longer);
    assert_eq!(cut.report.dropped, no_room);
    assert_eq!(cut.report.answers_cut(), longer, "every longer sample lost answer tokens");
    assert_eq!(cut.report.records, full.report.records);
    assert_eq!(cut.report.examples + cut.report.dropped, cut.report.records);
    assert!(cut.report.longest <= cutoff);
    for e in &cut.examples {
        let orig = &full.examples[e.record];
        assert_eq!(e.truncated, orig.len() > cutoff);
        assert_eq!(e.input_ids[..], orig.input_ids[..e.len()]);
        assert_eq!(e.prompt_len, orig.prompt_len);
        assert!(e.answer_len() >= 1, "a kept example always has an answer token");
    }

    let drop = EncodeConfig { overlong: Overlong::Drop, ..cfg };
    let dropped = encode_file(train("ARC-Challenge"), &tok, &tpl, &drop, Progress::Hidden).unwrap();
    assert_eq!(dropped.report.dropped, longer);
    assert_eq!(dropped.report.truncated, 0);
    assert_eq!(dropped.report.answers_cut(), no_room, "under drop, only prompts over the cutoff count");
    assert_eq!(dropped.dropped.len(), longer);
    for d in &dropped.dropped {
        assert_eq!(d.tokens, full.examples[d.record].len());
    }
}

#[test]
fn a_fixed_seed_gives_the_same_batches() {
    let tok = tokenizer();
    let ds =
        encode_file(train("boolq"), &tok, &Template::alpaca(), &EncodeConfig::default(), Progress::Hidden).unwrap();
    let cfg = BatchConfig { batch_size: 16, seed: 7, shuffle: true, bucket: Some(8), drop_last: false };
    let run = |cfg: &BatchConfig| {
        let mut b = Batcher::new(ds.examples.clone(), tok.pad_id(), cfg.clone()).unwrap();
        (0..50).map(|_| b.next_batch()).collect::<Vec<_>>()
    };
    let a = run(&cfg);
    assert_eq!(a, run(&cfg));
    let other = run(&BatchConfig { seed: 8, ..cfg.clone() });
    assert_ne!(
        a.iter().map(|b| &b.example_indices).collect::<Vec<_>>(),
        other.iter().map(|b| &b.example_indices).collect::<Vec<_>>()
    );
    for b in &a {
        let answer: usize = b.example_indices.iter().map(|&i| ds.examples[i].answer_len()).sum();
        assert_eq!(b.label_tokens(), answer, "labels are exactly the answer tokens");
        assert_eq!(
            b.prompt_mask.iter().map(|&m| m as usize).sum::<usize>(),
            b.example_indices.iter().map(|&i| ds.examples[i].prompt_len).sum::<usize>()
        );
    }
}
