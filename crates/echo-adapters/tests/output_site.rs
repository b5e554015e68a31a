//! The echo's output injection site (docs/method.md section 2a) in the `AdapterProjector`:
//! `y = [the plain LoRA/DoRA output] + g ⊙ p`, one `g, p` row per sample added to each of its
//! tokens, after DoRA's magnitude scaling; and its gradients by finite differences.

use echo_adapters::{load_peft, InjectionSite, Injections};
use echo_autograd::gradcheck::{assert_gradients, Options};
use echo_autograd::{ParamStore, Tape, Var};
use echo_model::{Llama, Proj, Projector};
use echo_tensor::{Rng, Tensor};
use std::collections::HashMap;

const LAYER: usize = 0;
const PROJ: Proj = Proj::Up;
const SAMPLES: usize = 2;
const TOKENS: usize = 3;

/// `(x [S, T, in], g [S, out], p [S, out])` for tiny-llama-a's layer-0 up_proj.
fn inputs(model: &Llama) -> [Tensor; 3] {
    let w = model.blocks[LAYER].weight(PROJ);
    let (d_out, d_in) = (w.dims()[0], w.dims()[1]);
    let mut rng = Rng::new(41);
    [
        Tensor::randn([SAMPLES, TOKENS, d_in], 1.0, &mut rng),
        Tensor::rand_uniform([SAMPLES, d_out], 0.05, 0.95, &mut rng),
        Tensor::randn([SAMPLES, d_out], 1.0, &mut rng),
    ]
}

/// The projector's output for `x` with `(g, p)` injected at `site` (no injection: `None`).
fn project(
    adapters: &echo_adapters::Adapters,
    store: &ParamStore,
    model: &Llama,
    x: &Var,
    inject: Option<(InjectionSite, &Var, &Var)>,
) -> echo_autograd::Result<Var> {
    let inj = inject
        .map(|(site, g, p)| Injections { site, modules: HashMap::from([((LAYER, PROJ), (g.clone(), p.clone()))]) });
    let mut proj = adapters.projector(store, None, inj.as_ref());
    proj.project(LAYER, PROJ, x, model.blocks[LAYER].weight(PROJ))
}

#[test]
fn the_output_site_adds_the_gated_echo_after_the_whole_adapter() {
    let dir = echo_testdata::tiny_llama_a();
    let model = Llama::load(&dir).unwrap();
    for adapter in ["peft-lora", "peft-dora"] {
        let mut store = ParamStore::new();
        let adapters = load_peft(&dir.join(adapter), &model, &mut store).unwrap();
        let [x, g, p] = inputs(&model);
        let tape = Tape::inference();
        let (xv, gv, pv) = (tape.constant(x), tape.constant(g.clone()), tape.constant(p.clone()));
        let plain = project(&adapters, &store, &model, &xv, None).unwrap();
        let out = project(&adapters, &store, &model, &xv, Some((InjectionSite::Output, &gv, &pv))).unwrap();
        assert_eq!(out.shape(), plain.shape(), "{adapter}");
        let d_out = g.dims()[1];
        // Not scaled by s, nor (DoRA) by m / n: the plain output plus g ⊙ p, bit for bit.
        for (row, (y, y0)) in out.value().as_f32().chunks(d_out).zip(plain.value().as_f32().chunks(d_out)).enumerate() {
            let b = row / TOKENS;
            for j in 0..d_out {
                let want = y0[j] + g.as_f32()[b * d_out + j] * p.as_f32()[b * d_out + j];
                assert_eq!(y[j].to_bits(), want.to_bits(), "{adapter}: token {row}, feature {j}");
            }
        }
        // The bottleneck site with the same g, p would need [S, r]: the two sites are distinct.
        let r = adapters.config.r;
        let (gr, pr) = (tape.constant(g.narrow(1, 0, r).unwrap()), tape.constant(p.narrow(1, 0, r).unwrap()));
        let inside = project(&adapters, &store, &model, &xv, Some((InjectionSite::Bottleneck, &gr, &pr))).unwrap();
        assert!(inside.value().max_abs_diff(plain.value()).unwrap() > 1e-3, "{adapter}: bottleneck injection inert");
        assert!(project(&adapters, &store, &model, &xv, Some((InjectionSite::Bottleneck, &gv, &pv))).is_err());
    }
}

#[test]
fn the_output_site_gradients_match_finite_differences() {
    let dir = echo_testdata::tiny_llama_a();
    let model = Llama::load(&dir).unwrap();
    for adapter in ["peft-lora", "peft-dora"] {
        let mut store = ParamStore::new();
        let adapters = load_peft(&dir.join(adapter), &model, &mut store).unwrap();
        // x, g and p: DoRA's detached norm depends on A and B only, which stay fixed here
        // (frozen, so the gradient check's own tape holds them as constants).
        let ids: Vec<_> = store.iter().map(|(id, _)| id).collect();
        for id in ids {
            store.get_mut(id).trainable = false;
        }
        assert_gradients(
            &format!("{adapter} output-site injection"),
            &inputs(&model),
            |v| project(&adapters, &store, &model, &v[0], Some((InjectionSite::Output, &v[1], &v[2]))),
            Options::default(),
        );
    }
}
