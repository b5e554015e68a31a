//! `cargo xtask <command>`: the one entry point of echo-lora.

mod bench;

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
    Train {
        /// Run configuration (TOML).
        #[arg(default_value = "configs/default.toml")]
        config: String,
    },
    /// Run the benchmarks side by side with their reference implementations.
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Train { config } => {
            println!(
                "echo-lora train ({config}): not yet. The trainer lands with issue 5 \
                 (LoRA/DoRA adapters, the Echo trainer, PEFT export); today the workspace \
                 provides the tensor core, CPU kernels and autograd it will stand on."
            );
            Ok(())
        }
        Command::Bench(args) => bench::run(args),
    }
}
