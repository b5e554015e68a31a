//! A model folder's `config.json`, loaded as `cargo xtask train` loads a model: parsed,
//! bounded, and checked against the weights (the tiny fixture's), which are then built.
#![no_main]
use libfuzzer_sys::fuzz_target;

thread_local! {
    static WEIGHTS: Vec<u8> =
        std::fs::read(echo_testdata::tiny_llama_a().join("model.safetensors")).expect("the fixture's weights");
}

fuzz_target!(|data: &[u8]| {
    let dir = echo_fuzz::scratch();
    echo_fuzz::put(&dir, "config.json", data);
    WEIGHTS.with(|w| echo_fuzz::put(&dir, "model.safetensors", w));
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = echo_model::LlamaConfig::parse(text, &dir.join("config.json"));
    }
    let _ = echo_model::Llama::load(&dir);
});
