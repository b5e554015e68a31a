//! GGUF import: block formats against llama.cpp's layouts, the Q/K permutation round trip on
//! the tiny-llama-a fixture (logits unchanged after export → import), the rebuilt tokenizer,
//! and bad files (each error names the file).

use echo_autograd::Tape;
use echo_model::gguf::dequant::dequantize;
use echo_model::gguf::import::{permute_qk, unpermute_qk};
use echo_model::gguf::{import_gguf, GgmlType, GgufFile, GgufWriter, Value};
use echo_model::weights::WeightFiles;
use echo_model::{Batch, Llama, LlamaConfig, Plain};
use half::f16;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    echo_testdata::tiny_llama_a()
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("gguf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Deterministic test values with varied magnitudes and signs.
fn wave(n: usize, seed: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 * 0.37 + seed).sin() * 1.7 + (i as f32 * 0.11).cos() * 0.3) * (1.0 + (i % 7) as f32 * 0.25))
        .collect()
}

/// Writes `data` as one tensor of type `ty` in a GGUF file and reads it back through the reader.
fn through_file(ty: GgmlType, data: &[f32], dir: &Path) -> Vec<f32> {
    let path = dir.join(format!("{}.gguf", ty.name()));
    let mut w = GgufWriter::new();
    w.str("general.architecture", "test");
    w.tensor("t", &[data.len() / 32, 32], data, ty);
    w.write(&path).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let t = g.tensor("t").unwrap();
    assert_eq!(t.ne, vec![32, (data.len() / 32) as u64], "ggml lists the innermost dimension first");
    assert_eq!(t.ggml_type, ty);
    g.tensor_f32(t).unwrap()
}

#[test]
fn exactly_representable_values_survive_every_format() {
    let dir = scratch("exact");
    // Codes -8..7 times 0.25, with -2.0 the largest magnitude in each block: Q4_0's scale is
    // max / -8 = 0.25 exactly, so quantising is lossless.
    let q4: Vec<f32> = (0..64).map(|i| if i % 32 == 5 { -2.0 } else { ((i * 7 % 16) as f32 - 8.0) * 0.25 }).collect();
    assert_eq!(through_file(GgmlType::Q4_0, &q4, &dir), q4);
    // Q4_1: min 1.0, 15 steps of 0.5 up to 8.5.
    let q41: Vec<f32> = (0..64)
        .map(|i| {
            1.0 + (if i % 32 == 0 {
                0
            } else if i % 32 == 1 {
                15
            } else {
                i * 5 % 16
            }) as f32
                * 0.5
        })
        .collect();
    assert_eq!(through_file(GgmlType::Q4_1, &q41, &dir), q41);
    // Q8_0: amax 127 * 0.5 so d = 0.5.
    let q8: Vec<f32> =
        (0..64).map(|i| if i % 32 == 3 { -63.5 } else { ((i * 37 % 255) as f32 - 127.0) * 0.5 }).collect();
    assert_eq!(through_file(GgmlType::Q8_0, &q8, &dir), q8);
    // Q5_0: codes -16..15 times 0.125, -2.0 largest.
    let q50: Vec<f32> =
        (0..64).map(|i| if i % 32 == 9 { -2.0 } else { ((i * 11 % 32) as f32 - 16.0) * 0.125 }).collect();
    assert_eq!(through_file(GgmlType::Q5_0, &q50, &dir), q50);
    let q51: Vec<f32> = (0..64)
        .map(|i| {
            -3.0 + (if i % 32 == 0 {
                0
            } else if i % 32 == 1 {
                31
            } else {
                i * 13 % 32
            }) as f32
                * 0.25
        })
        .collect();
    assert_eq!(through_file(GgmlType::Q5_1, &q51, &dir), q51);
    let plain = wave(64, 0.5);
    assert_eq!(through_file(GgmlType::F32, &plain, &dir), plain);
    let halves: Vec<f32> = plain.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
    assert_eq!(through_file(GgmlType::F16, &halves, &dir), halves);
    let bf: Vec<f32> = plain.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
    assert_eq!(through_file(GgmlType::BF16, &bf, &dir), bf);
}

