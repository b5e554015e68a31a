//! Bad model folders: each is a clear error naming the file and what was expected.

use echo_model::weights::{save_safetensors, SaveTensor};
use echo_model::{Llama, LlamaConfig};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    echo_testdata::tiny_llama_a()
}

/// A copy of the fixture's config and weights in a fresh folder.
fn copy(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("echo-bad-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture().join(f), d.join(f)).unwrap();
    }
    d
}

fn load_err(dir: &Path) -> String {
    match Llama::load(dir) {
        Ok(_) => panic!("{} loaded, expected an error", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// Rewrites the fixture's weights through `edit` (name, data, shape) -> Option<replacement>.
fn rewrite(dir: &Path, mut edit: impl FnMut(&str, Vec<f32>, Vec<usize>) -> Option<(String, SaveTensor)>) {
    let files = echo_model::weights::WeightFiles::open_files(&[fixture().join("model.safetensors")]).unwrap();
    let mut out = Vec::new();
    for n in files.names() {
        let t = files.f32_tensor(n, None).unwrap();
        if let Some(x) = edit(n, t.as_f32().to_vec(), t.dims().to_vec()) {
            out.push(x);
        }
    }
    save_safetensors(&dir.join("model.safetensors"), out, None).unwrap();
}

#[test]
fn truncated_safetensors() {
    let d = copy("truncated");
    let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() - 1000]).unwrap();
    let e = load_err(&d);
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors file"), "{e}");
    std::fs::write(d.join("model.safetensors"), &bytes[..5]).unwrap();
    let e = load_err(&d);
    assert!(e.contains("shorter than the 8-byte header"), "{e}");
}

#[test]
fn header_offsets_out_of_range() {
    let d = copy("offsets");
    let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    // Point the first tensor's end far past the file, keeping the header length.
    let key = "\"data_offsets\":[0,";
    let at = header.find(key).expect("offsets in header") + key.len();
    let end = header[at..].find(']').unwrap() + at;
    let width = end - at;
    let big = format!("{:0>width$}", 9_999_999_999u64 % 10u64.pow(width as u32));
    header.replace_range(at..end, &big);
    let mut out = bytes[..8].to_vec();
    out.extend(header.as_bytes());
    out.extend(&bytes[8 + n..]);
    std::fs::write(d.join("model.safetensors"), out).unwrap();
    let e = load_err(&d);
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors file"), "{e}");
}

#[test]
fn missing_tensor() {
    let d = copy("missing");
    rewrite(&d, |n, v, s| (n != "model.layers.2.mlp.up_proj.weight").then(|| (n.to_string(), SaveTensor::F32(v, s))));
    let e = load_err(&d);
    assert!(e.contains("model.safetensors") && e.contains("`model.layers.2.mlp.up_proj.weight` not found"), "{e}");
}

#[test]
fn tensor_shape_not_matching_config() {
    let d = copy("shape");
    let cfg = std::fs::read_to_string(d.join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 160", "\"intermediate_size\": 128");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let e = load_err(&d);
    assert!(e.contains("model.safetensors") && e.contains("[160, 64]") && e.contains("expected [128, 64]"), "{e}");
}

#[test]
fn wrong_dtype() {
    let d = copy("dtype");
    rewrite(&d, |n, v, s| {
        Some(if n == "model.norm.weight" {
            (n.to_string(), SaveTensor::I64(v.iter().map(|x| *x as i64).collect(), s))
        } else {
            (n.to_string(), SaveTensor::F32(v, s))
        })
    });
    let e = load_err(&d);
    assert!(e.contains("`model.norm.weight` has dtype I64, expected F32, BF16 or F16"), "{e}");
}

#[test]
fn sharded_index_pointing_to_a_missing_shard() {
    let d = copy("shard");
    std::fs::rename(d.join("model.safetensors"), d.join("model-00001-of-00002.safetensors")).unwrap();
    let files = echo_model::weights::WeightFiles::open_files(&[d.join("model-00001-of-00002.safetensors")]).unwrap();
    let mut map = serde_json::Map::new();
    for (i, n) in files.names().into_iter().enumerate() {
        let shard = if i % 2 == 0 { "model-00001-of-00002.safetensors" } else { "model-00002-of-00002.safetensors" };
        map.insert(n.to_string(), serde_json::Value::String(shard.into()));
    }
    drop(files);
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("model.safetensors.index.json")
            && e.contains("model-00002-of-00002.safetensors")
            && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn unsupported_configs() {
    let base = std::fs::read_to_string(fixture().join("config.json")).unwrap();
    let cases = [
        (base.replace("\"model_type\": \"llama\"", "\"model_type\": \"mistral\""), "model_type `mistral`"),
        (base.replace("\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\""), "hidden_act `gelu`"),
        (base.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3"), "num_key_value_heads"),
        (base.replace("\"rope_type\": \"default\"", "\"rope_type\": \"yarn\""), "rope_type `yarn`"),
        (base.replace("\"hidden_size\": 64,", ""), "hidden_size"),
        (base.replace("\"vocab_size\": 512", "\"vocab_size\": 512,,"), "line"),
    ];
    for (text, want) in cases {
        let e = LlamaConfig::parse_str(&text).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains(want), "expected `{want}` in: {e}");
    }
}

#[test]
fn llama3_and_transformers4_spellings() {
    let t4 = r#"{"model_type":"llama","hidden_size":64,"intermediate_size":160,"num_hidden_layers":2,
        "num_attention_heads":4,"num_key_value_heads":1,"vocab_size":100,"rms_norm_eps":1e-5,
        "rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
        "high_freq_factor":4.0,"original_max_position_embeddings":8192},"max_position_embeddings":131072,
        "eos_token_id":[128001,128008,128009],"bos_token_id":128000,"tie_word_embeddings":false}"#;
    let c = LlamaConfig::parse_str(t4).unwrap();
    assert_eq!(c.rope_theta, 500000.0);
    assert_eq!(c.rope_scaling.unwrap().factor, 8.0);
    assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
    assert_eq!((c.head_dim, c.num_key_value_heads), (16, 1));
    let t5 = t4
        .replace("\"rope_theta\":500000.0,\"rope_scaling\"", "\"rope_parameters\"")
        .replace("\"rope_type\":\"llama3\"", "\"rope_type\":\"llama3\",\"rope_theta\":500000.0");
    assert_eq!(LlamaConfig::parse_str(&t5).unwrap(), c, "transformers-5 spelling must read the same");
}

