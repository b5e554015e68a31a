//! The "properties a test can check" of docs/method.md, on tiny-llama-a.

use echo_adapters::{load_peft, AdapterConfig, Adapters, Method};
use echo_autograd::ParamStore;
use echo_model::weights::WeightFiles;
use echo_model::Llama;
use echo_tensor::{Rng, Tensor};
use echo_trainer::{forward_backward, EchoConfig, EchoPath, InjectionSite, StepContext, StepInput};
use std::path::PathBuf;

fn fixture() -> PathBuf {
    echo_testdata::tiny_llama_a()
}

struct Setup {
    model: Llama,
    ids: Vec<i64>,
    mask: Vec<i64>,
    labels: Vec<i64>,
}

fn setup() -> Setup {
    let dir = fixture();
    let reference = WeightFiles::open_files(&[dir.join("reference.safetensors")]).unwrap();
    Setup {
        model: Llama::load(&dir).unwrap(),
        ids: reference.i64_tensor("input_ids").unwrap().0,
        mask: reference.i64_tensor("attention_mask").unwrap().0,
        labels: reference.i64_tensor("labels").unwrap().0,
    }
}

fn adapters_and_echo(s: &Setup, store: &mut ParamStore, echo_cfg: EchoConfig) -> (Adapters, EchoPath) {
    let adapters = load_peft(&fixture().join("peft-lora"), &s.model, store).unwrap();
    let c = &s.model.config;
    let echo = EchoPath::init(echo_cfg, &adapters, 4, c.hidden_size, c.rms_norm_eps, store, &mut Rng::new(5)).unwrap();
    (adapters, echo)
}

fn cfg() -> EchoConfig {
    EchoConfig { source_layers: vec![2, 3], target_layers: vec![0, 1], d_echo: 8, init_std: 0.5, ..Default::default() }
}