#[test]
fn rounding_stays_within_each_formats_step() {
    let dir = scratch("round");
    let x = wave(256, 1.3);
    for (ty, steps_err) in [
        (GgmlType::Q8_0, 0.5),
        (GgmlType::Q4_0, 1.0), // the code opposite the extreme clamps at 7 (one full step)
        (GgmlType::Q4_1, 0.5),
        (GgmlType::Q5_0, 1.0),
        (GgmlType::Q5_1, 0.5),
        (GgmlType::F16, 0.0),
    ] {
        let y = through_file(ty, &x, &dir);
        for (b, (xb, yb)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let (lo, hi) = xb.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
            let step = match ty {
                GgmlType::Q8_0 => amax / 127.0,
                GgmlType::Q4_0 => amax / 8.0,
                GgmlType::Q5_0 => amax / 16.0,
                GgmlType::Q4_1 => (hi - lo) / 15.0,
                GgmlType::Q5_1 => (hi - lo) / 31.0,
                _ => 0.0,
            };
            // Plus the f16 rounding of the scale (and minimum): 2^-11 relative, times the code.
            let tol = steps_err * step + amax * 2e-3 + 1e-6;
            let worst = xb.iter().zip(yb).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst <= tol, "{}: block {b} error {worst} > {tol}", ty.name());
        }
    }
}

#[test]
fn block_layouts_match_llama_cpp() {
    // Hand-packed blocks, independent of our quantisers: the nibble and byte order of ggml.
    let d = f16::from_f32(0.5).to_le_bytes();
    let m = f16::from_f32(-1.0).to_le_bytes();
    // Q4_0: byte j holds element j (low nibble) and j + 16 (high nibble), value (q - 8) * d.
    let mut b = d.to_vec();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
    for j in 0..16 {
        assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
        assert_eq!(y[j + 16], (7.0 - j as f32) * 0.5);
    }
    // Q4_1: d then m, value q * d + m.
    let mut b = [d, m].concat();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
    assert_eq!(y[3], 3.0 * 0.5 - 1.0);
    assert_eq!(y[16 + 3], 12.0 * 0.5 - 1.0);
    // Q8_0: signed bytes.
    let mut b = d.to_vec();
    b.extend((0..32i8).map(|j| (j * 4 - 64) as u8));
    let y = dequantize(GgmlType::Q8_0, &b, 32).unwrap();
    assert_eq!(y[0], -32.0);
    assert_eq!(y[31], (31.0 * 4.0 - 64.0) * 0.5);
    // Q5_0: the fifth bit of element j is bit j of qh, of element j + 16 bit j + 16.
    let mut b = d.to_vec();
    b.extend(0x8000_0001u32.to_le_bytes()); // element 0 and element 31 get +16
    b.extend([0u8; 16]);
    let y = dequantize(GgmlType::Q5_0, &b, 32).unwrap();
    assert_eq!(y[0], 0.0);
    assert_eq!(y[1], -8.0);
    assert_eq!(y[31], 0.0);
    assert_eq!(y[16], -8.0);
}

#[test]
fn k_quants_match_gguf_py() {
    // One deterministic block per K format (byte i = (37 i + 11) mod 256, then d = 1/32 and
    // dmin = 1/128 as f16), with values dequantised by gguf-py 0.19 (llama.cpp's numpy
    // reference; see tests/gguf_reference.py, which also checks whole files).
    let idx = [0usize, 1, 31, 32, 63, 64, 100, 128, 200, 255];
    let cases: [(GgmlType, [f32; 10], f64); 3] = [
        (
            GgmlType::Q4_K,
            [10.2578125, -0.3984375, 5.4140625, 0.4375, 1.4375, 13.6171875, 3.234375, 13.3125, 4.4609375, 1.7890625],
            1767.25,
        ),
        (
            GgmlType::Q5_K,
            [25.757_813, -0.3984375, 5.4140625, 3.6875, 2.6875, 13.6171875, 7.609375, 32.8125, 4.4609375, 3.6640625],
            3697.75,
        ),
        (
            GgmlType::Q6_K,
            [-44.71875, 53.0, -3.0, 7.21875, -18.125, -95.0, 78.84375, -10.96875, 34.03125, -1.875],
            144.125,
        ),
    ];
    for (ty, want, sum) in cases {
        let size = ty.block().1;
        let mut b: Vec<u8> = (0..size).map(|i| ((i * 37 + 11) % 256) as u8).collect();
        let scales = [f16::from_f32(0.03125).to_le_bytes(), f16::from_f32(0.0078125).to_le_bytes()].concat();
        if ty == GgmlType::Q6_K {
            b[208..210].copy_from_slice(&scales[..2]);
        } else {
            b[0..4].copy_from_slice(&scales);
        }
        let y = dequantize(ty, &b, 256).unwrap();
        let got: Vec<f32> = idx.iter().map(|&i| y[i]).collect();
        assert_eq!(got, want, "{}", ty.name());
        assert_eq!(y.iter().map(|&v| v as f64).sum::<f64>(), sum, "{}", ty.name());
    }
}