#[test]
fn sharded_model_loads_like_the_single_file() {
    let d = copy("sharded-ok");
    let files = echo_model::weights::WeightFiles::open_files(&[fixture().join("model.safetensors")]).unwrap();
    let names = files.names();
    let mut map = serde_json::Map::new();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (i, n) in names.iter().enumerate() {
        let t = files.f32_tensor(n, None).unwrap();
        let (list, shard) = if i % 2 == 0 {
            (&mut a, "model-00001-of-00002.safetensors")
        } else {
            (&mut b, "model-00002-of-00002.safetensors")
        };
        list.push((n.to_string(), SaveTensor::F32(t.as_f32().to_vec(), t.dims().to_vec())));
        map.insert(n.to_string(), serde_json::Value::String(shard.into()));
    }
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    save_safetensors(&d.join("model-00001-of-00002.safetensors"), a, None).unwrap();
    save_safetensors(&d.join("model-00002-of-00002.safetensors"), b, None).unwrap();
    std::fs::write(d.join("model.safetensors.index.json"), serde_json::json!({ "weight_map": map }).to_string())
        .unwrap();
    let sharded = Llama::load(&d).unwrap();
    let single = Llama::load(&fixture()).unwrap();
    assert_eq!(
        sharded.blocks[3].weight(echo_model::Proj::Down).as_f32(),
        single.blocks[3].weight(echo_model::Proj::Down).as_f32()
    );
    assert_eq!(sharded.lm_head.as_f32(), single.lm_head.as_f32());
}

