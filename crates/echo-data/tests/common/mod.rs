#![allow(dead_code)]
//! Paths to the shared data and fixture tokenizer, relative to this crate.

use std::path::PathBuf;

use echo_data::Tokenizer;

pub const SETS: [(&str, usize); 4] = [
    ("boolq", 9427),
    ("ARC-Easy", 2251),
    ("ARC-Challenge", 1119),
    ("openbookqa", 4957),
];

pub fn shared() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared"))
}

pub fn train(set: &str) -> PathBuf {
    shared()
        .join("data/commonsense")
        .join(set)
        .join("train.json")
}

pub fn fixture_dir() -> PathBuf {
    shared().join("fixtures/tiny-llama-a")
}

pub fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(fixture_dir()).expect("fixture tokenizer loads")
}

/// A scratch file with the given bytes.
pub fn file_with(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}
