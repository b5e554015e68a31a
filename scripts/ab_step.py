#!/usr/bin/env python3
"""Paired A/B of two builds of `xtask` on one training config: is a change slower?

Each round trains the config once with each binary, in alternating order (A then B, then B
then A), and takes the ratio B/A of the summed step times (`tokens / tokens_per_s` from
`metrics.jsonl`, the first step dropped as warm-up). Slow drift of a shared machine's speed
cancels within a round; the median and quartiles of the per-round ratios are the result.

    cp target/release/xtask /tmp/xtask-a            # before the change
    ... change, cargo build --release -p xtask ...
    python3 scripts/ab_step.py /tmp/xtask-a target/release/xtask benches/ab/lora-smollm2.toml --rounds 10

benches/ab/lora-smollm2.toml is a LoRA step like benches/STEP.md's, as a run (SmolLM2-135M,
8 synthetic records a step, r 32 on q,k,v,up,down, fp32, 4 steps; `cargo xtask fetch-model
smollm2` first).
"""
import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path


def step_seconds(run_dir: Path) -> float:
    total = 0.0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        d = json.loads(line)
        if "tokens_per_s" in d and d.get("step", 0) > 1:
            total += d["tokens"] / d["tokens_per_s"]
    if total == 0.0:
        raise SystemExit(f"{run_dir}/metrics.jsonl: no timed step after the first (raise train.max_steps)")
    return total


def train(binary: str, config: str, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    r = subprocess.run([binary, "train", config, "--out", str(out)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{binary} train {config} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return step_seconds(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="the baseline xtask binary")
    ap.add_argument("b", help="the changed xtask binary")
    ap.add_argument("config")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ab-step-"))
    ratios = []
    for r in range(args.rounds):
        order = ["a", "b"] if r % 2 == 0 else ["b", "a"]
        t = {side: train(getattr(args, side), args.config, work / side) for side in order}
        ratios.append(t["b"] / t["a"])
        print(f"round {r + 1}: A {t['a']:.2f} s, B {t['b']:.2f} s, B/A {ratios[-1]:.3f}", flush=True)
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    print(f"B/A: median {statistics.median(ratios):.3f}, quartiles {q[0]:.3f}..{q[2]:.3f}, "
          f"range {min(ratios):.3f}..{max(ratios):.3f} over {len(ratios)} rounds")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