/// `config.json` with `from` replaced by `to`, in a copy of the fixture.
fn with_config(name: &str, from: &str, to: &str) -> PathBuf {
    let d = copy(name);
    let text = std::fs::read_to_string(d.join("config.json")).unwrap();
    assert!(text.contains(from), "fixture config lacks {from}");
    std::fs::write(d.join("config.json"), text.replace(from, to)).unwrap();
    d
}

#[test]
fn nan_or_inf_weights_are_refused_at_load_naming_tensor_and_index() {
    let d = copy("nan-weight");
    rewrite(&d, |n, mut v, s| {
        if n == "model.layers.1.self_attn.q_proj.weight" {
            v[64 + 5] = f32::NAN; // row 1, column 5
        }
        Some((n.to_string(), SaveTensor::F32(v, s)))
    });
    let e = load_err(&d);
    assert!(
        e.contains("model.safetensors")
            && e.contains("`model.layers.1.self_attn.q_proj.weight` holds NaN at index [1, 5]")
            && e.contains("must be finite"),
        "{e}"
    );
    rewrite(&d, |n, mut v, s| {
        if n == "model.norm.weight" {
            v[3] = f32::NEG_INFINITY;
        }
        Some((n.to_string(), SaveTensor::F32(v, s)))
    });
    let e = load_err(&d);
    assert!(e.contains("`model.norm.weight` holds -inf at index [3]"), "{e}");
}

