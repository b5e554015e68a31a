//! HF LLaMA-family models for echo-lora: `config.json` parsing, memory-mapped safetensors
//! (single or sharded), and the decoder forward built from echo-autograd's fused nodes, with a
//! [`Projector`] seam where adapters attach.

mod config;
mod device;
mod error;
pub mod generate;
pub mod gguf;
mod llama;
pub mod weights;

pub use config::{bounds, LlamaConfig};
pub use echo_tensor::nn::AttnMask;
pub use error::{Error, Result};
pub use generate::{generate, Decoder, GenerateOptions, Generation, InferProjector, PlainInfer, Sampling};
pub use gguf::import_gguf;
pub use llama::{shifted_targets, Batch, Block, Hidden, Llama, Plain, Proj, Projector, ROPE_PRECOMPUTED};
