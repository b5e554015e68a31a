//! PEFT LoRA and DoRA adapters on tiny-llama-a against HF transformers + PEFT: logits, masked
//! loss and the gradient of every adapter tensor; and our export round trip.

use echo_adapters::{load_peft, save_peft, Adapters};
use echo_autograd::{ParamStore, Tape};
use echo_model::weights::WeightFiles;
use echo_model::{Batch, Llama};
use std::path::PathBuf;

fn fixture() -> PathBuf {
    echo_testdata::tiny_llama_a()
}

struct Step {
    logits: Vec<f32>,
    loss: f32,
    store: ParamStore,
    adapters: Adapters,
}

fn run(model: &Llama, adapter_dir: &std::path::Path, reference: &WeightFiles) -> Step {
    let mut store = ParamStore::new();
    let adapters = load_peft(adapter_dir, model, &mut store).unwrap();
    let (ids, shape) = reference.i64_tensor("input_ids").unwrap();
    let (mask, _) = reference.i64_tensor("attention_mask").unwrap();
    let (labels, _) = reference.i64_tensor("labels").unwrap();
    let batch = Batch::new(&ids, &mask, shape[0], shape[1], model.config.vocab_size).unwrap();
    let tape = Tape::new();
    let hidden = {
        let mut proj = adapters.projector(&store, None, None);
        model.forward(&tape, &batch, &mut proj, &[]).unwrap().hidden
    };
    let logits = {
        let _g = tape.no_grad();
        model.logits_at(&hidden, &(0..shape[0] * shape[1]).collect::<Vec<_>>()).unwrap().value().to_vec_f32()
    };
    let (loss, _) = model.lm_loss(&hidden, &labels, &batch).unwrap();
    let loss_value = loss.value().item().unwrap();
    tape.backward(&loss, &mut store).unwrap();
    Step { logits, loss: loss_value, store, adapters }
}

fn compare(step: &Step, reference: &WeightFiles, logits_key: &str, loss_key: &str, n_grads: usize) {
    let (mask, _) = reference.i64_tensor("attention_mask").unwrap();
    let want = reference.f32_tensor(logits_key, None).unwrap();
    let v = want.dims()[2];
    let mut worst = 0f32;
    for (row, m) in mask.iter().enumerate() {
        if *m == 1 {
            for j in 0..v {
                worst = worst.max((step.logits[row * v + j] - want.as_f32()[row * v + j]).abs());
            }
        }
    }
    assert!(worst < 1e-4, "{logits_key}: max diff {worst}");
    let want_loss = reference.f32_tensor(loss_key, None).unwrap().item().unwrap();
    assert!(((step.loss - want_loss) / want_loss).abs() < 1e-5, "{loss_key}: {} vs {want_loss}", step.loss);
    let mut checked = 0;
    let mut worst_rel = 0f32;
    for (id, key) in step.adapters.tensors() {
        let want = reference.f32_tensor(&format!("grad.{key}"), None).unwrap();
        let got = step.store.grad(id).unwrap_or_else(|| panic!("no gradient for {key}"));
        let scale = want.as_f32().iter().fold(0f32, |m, x| m.max(x.abs()));
        let rel = got.max_abs_diff(&want).unwrap() / scale;
        assert!(rel < 1e-4, "grad.{key}: max|diff|/max|ref| = {rel}");
        worst_rel = worst_rel.max(rel);
        checked += 1;
    }
    assert_eq!(checked, n_grads);
    println!(
        "{logits_key}: logits max diff {worst:e}; loss {} vs {want_loss}; {checked} grads, worst rel {worst_rel:e}",
        step.loss
    );
}

#[test]
fn lora_matches_peft() {
    let dir = fixture();
    let model = Llama::load(&dir).unwrap();
    let reference = WeightFiles::open_files(&[dir.join("reference.safetensors")]).unwrap();
    let step = run(&model, &dir.join("peft-lora"), &reference);
    compare(&step, &reference, "logits_lora", "loss_lora", 56);
}

#[test]
fn dora_matches_peft() {
    let dir = fixture();
    let model = Llama::load(&dir).unwrap();
    let reference = WeightFiles::open_files(&[dir.join("reference-dora.safetensors")]).unwrap();
    let step = run(&model, &dir.join("peft-dora"), &reference);
    compare(&step, &reference, "logits_dora", "loss_dora", 84);
}

#[test]
fn export_round_trips_with_peft_key_set() {
    let dir = fixture();
    let model = Llama::load(&dir).unwrap();
    for name in ["peft-lora", "peft-dora"] {
        let mut store = ParamStore::new();
        let adapters = load_peft(&dir.join(name), &model, &mut store).unwrap();
        let out = std::env::temp_dir().join(format!("echo-export-{name}-{}", std::process::id()));
        save_peft(&out, &adapters, &store, "tiny-llama-a").unwrap();
        let theirs = WeightFiles::open_files(&[dir.join(name).join("adapter_model.safetensors")]).unwrap();
        let ours = WeightFiles::open_files(&[out.join("adapter_model.safetensors")]).unwrap();
        assert_eq!(ours.names(), theirs.names(), "{name}: key set differs from PEFT's");
        for key in theirs.names() {
            let (a, b) = (ours.f32_tensor(key, None).unwrap(), theirs.f32_tensor(key, None).unwrap());
            assert_eq!(a.as_f32(), b.as_f32(), "{name}: {key} changed in the round trip");
        }
        // Our export loads back through the same code, to the same config.
        let mut store2 = ParamStore::new();
        let again = load_peft(&out, &model, &mut store2).unwrap();
        assert_eq!(again.config, adapters.config);
        std::fs::remove_dir_all(&out).ok();
    }
}

#[test]
fn merged_weights_reproduce_model_plus_adapter() {
    let dir = fixture();
    let reference = WeightFiles::open_files(&[dir.join("reference.safetensors")]).unwrap();
    let (ids, shape) = reference.i64_tensor("input_ids").unwrap();
    let (mask, _) = reference.i64_tensor("attention_mask").unwrap();
    for name in ["peft-lora", "peft-dora"] {
        let mut model = Llama::load(&dir).unwrap();
        let mut store = ParamStore::new();
        let adapters = load_peft(&dir.join(name), &model, &mut store).unwrap();
        let batch = Batch::new(&ids, &mask, shape[0], shape[1], 512).unwrap();
        let rows: Vec<usize> = (0..24).collect();
        let with_adapter = {
            let tape = Tape::inference();
            let h = model.forward(&tape, &batch, &mut adapters.projector(&store, None, None), &[]).unwrap().hidden;
            model.logits_at(&h, &rows).unwrap().value().clone()
        };
        for (tensor, merged) in echo_adapters::merged_weights(&model, &adapters, &store).unwrap() {
            let (layer, proj) = echo_model::Proj::ALL
                .iter()
                .flat_map(|&p| (0..4).map(move |l| (l, p)))
                .find(|(l, p)| format!("{}.weight", p.module_path(*l)) == tensor)
                .unwrap();
            model.blocks[layer].proj[proj as usize] = merged;
        }
        let tape = Tape::inference();
        let h = model.forward(&tape, &batch, &mut echo_model::Plain, &[]).unwrap().hidden;
        let merged = model.logits_at(&h, &rows).unwrap().value().clone();
        let diff = merged.max_abs_diff(&with_adapter).unwrap();
        assert!(diff < 2e-5, "{name}: merged model differs from model + adapter by {diff}");
    }
}
