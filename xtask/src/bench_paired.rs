//! The paired step of `cargo xtask bench`: our GEMM and numpy's OpenBLAS timed call by call in
//! one process (`benches/src/bin/gemm_paired.rs`), which is what the GEMM goal is judged on.
//! Separate runs (criterion, then the numpy script) stay in the first table, but on a shared
//! virtual machine the cores' speed drifts between them; see `echo_benches::paired`.

use crate::bench::{self, stdout_of};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// One shape's result: median times, the median per-round ratio and its quartiles.
pub struct PairedRow {
    pub name: String,
    pub ours_ms: f64,
    pub reference_ms: f64,
    pub flops: f64,
    pub ratio: [f64; 3],
}

/// Finds numpy's OpenBLAS with the venv's interpreter, builds and runs `gemm_paired` on it.
pub fn run(root: &Path, py: &Path, quick: bool) -> Result<Vec<PairedRow>> {
    let stdout = stdout_of(
        Command::new(py).arg(root.join(bench::SCRIPT)).arg("--openblas-path"),
        "numpy_reference.py --openblas-path",
    )?;
    let line = String::from_utf8_lossy(&stdout);
    let v: Value = serde_json::from_str(line.trim())
        .with_context(|| format!("numpy_reference.py --openblas-path printed {line}"))?;
    let lib =
        v["openblas_path"].as_str().context("numpy_reference.py --openblas-path printed no openblas_path")?.to_string();

    let (rounds, warm_up) = if quick { ("40", "0.5") } else { ("100", "1") };
    eprintln!("==> gemm_paired --openblas {lib} --rounds {rounds} (ours and OpenBLAS interleaved)");
    let stdout = stdout_of(
        bench::cargo()
            .args(["run", "--release", "--quiet", "-p", "echo-benches", "--bin", "gemm_paired", "--"])
            .args(["--openblas", &lib, "--rounds", rounds, "--warm-up-secs", warm_up])
            .current_dir(root),
        "gemm_paired",
    )?;
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&stdout).lines().filter(|l| l.starts_with('{')) {
        let v: Value = serde_json::from_str(line).with_context(|| format!("gemm_paired printed bad JSON: {line}"))?;
        if let Some(info) = v.get("openblas") {
            println!(
                "paired reference: {} ({}, core {}, {} threads; ours {} threads)",
                info["symbol"].as_str().unwrap_or("?"),
                info["path"].as_str().unwrap_or("?"),
                info["core"].as_str().unwrap_or("?"),
                info["threads"],
                info["ours_threads"]
            );
            continue;
        }
        let num = |k: &str| v[k].as_f64().with_context(|| format!("gemm_paired: a result line lacks {k}: {line}"));
        // How much slower each side ran second in its round than first: equal for both unless
        // one side disturbs the other (threads left spinning, say), which would bias the ratio.
        let second_over_first = |k: &str| v[k][1].as_f64().zip(v[k][0].as_f64()).map(|(b, a)| b / a);
        if let (Some(o), Some(r)) =
            (second_over_first("ours_ms_first_second"), second_over_first("reference_ms_first_second"))
        {
            if (o - r).abs() > 0.05 {
                eprintln!(
                    "warning: {}: running second in a round slowed ours by {:+.0}% and OpenBLAS by {:+.0}%: \
                     one side disturbs the other, so the paired ratio is biased",
                    v["name"].as_str().unwrap_or("?"),
                    (o - 1.0) * 100.0,
                    (r - 1.0) * 100.0
                );
            }
        }
        rows.push(PairedRow {
            name: v["name"].as_str().context("gemm_paired: a result line lacks name")?.to_string(),
            ours_ms: num("ours_ms")?,
            reference_ms: num("reference_ms")?,
            flops: num("flops")?,
            ratio: [num("ratio_q1")?, num("ratio")?, num("ratio_q3")?],
        });
    }
    if rows.is_empty() {
        bail!("gemm_paired printed no result");
    }
    Ok(rows)
}

/// The paired table; returns the worst median ratio.
pub fn print(rows: &[PairedRow]) -> f64 {
    println!();
    println!("Paired run: ours and OpenBLAS alternating call by call in one process (median over rounds):");
    println!();
    println!("| benchmark | ours ms | ours GFLOP/s | OpenBLAS ms | OpenBLAS GFLOP/s | ours/OpenBLAS (median of rounds) | quartiles |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.2} | {:.1} | {:.2} | {:.1} | {:.2} | {:.2}-{:.2} |",
            r.name,
            r.ours_ms,
            r.flops / r.ours_ms / 1e6,
            r.reference_ms,
            r.flops / r.reference_ms / 1e6,
            r.ratio[1],
            r.ratio[0],
            r.ratio[2]
        );
    }
    rows.iter().map(|r| r.ratio[1]).fold(f64::INFINITY, f64::min)
}
