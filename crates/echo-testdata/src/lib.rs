//! Where the repository's own test material lives, decided once for every test, bench and
//! check: the tiny-llama-a fixture (`fixtures/`, with its HF transformers, PEFT and echo
//! references) and the four commonsense sets (`data/commonsense/`). Both are committed to the
//! repository, so a fresh clone tests with nothing beside it.
//!
//! `ECHO_FIXTURES` overrides the fixtures folder: the GPU bundle runs prebuilt test binaries
//! on a machine where the path compiled in here does not exist.

use std::path::PathBuf;

/// The repository root (this crate sits at `crates/echo-testdata`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The folder holding the fixtures: `$ECHO_FIXTURES` when set, else `<repo>/fixtures`.
pub fn fixtures() -> PathBuf {
    match std::env::var_os("ECHO_FIXTURES") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join("fixtures"),
    }
}

/// The tiny random LLaMA (hidden 64, 4 layers, GQA, vocabulary 512) with its references.
pub fn tiny_llama_a() -> PathBuf {
    fixtures().join("tiny-llama-a")
}

/// The LLM-Adapters commonsense sets: `<set>/train.json` and `<set>/test.json` for boolq,
/// ARC-Easy, ARC-Challenge and openbookqa.
pub fn commonsense() -> PathBuf {
    repo_root().join("data/commonsense")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_committed_material_is_where_we_say() {
        assert!(super::tiny_llama_a().join("config.json").is_file());
        assert!(super::commonsense().join("boolq/test.json").is_file());
    }
}
