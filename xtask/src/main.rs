//! `cargo xtask <command>`: the one entry point of echo-lora.

mod bench;
mod bench_paired;
mod check_kernels;
mod data;
mod eval;
mod export;
mod gpu_check;
mod model;
mod paired;
mod parity;
mod study;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "echo-lora: Echo-LoRA fine-tuning for LLaMA-family models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune an adapter (default: configs/default.toml).
    Train(train::TrainArgs),
    /// Parity: logits, loss and gradients for a batch file (the fixtures' layout).
    Logits(parity::LogitsArgs),
    /// Export an adapter (PEFT folder, llama.cpp LoRA GGUF) or, with --merge, a merged model (HF folder or GGUF).
    Export(export::ExportArgs),
    /// Run the benchmarks side by side with their reference implementations.
    Bench(bench::BenchArgs),
    /// Convert a GGUF file (llama architecture) into a HF model folder.
    ImportGguf(model::ImportArgs),
    /// Download and import a model into the cache (`smollm2`: SmolLM2-135M-Instruct).
    FetchModel(model::FetchArgs),
    /// Generate text from a HF model folder (KV cache; greedy or sampled; --chat).
    Generate(model::GenerateArgs),
    /// Evaluate a model (+ adapter) on the commonsense test sets (LLM-Adapters protocol).
    Eval(eval::EvalArgs),
    /// Train several arms on the same data and budget, evaluate each, print one table.
    Study(study::StudyArgs),
    /// Show what the model will see: tokenised data, masks and counts.
    Data(data::DataArgs),
    /// Compile every kernels/*.cu for sm_80 and sm_90 with nvcc and NVRTC (no GPU needed).
    CheckKernels(check_kernels::CheckKernelsArgs),
    /// On a GPU: every CUDA kernel against its CPU twin, the whole training step against the CPU, then the benches incl. the LLaMA-7B LoRA step vs transformers+PEFT (skips without one).
    GpuCheck(gpu_check::GpuCheckArgs),
}

/// A user error (a missing file, a bad key, a refused resume) prints its message, with the
/// chain of causes, and exits with 1: no backtrace, even under `RUST_BACKTRACE=1` (anyhow
/// would print the one it captured if `main` returned the error). A panic is a bug: the
/// default hook still prints its message and, when asked, its backtrace (exit code 101).
fn main() {
    if let Err(e) = run(Cli::parse().command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Train(args) => train::run(args),
        Command::Logits(args) => parity::run(args),
        Command::Export(args) => export::run(args),
        Command::Bench(args) => bench::run(args),
        Command::ImportGguf(args) => model::import(args),
        Command::FetchModel(args) => model::fetch(args),
        Command::Generate(args) => model::generate(args),
        Command::Data(args) => data::run(args),
        Command::CheckKernels(args) => check_kernels::run(args),
        Command::GpuCheck(args) => gpu_check::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Study(args) => study::run(args),
    }
}
