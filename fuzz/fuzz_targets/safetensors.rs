//! A safetensors file as a model's weights: opened (header, offsets, dtypes, shapes checked
//! against the file) and every tensor read as f32 (checked finite) and as i64.
#![no_main]
use echo_model::weights::WeightFiles;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = echo_fuzz::scratch();
    let path = echo_fuzz::put(&dir, "model.safetensors", data);
    if let Ok(w) = WeightFiles::open_files(&[path]) {
        let names: Vec<String> = w.names().iter().map(|s| s.to_string()).collect();
        for name in &names {
            let _ = w.info(name);
            let _ = w.finite_f32_tensor(name, None);
            let _ = w.i64_tensor(name);
        }
    }
});