#[test]
fn metadata_of_every_type_round_trips() {
    let dir = scratch("meta");
    let path = dir.join("m.gguf");
    let values = vec![
        ("a.u8", Value::U8(200)),
        ("a.i8", Value::I8(-5)),
        ("a.u16", Value::U16(60000)),
        ("a.i16", Value::I16(-30000)),
        ("a.u32", Value::U32(4_000_000_000)),
        ("a.i32", Value::I32(-2_000_000_000)),
        ("a.f32", Value::F32(1.5e-5)),
        ("a.bool", Value::Bool(true)),
        ("a.str", Value::String("héllo".into())),
        ("a.u64", Value::U64(u64::MAX)),
        ("a.i64", Value::I64(i64::MIN)),
        ("a.f64", Value::F64(-2.25)),
        ("a.arr", Value::Array(8, vec![Value::String("x".into()), Value::String(String::new())])),
        ("a.ints", Value::Array(5, vec![Value::I32(1), Value::I32(-1)])),
        ("a.empty", Value::Array(6, vec![])),
    ];
    let mut w = GgufWriter::new();
    w.alignment = 64;
    w.kv("general.alignment", Value::U32(64));
    for (k, v) in &values {
        w.kv(k, v.clone());
    }
    w.tensor("t", &[2, 32], &wave(64, 0.0), GgmlType::F32);
    w.version = 2;
    w.write(&path).unwrap();
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.version, 2);
    assert_eq!(g.alignment, 64);
    assert_eq!(g.data_start % 64, 0);
    for (k, v) in &values {
        assert_eq!(g.get(k), Some(v), "{k}");
    }
    assert_eq!(g.tensor_f32(g.tensor("t").unwrap()).unwrap(), wave(64, 0.0));
}

#[test]
fn qk_permutation_is_llama_cpps() {
    // One head of 4 rows: reshape [1, 2, 2, in] and swap the middle axes: rows 0, 2, 1, 3.
    let w: Vec<f32> = (0..8).map(|x| x as f32).collect();
    assert_eq!(permute_qk(&w, 4, 2, 1), vec![0., 1., 4., 5., 2., 3., 6., 7.]);
    let big = wave(64 * 16, 2.0);
    assert_eq!(unpermute_qk(&permute_qk(&big, 64, 16, 4), 64, 16, 4), big);
    assert_ne!(permute_qk(&big, 64, 16, 4), big);
}

