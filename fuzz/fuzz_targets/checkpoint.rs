//! A checkpoint folder (`state.json`, `state.safetensors`, `adapter/adapter_config.json`,
//! `adapter/adapter_model.safetensors`: the input split in four, see `echo_fuzz::split`), loaded
//! as `--resume` loads it, and the run config stored in it read back.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts = echo_fuzz::split(data, 4);
    let dir = echo_fuzz::scratch();
    let names = ["state.json", "state.safetensors", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"];
    for (name, bytes) in names.iter().zip(&parts) {
        echo_fuzz::put(&dir, name, bytes);
    }
    if let Ok(loaded) = echo_trainer::checkpoint::load(&dir) {
        let _ = echo_trainer::checkpoint::stored_config(&dir, &loaded.state);
    }
});
