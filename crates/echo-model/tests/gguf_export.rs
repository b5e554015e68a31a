//! GGUF export: the tiny-llama-a fixture exported and imported back (exact at f32, within
//! f16 rounding at f16, within a quantisation step at Q8_0/Q4_0), the tokenizer round trip,
//! llama.cpp's conventions (names, tied embeddings, LLaMA-3 RoPE factors, storage types), and
//! what export refuses. The adapter-merged round trip is in echo-adapters' tests; the check
//! against llama.cpp itself in xtask/tests/gguf_llama_cpp.rs.

use echo_autograd::Tape;
use echo_model::gguf::export::gguf_name;
use echo_model::gguf::import::hf_name;
use echo_model::gguf::tokenizer::{from_hf, SpecialIds};
use echo_model::gguf::{export_gguf, import_gguf, ExportType, GgmlType, GgufFile, Value};
use echo_model::weights::WeightFiles;
use echo_model::{Batch, Llama, LlamaConfig, Plain};
use echo_tensor::Tensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    echo_testdata::tiny_llama_a()
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("gguf-export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A copy of the fixture's model files (no references) whose config.json `edit` changes.
fn fixture_copy(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let m = dir.join("model");
    std::fs::create_dir_all(&m).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture().join(f), m.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(m.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    m
}

/// The fixture's logits on its reference batch (real positions only).
fn logits(model: &Llama) -> Vec<f32> {
    let reference = WeightFiles::open_files(&[fixture().join("reference.safetensors")]).unwrap();
    let (ids, _) = reference.i64_tensor("input_ids").unwrap();
    let (mask, _) = reference.i64_tensor("attention_mask").unwrap();
    let batch = Batch::new(&ids, &mask, 2, 12, 512).unwrap();
    let out = model.forward(&Tape::inference(), &batch, &mut Plain, &[]).unwrap();
    let rows: Vec<usize> = (0..21).collect();
    model.logits_at(&out.hidden, &rows).unwrap().value().to_vec_f32()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

const SAMPLES: &[&str] = &[
    "Please answer the following question with true or false, question: is the sky blue on a clear day?",
    "<|im_start|>user\nIs water wet?<|im_end|>\n<|im_start|>assistant\n",
    "  spaces   and\ttabs, numbers 12345 and ünïcödé ✓",
];

#[test]
fn names_are_the_inverse_of_the_importers() {
    let cfg = LlamaConfig::from_dir(&fixture()).unwrap();
    let w = WeightFiles::open_dir(&fixture()).unwrap();
    let mut seen = std::collections::HashSet::new();
    for hf in w.names() {
        let g = gguf_name(hf).unwrap_or_else(|| panic!("{hf} has no GGUF name"));
        assert_eq!(hf_name(&g).as_deref(), Some(hf), "{hf} -> {g} -> back");
        assert!(seen.insert(g));
    }
    assert_eq!(seen.len(), 2 + 9 * cfg.num_hidden_layers + 1);
    assert!(seen.contains("blk.3.ffn_down.weight") && seen.contains("output.weight"));
}

#[test]
fn f32_export_imports_back_exactly_with_its_tokenizer() {
    let dir = scratch("f32");
    let gguf = dir.join("tiny.gguf");
    let s = export_gguf(&fixture(), &HashMap::new(), &gguf, ExportType::F32, None).unwrap();
    assert_eq!(s.tensors, 2 + 4 * 9 + 1);
    assert_eq!(s.types.get("F32"), Some(&s.tensors));
    assert_eq!(s.tokenizer_pre, "gpt-2");
    assert_eq!(s.padded_tokens, 0);
    assert_eq!(s.bytes, std::fs::metadata(&gguf).unwrap().len());

    let g = GgufFile::open(&gguf).unwrap();
    assert_eq!(g.opt_str("general.architecture").unwrap(), Some("llama"));
    assert_eq!(g.opt_str("general.name").unwrap(), Some("tiny-llama-a"));
    assert_eq!(g.opt_u64("llama.vocab_size").unwrap(), Some(512));
    assert_eq!(g.opt_u64("llama.rope.dimension_count").unwrap(), Some(16));
    assert_eq!(g.opt_u64("llama.attention.head_count_kv").unwrap(), Some(2));
    assert_eq!(g.opt_bool("tokenizer.ggml.add_bos_token").unwrap(), Some(false));
    assert!(g.tensor("output.weight").is_some(), "the fixture's embeddings are untied");
    // Q is stored permuted (ggml's RoPE layout), so the file's bytes are not HF's.
    let q_hf = WeightFiles::open_dir(&fixture()).unwrap().f32_tensor("model.layers.0.self_attn.q_proj.weight", None);
    assert_ne!(g.tensor_f32(g.tensor("blk.0.attn_q.weight").unwrap()).unwrap(), q_hf.unwrap().to_vec_f32());

    let out = dir.join("hf");
    import_gguf(&gguf, &out).unwrap();
    let orig = WeightFiles::open_dir(&fixture()).unwrap();
    let back = WeightFiles::open_dir(&out).unwrap();
    assert_eq!(back.names(), orig.names());
    for name in orig.names() {
        let (a, b) = (orig.f32_tensor(name, None).unwrap(), back.f32_tensor(name, None).unwrap());
        assert_eq!(a.to_vec_f32(), b.to_vec_f32(), "{name} changed in the round trip");
    }
    assert_eq!(LlamaConfig::from_dir(&out).unwrap(), LlamaConfig::from_dir(&fixture()).unwrap());
    assert_eq!(logits(&Llama::load(&out).unwrap()), logits(&Llama::load(&fixture()).unwrap()));

    let theirs = tokenizers::Tokenizer::from_file(fixture().join("tokenizer.json")).unwrap();
    let mine = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    for text in SAMPLES {
        let (a, b) = (theirs.encode(*text, false).unwrap(), mine.encode(*text, false).unwrap());
        assert_eq!(a.get_ids(), b.get_ids(), "{text:?}");
    }
    let tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!((tc["bos_token"].as_str(), tc["eos_token"].as_str()), (Some("<|im_start|>"), Some("<|im_end|>")));
    assert_eq!(tc["pad_token"], "<|endoftext|>");
}

#[test]
fn f16_export_round_trips_within_f16_rounding() {
    let dir = scratch("f16");
    let gguf = dir.join("tiny-f16.gguf");
    let s = export_gguf(&fixture(), &HashMap::new(), &gguf, ExportType::F16, Some("tiny f16")).unwrap();
    // Norms (2 per block + the final one) stay f32; every matrix is f16.
    assert_eq!(s.types.get("F32"), Some(&(2 * 4 + 1)));
    assert_eq!(s.types.get("F16"), Some(&(2 + 4 * 7)));
    let out = dir.join("hf");
    import_gguf(&gguf, &out).unwrap();
    let orig = WeightFiles::open_dir(&fixture()).unwrap();
    let back = WeightFiles::open_dir(&out).unwrap();
    for name in orig.names() {
        let (a, b) =
            (orig.f32_tensor(name, None).unwrap().to_vec_f32(), back.f32_tensor(name, None).unwrap().to_vec_f32());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            // f16 keeps 11 significant bits: a relative error of at most 2^-11, or half of
            // f16's subnormal step 2^-24 below 2^-14.
            assert!((x - y).abs() <= (x.abs() * 2f32.powi(-11)).max(2f32.powi(-25)), "{name}[{i}]: {x} -> {y}");
        }
        if name.ends_with("norm.weight") {
            assert_eq!(a, b, "{name} must stay f32");
        }
    }
    let d = max_diff(&logits(&Llama::load(&out).unwrap()), &logits(&Llama::load(&fixture()).unwrap()));
    eprintln!("f16: max |logit diff| {d}");
    assert!(d > 0.0 && d < 2e-2, "f16 logits moved by {d}");
}

#[test]
fn quantised_exports_stay_close_and_keep_the_head_at_8_bits() {
    let dir = scratch("quant");
    let want = logits(&Llama::load(&fixture()).unwrap());
    // Bounds about twice what was measured (Q8_0 0.18, Q4_0 2.5): the fixture's random weights
    // (q/k at twice the usual scale, for peaked attention) amplify rounding far more than a
    // trained model's do; the point here is the order of magnitude per format.
    for (ty, bound) in [(ExportType::Q8_0, 0.4f32), (ExportType::Q4_0, 5.0)] {
        let gguf = dir.join(format!("tiny-{ty:?}.gguf"));
        let s = export_gguf(&fixture(), &HashMap::new(), &gguf, ty, None).unwrap();
        let g = GgufFile::open(&gguf).unwrap();
        let ty_of = |n: &str| g.tensor(n).unwrap().ggml_type;
        assert_eq!(ty_of("blk.2.ffn_up.weight"), ty.ggml());
        assert_eq!(ty_of("blk.2.ffn_norm.weight"), GgmlType::F32);
        assert_eq!(ty_of("output.weight"), GgmlType::Q8_0, "{ty:?}: the LM head keeps 8 bits");
        assert_eq!(s.types.values().sum::<usize>(), s.tensors);
        let out = dir.join(format!("hf-{ty:?}"));
        import_gguf(&gguf, &out).unwrap();
        let d = max_diff(&logits(&Llama::load(&out).unwrap()), &want);
        eprintln!("{ty:?}: max |logit diff| {d}");
        assert!(d > 0.0 && d < bound, "{ty:?}: logits moved by {d}");
    }
}

#[test]
fn replaced_tensors_are_exported_instead_of_the_folders() {
    let dir = scratch("replaced");
    let w = WeightFiles::open_dir(&fixture()).unwrap();
    let name = "model.layers.1.self_attn.k_proj.weight";
    let orig = w.f32_tensor(name, None).unwrap();
    let changed =
        Tensor::new(orig.to_vec_f32().iter().map(|v| v * 1.5 + 0.01).collect(), orig.dims().to_vec()).unwrap();
    let gguf = dir.join("r.gguf");
    export_gguf(&fixture(), &HashMap::from([(name.to_string(), changed.clone())]), &gguf, ExportType::F32, None)
        .unwrap();
    let out = dir.join("hf");
    import_gguf(&gguf, &out).unwrap();
    let back = WeightFiles::open_dir(&out).unwrap();
    assert_eq!(back.f32_tensor(name, None).unwrap().to_vec_f32(), changed.to_vec_f32());
    let other = "model.layers.0.self_attn.k_proj.weight";
    assert_eq!(back.f32_tensor(other, None).unwrap().to_vec_f32(), w.f32_tensor(other, None).unwrap().to_vec_f32());

    // A replacement of the wrong shape, a non-finite one, or one the model does not have.
    let bad = |t: HashMap<String, Tensor>, needle: &str| {
        let e = export_gguf(&fixture(), &t, &dir.join("bad.gguf"), ExportType::F16, None).unwrap_err().to_string();
        assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        assert!(!dir.join("bad.gguf").exists(), "nothing is written on error");
    };
    let small = Tensor::new(vec![0.0; 4], vec![2, 2]).unwrap();
    bad(HashMap::from([(name.to_string(), small.clone())]), "has shape [2, 2], expected [32, 64]");
    let mut nan = orig.to_vec_f32();
    nan[7] = f32::NAN;
    bad(HashMap::from([(name.to_string(), Tensor::new(nan, vec![32, 64]).unwrap())]), "NaN");
    bad(HashMap::from([("model.layers.9.mlp.up_proj.weight".to_string(), small)]), "not part of the 4-layer LLaMA");
}

#[test]
fn tied_embeddings_omit_output_and_import_as_tied() {
    let dir = scratch("tied");
    let m = fixture_copy(&dir, |c| c["tie_word_embeddings"] = true.into());
    let gguf = dir.join("tied.gguf");
    let s = export_gguf(&m, &HashMap::new(), &gguf, ExportType::F16, None).unwrap();
    assert!(s.tied);
    let g = GgufFile::open(&gguf).unwrap();
    assert!(g.tensor("output.weight").is_none(), "tied: llama.cpp uses token_embd as the head");
    let summary = import_gguf(&gguf, &dir.join("hf")).unwrap();
    assert!(summary.config.tie_word_embeddings);
}

#[test]
fn llama3_rope_scaling_becomes_llama_cpps_rope_freqs() {
    let dir = scratch("rope3");
    let m = fixture_copy(&dir, |c| {
        c["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        c.as_object_mut().unwrap().remove("rope_parameters");
    });
    assert!(LlamaConfig::from_dir(&m).unwrap().rope_scaling.is_some());
    let gguf = dir.join("r.gguf");
    export_gguf(&m, &HashMap::new(), &gguf, ExportType::F32, None).unwrap();
    let g = GgufFile::open(&gguf).unwrap();
    let f = g.tensor_f32(g.tensor("rope_freqs.weight").unwrap()).unwrap();
    assert_eq!(f.len(), 8);
    // theta 10000, head_dim 16: wavelengths 2*pi*10000^(2i/16). Below 64/4 = 16 the frequency is
    // kept (factor 1), above 64/1 it is divided by 8, smoothly in between.
    assert_eq!(f[0], 1.0);
    assert_eq!(f[7], 8.0);
    assert!(f.windows(2).all(|w| w[0] <= w[1]) && f.iter().any(|&x| x > 1.0 && x < 8.0), "{f:?}");
}

#[test]
fn tokenizer_metadata_pads_the_vocabulary_and_names_the_special_tokens() {
    let v = from_hf(&fixture(), 520, &SpecialIds::default()).unwrap();
    assert_eq!(v.padded, 8);
    let get = |k: &str| v.entries.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let Some(Value::Array(_, tokens)) = get("tokenizer.ggml.tokens") else { panic!("no tokens") };
    assert_eq!(tokens.len(), 520);
    assert_eq!(tokens[515], Value::String("[PAD515]".into()));
    assert_eq!(tokens[1], Value::String("<|im_start|>".into()));
    let Some(Value::Array(_, types)) = get("tokenizer.ggml.token_type") else { panic!("no types") };
    assert_eq!((&types[0], &types[3], &types[515]), (&Value::I32(3), &Value::I32(1), &Value::I32(5)));
    assert_eq!(v.special, SpecialIds { bos: Some(1), eos: Some(2), pad: Some(0), unk: Some(0) });
    assert_eq!(get("tokenizer.ggml.pre"), Some(Value::String("gpt-2".into())));
    // A vocabulary smaller than the tokenizer's ids is a contradiction, not a truncation.
    let e = from_hf(&fixture(), 100, &SpecialIds::default()).unwrap_err().to_string();
    assert!(e.contains("outside the model's vocabulary of 100"), "{e}");
}

fn edit_tokenizer(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let m = fixture_copy(dir, |_| {});
    let p = m.join("tokenizer.json");
    let mut t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut t);
    std::fs::write(&p, serde_json::to_string(&t).unwrap()).unwrap();
    m
}

#[test]
fn export_refuses_what_llama_cpp_would_tokenise_differently_and_never_overwrites_the_model() {
    let dir = scratch("refuse");
    let err =
        |m: &Path, out: &Path| export_gguf(m, &HashMap::new(), out, ExportType::F16, None).unwrap_err().to_string();

    let spm = edit_tokenizer(&dir.join("spm"), |t| {
        t["model"]["byte_fallback"] = true.into();
        t["pre_tokenizer"] = serde_json::json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first"});
    });
    let e = err(&spm, &dir.join("a.gguf"));
    assert!(e.contains("tokenizer.json") && e.contains("SentencePiece-style"), "{e}");

    let odd = edit_tokenizer(&dir.join("odd"), |t| {
        t["pre_tokenizer"] = serde_json::json!({"type": "Whitespace"});
    });
    let e = err(&odd, &dir.join("b.gguf"));
    assert!(e.contains("tokenizer.json") && e.contains("Whitespace") && e.contains("not one llama.cpp"), "{e}");

    // The output may not replace a file of the model's folder; the file stays as it was.
    let m = fixture_copy(&dir.join("own"), |_| {});
    let target = m.join("model.safetensors");
    let before = std::fs::read(&target).unwrap();
    let e = err(&m, &target);
    assert!(e.contains("refusing to overwrite the model's own files"), "{e}");
    assert_eq!(std::fs::read(&target).unwrap(), before);
    let e = err(&m, &dir);
    assert!(e.contains("is a folder"), "{e}");
    // A new file beside the model is fine.
    export_gguf(&m, &HashMap::new(), &m.join("model.gguf"), ExportType::Q8_0, None).unwrap();
}