/// The fixture exported the way `convert_hf_to_gguf.py` does (names, ggml dims, Q/K rows
/// permuted, tokenizer as GGUF arrays), with weights in `ty` and norms in F32.
fn fixture_as_gguf(path: &Path, ty: GgmlType, tied: bool) {
    let dir = fixture();
    let cfg = LlamaConfig::from_dir(&dir).unwrap();
    let w = WeightFiles::open_dir(&dir).unwrap();
    let mut g = GgufWriter::new();
    g.str("general.architecture", "llama").str("general.name", "tiny-llama-a");
    g.u32("llama.block_count", cfg.num_hidden_layers as u32)
        .u32("llama.context_length", cfg.max_position_embeddings as u32)
        .u32("llama.embedding_length", cfg.hidden_size as u32)
        .u32("llama.feed_forward_length", cfg.intermediate_size as u32)
        .u32("llama.attention.head_count", cfg.num_attention_heads as u32)
        .u32("llama.attention.head_count_kv", cfg.num_key_value_heads as u32)
        .f32("llama.rope.freq_base", cfg.rope_theta as f32)
        .f32("llama.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
        .u32("llama.rope.dimension_count", cfg.head_dim as u32);
    let tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
    let vocab = tok["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![""; vocab.len()];
    for (t, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = t;
    }
    let special: Vec<u64> = tok["added_tokens"].as_array().unwrap().iter().map(|a| a["id"].as_u64().unwrap()).collect();
    let types: Vec<i32> = (0..tokens.len() as u64).map(|i| if special.contains(&i) { 3 } else { 1 }).collect();
    let merges: Vec<String> = tok["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap()))
        .collect();
    let merges: Vec<&str> = merges.iter().map(String::as_str).collect();
    g.str("tokenizer.ggml.model", "gpt2").str("tokenizer.ggml.pre", "gpt-2");
    g.strs("tokenizer.ggml.tokens", &tokens)
        .i32s("tokenizer.ggml.token_type", &types)
        .strs("tokenizer.ggml.merges", &merges);
    g.u32("tokenizer.ggml.bos_token_id", 1)
        .u32("tokenizer.ggml.eos_token_id", 2)
        .u32("tokenizer.ggml.padding_token_id", 0);
    g.str(
        "tokenizer.chat_template",
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
    );

    let mut put = |gguf: &str, hf: &str, qty: GgmlType, heads: Option<usize>| {
        let t = w.f32_tensor(hf, None).unwrap();
        let shape = t.dims().to_vec();
        let mut data = t.to_vec_f32();
        if let Some(h) = heads {
            data = permute_qk(&data, shape[0], shape[1], h);
        }
        g.tensor(gguf, &shape, &data, qty);
    };
    put("token_embd.weight", "model.embed_tokens.weight", ty, None);
    for l in 0..cfg.num_hidden_layers {
        let hf = |m: &str| format!("model.layers.{l}.{m}.weight");
        put(&format!("blk.{l}.attn_norm.weight"), &hf("input_layernorm"), GgmlType::F32, None);
        put(&format!("blk.{l}.attn_q.weight"), &hf("self_attn.q_proj"), ty, Some(cfg.num_attention_heads));
        put(&format!("blk.{l}.attn_k.weight"), &hf("self_attn.k_proj"), ty, Some(cfg.num_key_value_heads));
        put(&format!("blk.{l}.attn_v.weight"), &hf("self_attn.v_proj"), ty, None);
        put(&format!("blk.{l}.attn_output.weight"), &hf("self_attn.o_proj"), ty, None);
        put(&format!("blk.{l}.ffn_norm.weight"), &hf("post_attention_layernorm"), GgmlType::F32, None);
        put(&format!("blk.{l}.ffn_gate.weight"), &hf("mlp.gate_proj"), ty, None);
        put(&format!("blk.{l}.ffn_up.weight"), &hf("mlp.up_proj"), ty, None);
        put(&format!("blk.{l}.ffn_down.weight"), &hf("mlp.down_proj"), ty, None);
    }
    put("output_norm.weight", "model.norm.weight", GgmlType::F32, None);
    if !tied {
        put("output.weight", "lm_head.weight", ty, None);
    }
    g.write(path).unwrap();
}

fn fixture_logits(model: &Llama) -> Vec<f32> {
    let reference = WeightFiles::open_files(&[fixture().join("reference.safetensors")]).unwrap();
    let (ids, _) = reference.i64_tensor("input_ids").unwrap();
    let (mask, _) = reference.i64_tensor("attention_mask").unwrap();
    let batch = Batch::new(&ids, &mask, 2, 12, 512).unwrap();
    let out = model.forward(&Tape::inference(), &batch, &mut Plain, &[]).unwrap();
    // Row 1 is padded after 9 tokens: compare real positions only.
    let rows: Vec<usize> = (0..12).chain(12..21).collect();
    model.logits_at(&out.hidden, &rows).unwrap().value().to_vec_f32()
}

#[test]
fn f32_export_then_import_restores_the_hf_weights_exactly() {
    let dir = scratch("roundtrip");
    let gguf = dir.join("tiny.gguf");
    fixture_as_gguf(&gguf, GgmlType::F32, false);
    let out = dir.join("hf");
    let summary = import_gguf(&gguf, &out).unwrap();
    assert_eq!(summary.tensors, 2 + 4 * 9 + 1);
    assert_eq!(summary.types.get("F32"), Some(&(2 + 4 * 9 + 1)));

    let orig = WeightFiles::open_dir(&fixture()).unwrap();
    let back = WeightFiles::open_dir(&out).unwrap();
    assert_eq!(back.names(), orig.names());
    for name in orig.names() {
        let a = orig.f32_tensor(name, None).unwrap();
        let b = back.f32_tensor(name, None).unwrap();
        assert_eq!(a.dims(), b.dims(), "{name}");
        assert_eq!(a.to_vec_f32(), b.to_vec_f32(), "{name} differs after import (Q/K un-permutation?)");
    }

    // The config it wrote loads and says what the fixture's says.
    let mine = LlamaConfig::from_dir(&out).unwrap();
    let theirs = LlamaConfig::from_dir(&fixture()).unwrap();
    assert_eq!(mine, theirs);
    let want = fixture_logits(&Llama::load(&fixture()).unwrap());
    assert_eq!(fixture_logits(&Llama::load(&out).unwrap()), want);
    for f in ["generation_config.json", "tokenizer_config.json"] {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(f)).unwrap()).unwrap();
        if f == "generation_config.json" {
            assert_eq!(
                (v["bos_token_id"].as_u64(), v["eos_token_id"].as_u64(), v["pad_token_id"].as_u64()),
                (Some(1), Some(2), Some(0))
            );
        } else {
            assert_eq!(v["eos_token"], "<|im_end|>");
            assert!(v["chat_template"].as_str().unwrap().contains("<|im_start|>"));
        }
    }
}

#[test]
fn skipping_the_unpermutation_would_be_caught() {
    // Guard: the round trip above would pass trivially if permute were the identity on the
    // fixture's shapes; it is not, and the model's logits depend on it.
    let w = WeightFiles::open_dir(&fixture()).unwrap();
    let q = w.f32_tensor("model.layers.0.self_attn.q_proj.weight", None).unwrap();
    let p = permute_qk(&q.to_vec_f32(), 64, 64, 4);
    assert_ne!(p, q.to_vec_f32());
}

#[test]
fn quantised_import_stays_close_and_ties_embeddings() {
    let dir = scratch("q8");
    let gguf = dir.join("tiny-q8.gguf");
    fixture_as_gguf(&gguf, GgmlType::Q8_0, true);
    let out = dir.join("hf");
    let s = import_gguf(&gguf, &out).unwrap();
    assert!(s.config.tie_word_embeddings, "no output.weight means tied embeddings");
    assert_eq!(s.types.get("Q8_0"), Some(&(1 + 4 * 7)));
    let model = Llama::load(&out).unwrap();
    assert_eq!(model.lm_head.to_vec_f32(), model.embed.to_vec_f32());
    let q = WeightFiles::open_dir(&out).unwrap().f32_tensor("model.layers.1.self_attn.k_proj.weight", None).unwrap();
    let orig =
        WeightFiles::open_dir(&fixture()).unwrap().f32_tensor("model.layers.1.self_attn.k_proj.weight", None).unwrap();
    let diff = q.max_abs_diff(&orig).unwrap();
    let amax = orig.to_vec_f32().iter().fold(0f32, |a, v| a.max(v.abs()));
    assert!(diff < amax / 127.0, "Q8_0 k_proj off by {diff} (amax {amax})");
}

#[test]
fn rebuilt_tokenizer_encodes_like_the_original() {
    let dir = scratch("tok");
    let gguf = dir.join("tiny.gguf");
    fixture_as_gguf(&gguf, GgmlType::F32, false);
    let out = dir.join("hf");
    import_gguf(&gguf, &out).unwrap();
    let orig = tokenizers::Tokenizer::from_file(fixture().join("tokenizer.json")).unwrap();
    let mine = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    for text in [
        "Please answer the following question with true or false, question: is the sky blue on a clear day?",
        "<|im_start|>user\nIs water wet?<|im_end|>\n<|im_start|>assistant\n",
        "  spaces   and\ttabs, numbers 12345 and ünïcödé ✓",
    ] {
        let a = orig.encode(text, false).unwrap();
        let b = mine.encode(text, false).unwrap();
        assert_eq!(a.get_ids(), b.get_ids(), "{text:?}");
        assert_eq!(mine.decode(b.get_ids(), false).unwrap(), text);
    }
    assert_eq!(mine.token_to_id("<|im_start|>"), Some(1));
    let ids = mine.encode("<|im_start|>", false).unwrap();
    assert_eq!(ids.get_ids(), &[1], "special tokens are matched whole");
}

fn assert_err_names_file(err: impl std::fmt::Display, path: &Path, needle: &str) {
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "error does not name the file: {msg}");
    assert!(msg.contains(needle), "error {msg:?} does not mention {needle:?}");
}

