//! `cargo xtask <command>`: the one entry point of echo-lora.

mod bench;
mod bench_paired;
mod check_kernels;
mod compare;
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
    /// Compare two PEFT adapters module by module: update norms, cosine, output-subspace overlap.
    CompareAdapters(compare::CompareArgs),
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
    let result = run(Cli::parse().command);
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    if echo_trainer::interrupt::stop_requested() {
        eprintln!(
            "interrupted: stopped cleanly; run the same command with --resume (a study: the same command) to continue"
        );
        std::process::exit(130);
    }
}

/// For the commands that train (`train`, `study`): Ctrl-C (or SIGTERM, SIGHUP) asks the run to
/// stop cleanly: the step in progress finishes and a checkpoint is written, then the command
/// exits with 130. A second one quits at once (the last checkpoint stays, as after a kill).
/// Other commands keep the default: an interrupt quits at once.
fn stop_cleanly_on_interrupt() {
    let handler = ctrlc::set_handler(|| {
        if echo_trainer::interrupt::stop_requested() {
            eprintln!("\ninterrupted again: quitting now (the last checkpoint is kept)");
            std::process::exit(130);
        }
        echo_trainer::interrupt::request_stop();
        eprintln!(
            "\ninterrupted: stopping at the end of this training step, with a checkpoint (an evaluation runs to \
             its end); Ctrl-C again to quit at once"
        );
    });
    if let Err(e) = handler {
        eprintln!("warning: no Ctrl-C handler ({e}); an interrupt quits at once, keeping the last checkpoint");
    }
}

fn run(command: Command) -> Result<()> {
    if matches!(command, Command::Train(_) | Command::Study(_)) {
        stop_cleanly_on_interrupt();
    }
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
        Command::CompareAdapters(args) => compare::run(args),
    }
}
