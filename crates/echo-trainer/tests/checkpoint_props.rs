//! Property test: a checkpoint saved with any training state, AdamW moments, echo parameters
//! and adapter values loads back exactly: the state field for field (floats bit for bit, as
//! JSON keeps them), every tensor bit for bit, and `latest` names the checkpoint just saved.

use echo_adapters::{load_peft, AdapterConfig, Adapters, Method};
use echo_autograd::ParamStore;
use echo_data::BatchPosition;
use echo_model::{Llama, Proj};
use echo_tensor::{Rng, Tensor};
use echo_trainer::checkpoint::{adapter_dir, latest, save, TrainState};
use echo_trainer::optim::AdamWState;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn finite() -> impl Strategy<Value = f32> {
    prop_oneof![-1e6f32..1e6, Just(0.0), Just(f32::MIN_POSITIVE), Just(-0.0)]
}

fn state() -> impl Strategy<Value = TrainState> {
    (
        (1usize..100_000, any::<u64>(), 0usize..5000, any::<[u64; 4]>(), any::<[u64; 4]>(), any::<u64>()),
        (prop::option::of(finite()), prop::option::of(0usize..100_000), "[ -~\\n]{0,64}"),
        (prop::option::of(finite()), prop::option::of(finite()), prop::option::of(finite())),
        (any::<u64>(), 0.0f64..1e7, 0.0f64..1e7),
    )
        .prop_map(|(a, b, c, d)| TrainState {
            step: a.0,
            position: BatchPosition { epoch: a.1 % 1000, index: a.2 },
            dropout_rng: a.3,
            routing_rng: a.4,
            adam_step: a.5,
            best_val_loss: b.0,
            best_step: b.1,
            config_toml: b.2,
            first_loss: c.0,
            first_val_loss: c.1,
            last_loss: c.2,
            tokens: d.0,
            train_seconds: d.1,
            wall_seconds: d.2,
        })
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.as_f32().iter().map(|x| x.to_bits()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    #[test]
    fn what_a_checkpoint_saves_loads_back(
        state in state(),
        dora in any::<bool>(),
        n_echo in 0usize..4,
        seed in any::<u64>(),
    ) {
        let model = Llama::load(&echo_testdata::tiny_llama_a()).unwrap();
        let mut store = ParamStore::new();
        let mut rng = Rng::new(seed);
        let config = AdapterConfig {
            method: if dora { Method::Dora } else { Method::Lora },
            r: 3,
            alpha: 6.0,
            use_rslora: false,
            dropout: 0.0,
            targets: vec![Proj::Q, Proj::Down],
            layers: Some(vec![0, 2]),
        };
        let adapters = Adapters::init(config, &model, &mut store, &mut rng).unwrap();
        let mut adam = AdamWState { step: state.adam_step, ..Default::default() };
        for (id, key) in adapters.tensors() {
            let shape = store.value(id).shape().dims().to_vec();
            store.get_mut(id).value = Tensor::rand_uniform(shape.clone(), 0.1, 2.0, &mut rng);
            let n: usize = shape.iter().product();
            adam.m.insert(key.clone(), Tensor::rand_uniform(vec![n], -1.0, 1.0, &mut rng));
            adam.v.insert(key, Tensor::rand_uniform(vec![n], 0.0, 1.0, &mut rng));
        }
        let echo_ids: Vec<_> = (0..n_echo)
            .map(|i| {
                let t = Tensor::rand_uniform(vec![i + 1, 5], -3.0, 3.0, &mut rng);
                store.add(format!("echo.test.{i}.weight"), t, true).unwrap()
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let saved = save(&out, &state, &adapters, &echo_ids, &adam, &store, "tiny").unwrap();
        let found = latest(&out).unwrap().expect("a checkpoint");
        prop_assert_eq!(&found.dir, &saved);
        prop_assert!(found.notes.is_empty(), "{:?}", found.notes);
        let loaded = found.loaded;
        prop_assert_eq!(&loaded.state, &state);
        prop_assert_eq!(loaded.adam.step, adam.step);
        for (moments, back) in [(&adam.m, &loaded.adam.m), (&adam.v, &loaded.adam.v)] {
            prop_assert_eq!(moments.keys().collect::<Vec<_>>(), back.keys().collect::<Vec<_>>());
            for (k, t) in moments {
                prop_assert_eq!(bits(t), bits(&back[k]), "moment {}", k);
            }
        }
        let echo: BTreeMap<String, Vec<u32>> =
            echo_ids.iter().map(|&id| (store.get(id).name.clone(), bits(store.value(id)))).collect();
        let echo_back: BTreeMap<String, Vec<u32>> = loaded.echo.iter().map(|(k, t)| (k.clone(), bits(t))).collect();
        prop_assert_eq!(echo, echo_back);
        let mut store2 = ParamStore::new();
        let again = load_peft(&adapter_dir(&saved), &model, &mut store2).unwrap();
        let mut ours: Vec<(String, Vec<u32>)> =
            adapters.tensors().into_iter().map(|(id, k)| (k, bits(store.value(id)))).collect();
        let mut theirs: Vec<(String, Vec<u32>)> =
            again.tensors().into_iter().map(|(id, k)| (k, bits(store2.value(id)))).collect();
        ours.sort();
        theirs.sort();
        prop_assert_eq!(ours, theirs);
    }
}