#[test]
fn nan_and_inf_are_caught_in_bf16_and_f16_files_too() {
    use safetensors::tensor::{Dtype, TensorView};
    let d = std::env::temp_dir().join(format!("echo-bad-half-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let bf: Vec<u8> = [1.0f32, f32::NAN, 2.0].iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
    let hf: Vec<u8> = [1.0f32, 2.0, 1e6].iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
    let ok: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
    let views = vec![
        ("a.bf16", TensorView::new(Dtype::BF16, vec![3], &bf).unwrap()),
        ("b.f16", TensorView::new(Dtype::F16, vec![1, 3], &hf).unwrap()),
        ("c.f16", TensorView::new(Dtype::F16, vec![2], &ok).unwrap()),
    ];
    let p = d.join("half.safetensors");
    std::fs::write(&p, safetensors::serialize(views, None).unwrap()).unwrap();
    let w = echo_model::weights::WeightFiles::open_files(std::slice::from_ref(&p)).unwrap();
    let e = w.finite_f32_tensor("a.bf16", None).unwrap_err().to_string();
    assert!(e.contains("half.safetensors") && e.contains("`a.bf16` holds NaN at index [1]"), "{e}");
    // 1e6 overflows f16 to +inf on the way in.
    let e = w.finite_f32_tensor("b.f16", None).unwrap_err().to_string();
    assert!(e.contains("`b.f16` holds inf at index [0, 2]"), "{e}");
    assert_eq!(w.finite_f32_tensor("c.f16", None).unwrap().as_f32(), &[1.0, 2.0]);
}

#[test]
fn huge_sizes_in_config_json_are_errors_not_allocation_aborts() {
    for (key, from, to) in [
        ("num_hidden_layers", "\"num_hidden_layers\": 4", "\"num_hidden_layers\": 1000000000"),
        ("max_position_embeddings", "\"max_position_embeddings\": 256", "\"max_position_embeddings\": 4000000000"),
        ("vocab_size", "\"vocab_size\": 512", "\"vocab_size\": 1000000000"),
        ("hidden_size", "\"hidden_size\": 64", "\"hidden_size\": 100000000"),
        ("intermediate_size", "\"intermediate_size\": 160", "\"intermediate_size\": 100000000000"),
        ("head_dim", "\"head_dim\": 16", "\"head_dim\": 1000000"),
    ] {
        let d = with_config(&format!("huge-{key}"), from, to);
        let e = load_err(&d);
        assert!(e.contains("config.json") && e.contains(&format!("key `{key}`")) && e.contains("is above"), "{e}");
    }
}

#[test]
fn a_long_declared_context_does_not_size_the_rope_table() {
    // 2^24 positions is within bounds; the table covers what is used, not all of them.
    let d = with_config("long-context", "\"max_position_embeddings\": 256", "\"max_position_embeddings\": 16777216");
    let m = Llama::load(&d).unwrap();
    assert!(m.rope.max_pos <= echo_model::ROPE_PRECOMPUTED, "{}", m.rope.max_pos);
    // A call past the precomputed table gets its rows (identical where both tables cover).
    let long = m.rope_table(echo_model::ROPE_PRECOMPUTED + 3);
    assert_eq!(long.max_pos, echo_model::ROPE_PRECOMPUTED + 3);
    let n = m.rope.cos.len();
    assert_eq!(&long.cos[..n], &m.rope.cos[..]);
    assert_eq!(&long.sin[..n], &m.rope.sin[..]);
}

#[test]
fn config_declaring_fewer_layers_than_the_weights_is_an_error_naming_the_extra_tensors() {
    let d = with_config("fewer-layers", "\"num_hidden_layers\": 4", "\"num_hidden_layers\": 2");
    let e = load_err(&d);
    assert!(
        e.contains("model.safetensors")
            && e.contains("18 tensor(s) belong to layers beyond the 2")
            && e.contains("num_hidden_layers")
            && e.contains("model.layers.2."),
        "{e}"
    );
}

#[test]
fn config_declaring_more_layers_than_the_weights_names_the_first_missing_layer() {
    let d = with_config("more-layers", "\"num_hidden_layers\": 4", "\"num_hidden_layers\": 1000");
    let e = load_err(&d);
    assert!(
        e.contains("`model.layers.4.input_layernorm.weight` not found")
            && e.contains("num_hidden_layers = 1000, the weights hold 4 layer(s)"),
        "{e}"
    );
}

#[test]
fn a_decoder_is_not_sized_past_the_context() {
    let m = Llama::load(&fixture()).unwrap();
    assert!(echo_model::Decoder::new(&m, 1, 256).is_ok());
    let e = echo_model::Decoder::new(&m, 1, 1 << 40).err().expect("a 2^40-slot decoder").to_string();
    assert!(e.contains("capacity 1099511627776 exceeds max_position_embeddings 256"), "{e}");
}

/// The fixture's weights plus one `extra` tensor of four floats.
fn with_extra_tensor(dir: &Path, extra: &str) {
    let files = echo_model::weights::WeightFiles::open_files(&[fixture().join("model.safetensors")]).unwrap();
    let mut out: Vec<(String, SaveTensor)> = files
        .names()
        .into_iter()
        .map(|n| {
            let t = files.f32_tensor(n, None).unwrap();
            (n.to_string(), SaveTensor::F32(t.as_f32().to_vec(), t.dims().to_vec()))
        })
        .collect();
    out.push((extra.to_string(), SaveTensor::F32(vec![0.5; 4], vec![4])));
    save_safetensors(&dir.join("model.safetensors"), out, None).unwrap();
}

#[test]
fn a_tensor_a_llama_does_not_have_is_an_error_naming_it() {
    let d = copy("unknown-tensor");
    for extra in ["foo.bar", "model.layers.0.self_attn.q_proj.bias", "model.layers.x.input_layernorm.weight"] {
        with_extra_tensor(&d, extra);
        let e = load_err(&d);
        assert!(
            e.contains("model.safetensors")
                && e.contains(&format!("1 tensor(s) that a LLaMA model does not have ({extra})"))
                && e.contains("different model"),
            "{e}"
        );
    }
    // A RoPE buffer some older conversions saved is derived from the config: accepted.
    with_extra_tensor(&d, "model.layers.0.self_attn.rotary_emb.inv_freq");
    Llama::load(&d).expect("an inv_freq buffer is accepted");
}
