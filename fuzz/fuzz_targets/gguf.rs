//! A GGUF file: the reader (header, metadata, tensor table, every tensor dequantised), then
//! the whole import into a HF folder (config, tokenizer rebuild, Q/K un-permutation).
#![no_main]
use echo_model::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = echo_fuzz::scratch();
    let path = echo_fuzz::put(&dir, "model.gguf", data);
    if let Ok(g) = GgufFile::open(&path) {
        for v in g.metadata.values() {
            let _ = v.describe();
        }
        for t in &g.tensors {
            let _ = g.tensor_f32(t);
        }
    }
    let _ = echo_model::import_gguf(&path, &dir.join("imported"));
});