fn grads(store: &ParamStore, adapters: &Adapters) -> Vec<Vec<u32>> {
    adapters
        .tensors()
        .iter()
        .map(|(id, _)| store.grad(*id).unwrap().as_f32().iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[test]
fn echo_off_or_unrouted_without_kd_is_exactly_a_plain_step() {
    let s = setup();
    let data = echo_data::Batch::from_arrays(&s.ids, &s.mask, &s.labels, 2, 12, None).unwrap();
    let input = |route: &'static [bool]| StepInput { batch: &data, route };
    let (mut plain_store, mut echo_store) = (ParamStore::new(), ParamStore::new());
    let plain = load_peft(&fixture().join("peft-lora"), &s.model, &mut plain_store).unwrap();
    let ctx = StepContext { model: &s.model, adapters: &plain, echo: None };
    let (ps, _) = forward_backward(&ctx, &input(&[true, true]), &mut plain_store, None, 1.0, false).unwrap();
    let (adapters, echo) = adapters_and_echo(&s, &mut echo_store, EchoConfig { p_route: 0.0, lambda_kd: 0.0, ..cfg() });
    let ctx = StepContext { model: &s.model, adapters: &adapters, echo: Some(&echo) };
    let (es, _) = forward_backward(&ctx, &input(&[false, false]), &mut echo_store, None, 1.0, false).unwrap();
    assert_eq!(ps.loss.to_bits(), es.loss.to_bits());
    assert_eq!(grads(&plain_store, &plain), grads(&echo_store, &adapters), "adapter gradients differ");
    assert!(
        echo.param_ids().iter().all(|&id| echo_store.grad(id).is_none()),
        "echo parameters got gradients without a routed sample"
    );
    // And the plain step is HF's: the fixture's LoRA loss.
    assert!((ps.loss - 6.957402).abs() < 1e-5, "{}", ps.loss);
}

#[test]
fn zero_projections_make_the_echo_route_equal_the_plain_route() {
    for site in [InjectionSite::Bottleneck, InjectionSite::Output] {
        zero_projections_at(site);
    }
}

fn zero_projections_at(injection: InjectionSite) {
    let s = setup();
    let cfg = || EchoConfig { injection, ..cfg() };
    let mut store = ParamStore::new();
    let (adapters, echo) = adapters_and_echo(&s, &mut store, cfg());
    for m in &echo.modules {
        let shape = store.value(m.proj_w).shape().clone();
        store.get_mut(m.proj_w).value = Tensor::zeros(shape);
    }
    let ctx = StepContext { model: &s.model, adapters: &adapters, echo: Some(&echo) };
    let input = StepInput {
        batch: &echo_data::Batch::from_arrays(&s.ids, &s.mask, &s.labels, 2, 12, None).unwrap(),
        route: &[true, false],
    };
    let (_, trace) = forward_backward(&ctx, &input, &mut store, None, 1.0, true).unwrap();
    let t = trace.unwrap();
    let (p, e) = (t.logits_plain.as_f32(), t.logits_echo.unwrap());
    assert!(
        p.iter().zip(e.as_f32()).all(|(a, b)| a.to_bits() == b.to_bits()),
        "{injection:?}: logits_echo != logits_plain with U_m = 0"
    );
    // Sanity: with non-zero projections the routes differ (the property is not vacuous).
    let mut store2 = ParamStore::new();
    let (adapters2, echo2) = adapters_and_echo(&s, &mut store2, cfg());
    let ctx2 = StepContext { model: &s.model, adapters: &adapters2, echo: Some(&echo2) };
    let (_, t2) = forward_backward(&ctx2, &input, &mut store2, None, 1.0, true).unwrap();
    let t2 = t2.unwrap();
    assert!(t2.logits_plain.max_abs_diff(t2.logits_echo.as_ref().unwrap()).unwrap() > 1e-4, "{injection:?}");
}

/// Section 2a's reason for the output site: with a fresh adapter (`B = 0`) the bottleneck
/// injection reaches the loss only through `B`, so the echo parameters get exactly zero
/// gradient, while at the output every one of them gets a gradient in the first step.
#[test]
fn only_the_output_site_trains_the_echo_while_b_is_zero() {
    let s = setup();
    let input = StepInput {
        batch: &echo_data::Batch::from_arrays(&s.ids, &s.mask, &s.labels, 2, 12, None).unwrap(),
        route: &[true, false],
    };
    for site in [InjectionSite::Bottleneck, InjectionSite::Output] {
        let mut store = ParamStore::new();
        let c = &s.model.config;
        let acfg = AdapterConfig {
            method: Method::Lora,
            r: 4,
            alpha: 8.0,
            use_rslora: false,
            dropout: 0.0,
            targets: EchoConfig::default().target_modules,
            layers: None,
        };
        let adapters = Adapters::init(acfg, &s.model, &mut store, &mut Rng::new(3)).unwrap();
        let echo = EchoPath::init(
            EchoConfig { injection: site, ..cfg() },
            &adapters,
            4,
            c.hidden_size,
            c.rms_norm_eps,
            &mut store,
            &mut Rng::new(5),
        )
        .unwrap();
        let ctx = StepContext { model: &s.model, adapters: &adapters, echo: Some(&echo) };
        forward_backward(&ctx, &input, &mut store, None, 1.0, false).unwrap();
        for id in echo.param_ids() {
            let name = &store.get(id).name;
            let largest = store.grad(id).map_or(0.0, |g| g.as_f32().iter().fold(0f32, |m, x| m.max(x.abs())));
            match site {
                InjectionSite::Bottleneck => assert_eq!(largest, 0.0, "bottleneck site, B = 0: {name} moved"),
                InjectionSite::Output => assert!(largest > 1e-6, "output site, B = 0: {name} has no gradient"),
            }
        }
    }
}

#[test]
fn answer_tokens_do_not_move_the_echo() {
    let s = setup();
    let echo_of = |ids: &[i64]| {
        let mut store = ParamStore::new();
        let (adapters, echo) = adapters_and_echo(&s, &mut store, cfg());
        let ctx = StepContext { model: &s.model, adapters: &adapters, echo: Some(&echo) };
        let input = StepInput {
            batch: &echo_data::Batch::from_arrays(ids, &s.mask, &s.labels, 2, 12, None).unwrap(),
            route: &[true, true],
        };
        forward_backward(&ctx, &input, &mut store, None, 1.0, true).unwrap().1.unwrap().echo.unwrap()
    };
    let base = echo_of(&s.ids);
    let mut answer_changed = s.ids.clone();
    for (i, l) in s.labels.iter().enumerate() {
        if *l != -100 {
            answer_changed[i] = (answer_changed[i] + 17) % 512;
        }
    }
    let e = echo_of(&answer_changed);
    assert!(
        base.as_f32().iter().zip(e.as_f32()).all(|(a, b)| a.to_bits() == b.to_bits()),
        "changing answer tokens moved the echo"
    );
    let mut prompt_changed = s.ids.clone();
    prompt_changed[2] = (prompt_changed[2] + 17) % 512;
    assert!(echo_of(&prompt_changed).max_abs_diff(&base).unwrap() > 1e-3, "changing a prompt token must move the echo");
}
