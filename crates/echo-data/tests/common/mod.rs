#![allow(dead_code)]
//! Paths to the repository's commonsense data and fixture tokenizer.

use std::path::PathBuf;

use echo_data::Tokenizer;

pub const SETS: [(&str, usize); 4] =
    [("boolq", 9427), ("ARC-Easy", 2251), ("ARC-Challenge", 1119), ("openbookqa", 4957)];

pub fn train(set: &str) -> PathBuf {
    echo_testdata::commonsense().join(set).join("train.json")
}

pub fn fixture_dir() -> PathBuf {
    echo_testdata::tiny_llama_a()
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
