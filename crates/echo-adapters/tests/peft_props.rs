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

/// `save_peft_as(.., Bf16)`: the file holds bf16 tensors at half the f32 file's payload, and
/// loads back to exactly each value rounded to bf16 (nearest even).
#[test]
fn a_bf16_save_loads_back_to_the_rounded_values() {
    use echo_adapters::save_peft_as;
    use echo_model::weights::SaveDtype;
    let model = Llama::load(&echo_testdata::tiny_llama_a()).unwrap();
    let config = AdapterConfig {
        method: Method::Dora,
        r: 4,
        alpha: 8.0,
        use_rslora: false,
        dropout: 0.0,
        targets: Proj::ALL.to_vec(),
        layers: None,
    };
    let mut store = ParamStore::new();
    let mut rng = Rng::new(7);
    let adapters = Adapters::init(config, &model, &mut store, &mut rng).unwrap();
    for (id, _) in adapters.tensors() {
        let shape = store.value(id).shape().dims().to_vec();
        store.get_mut(id).value = Tensor::rand_uniform(shape, 0.1, 2.0, &mut rng);
    }
    let dir = tempfile::tempdir().unwrap();
    let (f32_dir, bf16_dir) = (dir.path().join("f32"), dir.path().join("bf16"));
    save_peft(&f32_dir, &adapters, &store, "tiny-llama-a").unwrap();
    save_peft_as(&bf16_dir, &adapters, &store, "tiny-llama-a", SaveDtype::Bf16).unwrap();
    let header = |d: &std::path::Path| {
        let bytes = std::fs::read(d.join("adapter_model.safetensors")).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        (String::from_utf8(bytes[8..8 + n].to_vec()).unwrap(), bytes.len() - 8 - n)
    };
    let (h32, payload32) = header(&f32_dir);
    let (h16, payload16) = header(&bf16_dir);
    assert!(h32.contains("\"F32\"") && !h32.contains("\"BF16\""), "{h32}");
    assert!(h16.contains("\"BF16\"") && !h16.contains("\"F32\""), "{h16}");
    assert_eq!(payload16 * 2, payload32);
    let mut store2 = ParamStore::new();
    let again = load_peft(&bf16_dir, &model, &mut store2).unwrap();
    let values = |a: &Adapters, s: &ParamStore, round: bool| {
        let mut v: Vec<(String, Vec<u32>)> = a
            .tensors()
            .into_iter()
            .map(|(id, k)| {
                let bits = s
                    .value(id)
                    .as_f32()
                    .iter()
                    .map(|&x| if round { half::bf16::from_f32(x).to_f32() } else { x }.to_bits())
                    .collect();
                (k, bits)
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(values(&again, &store2, false), values(&adapters, &store, true));
}
