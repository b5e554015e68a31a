//! Property test: any adapter we can build saves as a PEFT folder that loads back to the same
//! config and the same values bit for bit, over methods, ranks, alphas, rsLoRA, dropout,
//! target sets and layer subsets, with every tensor (A, B, DoRA magnitude) random.

use echo_adapters::{load_peft, save_peft, AdapterConfig, Adapters, Method};
use echo_autograd::ParamStore;
use echo_model::{Llama, Proj};
use echo_tensor::{Rng, Tensor};
use proptest::prelude::*;

fn config() -> impl Strategy<Value = AdapterConfig> {
    (
        any::<bool>(),
        1usize..9,
        prop::sample::select(vec![1.0f32, 8.0, 16.0, 0.5]),
        any::<bool>(),
        prop::sample::select(vec![0.0f32, 0.05, 0.1]),
        prop::sample::subsequence(Proj::ALL.to_vec(), 1..=Proj::ALL.len()),
        prop::option::of(prop::sample::subsequence(vec![0usize, 1, 2, 3], 1..=4)),
    )
        .prop_map(|(dora, r, alpha, use_rslora, dropout, targets, layers)| AdapterConfig {
            method: if dora { Method::Dora } else { Method::Lora },
            r,
            alpha,
            use_rslora,
            dropout,
            targets,
            layers,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn save_then_load_is_the_identity(config in config(), seed in any::<u64>()) {
        let model = Llama::load(&echo_testdata::tiny_llama_a()).unwrap();
        let mut store = ParamStore::new();
        let mut rng = Rng::new(seed);
        let adapters = Adapters::init(config.clone(), &model, &mut store, &mut rng).unwrap();
        // Every tensor random (B included, which init leaves at zero), magnitudes positive.
        for (id, key) in adapters.tensors() {
            let shape = store.value(id).shape().dims().to_vec();
            let (lo, hi) = if key.contains("magnitude") { (0.1, 2.0) } else { (-1.0, 1.0) };
            store.get_mut(id).value = Tensor::rand_uniform(shape, lo, hi, &mut rng);
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("adapter");
        save_peft(&out, &adapters, &store, "tiny-llama-a").unwrap();
        let mut store2 = ParamStore::new();
        let again = load_peft(&out, &model, &mut store2).unwrap();
        prop_assert_eq!(&again.config.method, &config.method);
        prop_assert_eq!(again.config.r, config.r);
        prop_assert_eq!(again.config.alpha, config.alpha);
        prop_assert_eq!(again.config.use_rslora, config.use_rslora);
        prop_assert_eq!(again.config.scale(), config.scale());
        prop_assert_eq!(again.config.dropout, config.dropout);
        let sorted = |v: &[Proj]| {
            let mut v: Vec<&str> = v.iter().map(|p| p.short_name()).collect();
            v.sort();
            v
        };
        prop_assert_eq!(sorted(&again.config.targets), sorted(&config.targets));
        let mut ours: Vec<(String, Vec<u32>)> = adapters
            .tensors()
            .into_iter()
            .map(|(id, k)| (k, store.value(id).as_f32().iter().map(|x| x.to_bits()).collect()))
            .collect();
        let mut theirs: Vec<(String, Vec<u32>)> = again
            .tensors()
            .into_iter()
            .map(|(id, k)| (k, store2.value(id).as_f32().iter().map(|x| x.to_bits()).collect()))
            .collect();
        ours.sort();
        theirs.sort();
        prop_assert_eq!(ours, theirs);
    }
}
