//! A data file, read as JSON and as JSON Lines, and its records encoded as training examples
//! (Alpaca template, the tiny fixture's tokenizer, cutoff 64).
#![no_main]
use echo_data::{encode_records, read_records, EncodeConfig, Template, Tokenizer};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static TOK: Tokenizer = Tokenizer::from_dir(echo_testdata::tiny_llama_a()).expect("the fixture's tokenizer");
}

fuzz_target!(|data: &[u8]| {
    let dir = echo_fuzz::scratch();
    for name in ["data.json", "data.jsonl"] {
        let path = echo_fuzz::put(&dir, name, data);
        if let Ok(records) = read_records(&path) {
            let cfg = EncodeConfig { cutoff: Some(64), ..Default::default() };
            TOK.with(|tok| {
                let _ = encode_records(tok, &Template::alpaca(), &records, &cfg, &path, 0);
            });
        }
    }
});