fn small_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.str("general.architecture", "llama");
    w.tensor("t", &[2, 32], &wave(64, 0.0), GgmlType::Q8_0);
    w.to_bytes()
}

#[test]
fn bad_files_are_clear_errors() {
    let dir = scratch("bad");
    let good = small_file();

    let p = dir.join("magic.gguf");
    let mut b = good.clone();
    b[..4].copy_from_slice(b"GGML");
    std::fs::write(&p, &b).unwrap();
    assert_err_names_file(GgufFile::open(&p).err().unwrap(), &p, "bad magic");
    assert_err_names_file(import_gguf(&p, &dir.join("o")).unwrap_err(), &p, "bad magic");

    // Truncated: in the tensor data, in the header, and in the middle of a string.
    // (The writer pads the data to the alignment: 68 bytes of Q8_0 end 28 bytes before EOF.)
    for (i, cut) in [good.len() - 40, 30, 20, 3].into_iter().enumerate() {
        let p = dir.join(format!("trunc{i}.gguf"));
        std::fs::write(&p, &good[..cut]).unwrap();
        assert_err_names_file(GgufFile::open(&p).err().unwrap(), &p, "truncated");
    }

    // Unknown tensor type code: patch the type field of the only tensor info.
    let p = dir.join("unknown-type.gguf");
    let mut b = good.clone();
    let name_at = b.windows(9).position(|w| w == [1, 0, 0, 0, 0, 0, 0, 0, b't']).expect("tensor name") + 9;
    let type_at = name_at + 4 + 2 * 8; // n_dims, ne[0], ne[1]
    assert_eq!(u32::from_le_bytes(b[type_at..type_at + 4].try_into().unwrap()), GgmlType::Q8_0.code());
    b[type_at..type_at + 4].copy_from_slice(&77u32.to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    assert_err_names_file(GgufFile::open(&p).err().unwrap(), &p, "unknown GGML tensor type 77");

    // A known type we cannot dequantise: opens, fails on the tensor with its name.
    let p = dir.join("iq.gguf");
    let mut w = GgufWriter::new();
    w.raw_tensor("w", &[256, 1], GgmlType::IQ2_XXS, vec![0; 66]);
    w.write(&p).unwrap();
    let g = GgufFile::open(&p).unwrap();
    let e = g.tensor_f32(g.tensor("w").unwrap()).unwrap_err();
    assert_err_names_file(&e, &p, "IQ2_XXS is not supported");

    // Version 1.
    let p = dir.join("v1.gguf");
    let mut b = good.clone();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    assert_err_names_file(GgufFile::open(&p).err().unwrap(), &p, "GGUF version 1");

    // A huge array count cannot make us allocate: it is checked against the file size.
    let p = dir.join("count.gguf");
    let mut w = GgufWriter::new();
    w.strs("k", &["a", "b"]);
    let mut b = w.to_bytes();
    let at = b.windows(4).position(|w| w == [8, 0, 0, 0]).unwrap() + 4; // element type string, then count
    b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    assert_err_names_file(GgufFile::open(&p).err().unwrap(), &p, "element count");

    // Dimensions whose element count fits in u64 but whose byte length does not (found by
    // the gguf fuzz target: an overflow panic, or in a release build a wrapped length).
    let p = dir.join("bytes-overflow.gguf");
    let mut b = good.clone();
    let ne_at = name_at + 4;
    b[ne_at..ne_at + 8].copy_from_slice(&(1u64 << 32).to_le_bytes());
    b[ne_at + 8..ne_at + 16].copy_from_slice(&((1u64 << 32) - 1).to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    assert_err_names_file(GgufFile::open(&p).err().unwrap(), &p, "overflowing");

    // Missing file.
    let p = dir.join("nope.gguf");
    assert_err_names_file(GgufFile::open(&p).err().unwrap(), &p, "No such file");
}

#[test]
fn import_refuses_what_it_cannot_represent() {
    let dir = scratch("refuse");
    // Not a llama model.
    let p = dir.join("arch.gguf");
    let mut w = GgufWriter::new();
    w.str("general.architecture", "gpt2");
    w.write(&p).unwrap();
    assert_err_names_file(import_gguf(&p, &dir.join("o")).unwrap_err(), &p, "general.architecture `gpt2`");
    // A llama GGUF missing a hyper-parameter names the key.
    let p = dir.join("hparams.gguf");
    let mut w = GgufWriter::new();
    w.str("general.architecture", "llama").u32("llama.block_count", 1);
    w.write(&p).unwrap();
    assert_err_names_file(import_gguf(&p, &dir.join("o")).unwrap_err(), &p, "llama.embedding_length");
    // An unknown pre-tokenizer is refused, not guessed.
    let src = dir.join("tiny.gguf");
    fixture_as_gguf(&src, GgmlType::F32, false);
    let g = GgufFile::open(&src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        let v = if k == "tokenizer.ggml.pre" { Value::String("mystery".into()) } else { v.clone() };
        w.kv(k, v);
    }
    for t in &g.tensors {
        w.raw_tensor(&t.name, &t.ne, t.ggml_type, g.tensor_bytes(t).to_vec());
    }
    let p = dir.join("pre.gguf");
    w.write(&p).unwrap();
    assert_err_names_file(import_gguf(&p, &dir.join("o")).unwrap_err(), &p, "tokenizer.ggml.pre `mystery`");
    assert!(!dir.join("o").join("config.json").exists(), "a refused import writes no config.json");
}

/// The fixture's GGUF with metadata `key` set to the u32 `v`, written to `dir/name`.
fn fixture_gguf_with(dir: &Path, name: &str, key: &str, v: u32) -> PathBuf {
    let src = dir.join("base.gguf");
    if !src.exists() {
        fixture_as_gguf(&src, GgmlType::F32, false);
    }
    let g = GgufFile::open(&src).unwrap();
    let mut w = GgufWriter::new();
    for (k, val) in &g.metadata {
        w.kv(k, if k == key { Value::U32(v) } else { val.clone() });
    }
    for t in &g.tensors {
        w.raw_tensor(&t.name, &t.ne, t.ggml_type, g.tensor_bytes(t).to_vec());
    }
    let p = dir.join(name);
    w.write(&p).unwrap();
    p
}

#[test]
fn import_refuses_sizes_that_contradict_the_tensors_or_pass_the_bounds() {
    let dir = scratch("sizes");
    let out = dir.join("o");
    // 4e9 blocks (a u32): bounded before the per-block table is built.
    let p = fixture_gguf_with(&dir, "blocks-huge.gguf", "llama.block_count", 4_000_000_000);
    assert_err_names_file(import_gguf(&p, &out).unwrap_err(), &p, "llama.block_count");
    // A plausible count that is not what the tensors hold.
    for n in [3, 5] {
        let p = fixture_gguf_with(&dir, &format!("blocks-{n}.gguf"), "llama.block_count", n);
        let e = import_gguf(&p, &out).unwrap_err();
        assert_err_names_file(&e, &p, &format!("says {n} blocks, but the file's tensors are those of 4"));
    }
    // A context of 4e9 would import into a folder that can never load.
    let p = fixture_gguf_with(&dir, "ctx-huge.gguf", "llama.context_length", 4_000_000_000);
    assert_err_names_file(import_gguf(&p, &out).unwrap_err(), &p, "llama.context_length");
    assert!(!out.join("config.json").exists(), "a refused import writes no config.json");
}

#[test]
fn import_refuses_a_nan_weight_naming_the_gguf_tensor() {
    let dir = scratch("nan");
    let src = dir.join("base.gguf");
    fixture_as_gguf(&src, GgmlType::F32, false);
    let g = GgufFile::open(&src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        w.kv(k, v.clone());
    }
    for t in &g.tensors {
        let mut bytes = g.tensor_bytes(t).to_vec();
        if t.name == "blk.1.ffn_norm.weight" {
            bytes[12..16].copy_from_slice(&f32::NAN.to_le_bytes()); // element 3
        }
        w.raw_tensor(&t.name, &t.ne, t.ggml_type, bytes);
    }
    let p = dir.join("nan.gguf");
    w.write(&p).unwrap();
    let out = dir.join("o");
    assert_err_names_file(import_gguf(&p, &out).unwrap_err(), &p, "`blk.1.ffn_norm.weight` holds NaN at index [3]");
    assert!(!out.join("config.json").exists());
}
