//! A PEFT adapter folder (`adapter_config.json`, `adapter_model.safetensors`: the input split in
//! two, see `echo_fuzz::split`) loaded onto the tiny fixture model.
#![no_main]
use echo_autograd::ParamStore;
use echo_model::Llama;
use libfuzzer_sys::fuzz_target;

thread_local! {
    static MODEL: Llama = Llama::load(&echo_testdata::tiny_llama_a()).expect("the fixture model");
}

fuzz_target!(|data: &[u8]| {
    let parts = echo_fuzz::split(data, 2);
    let dir = echo_fuzz::scratch();
    echo_fuzz::put(&dir, "adapter_config.json", parts[0]);
    echo_fuzz::put(&dir, "adapter_model.safetensors", parts[1]);
    MODEL.with(|model| {
        let _ = echo_adapters::load_peft(&dir, model, &mut ParamStore::new());
    });
});
