#!/usr/bin/env python3
"""PyTorch + PEFT side of the training-step bench (`benches/benches/train_step.rs`).

One training step = forward + backward (no optimizer) of SmolLM2-135M on a fixed batch of
8 x 128 tokens, PEFT adapters r=32, alpha=64, dropout 0 on q,k,v,up,down of every layer, fp32,
for LoRA and DoRA (`use_dora=True`). The batch is the Rust bench's: token ids from splitmix64
(seed 0) in [16, V), attention mask all ones, labels = the last 32 tokens of each row.
The model is the folder `cargo xtask fetch-model smollm2` wrote (HF config.json + f32
safetensors), loaded with `LlamaForCausalLM.from_pretrained(folder, dtype=float32)`.

    python3 benches/peft_step.py --install     # create .venv-ref (torch, transformers, peft) and run
    .venv-ref/bin/python benches/peft_step.py  # run (the venv must exist)
    .venv-ref/bin/python benches/peft_step.py --table   # also print the side-by-side table with
                                                        # criterion's train_step results

Prints one JSON line per method (and the Markdown table with --table).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-ref"
PACKAGES = ["torch", "transformers", "peft", "safetensors", "numpy", "gguf", "tokenizers"]
BATCH, SEQ, ANSWER = 8, 128, 32
TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
MASK64 = (1 << 64) - 1


def venv_python() -> Path:
    return VENV / "bin" / "python"


def install_and_reexec(argv):
    if not venv_python().exists():
        print(f"creating {VENV}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    print(f"installing {' '.join(PACKAGES)} into {VENV} (PyPI; torch is large)", file=sys.stderr)
    subprocess.run([str(venv_python()), "-m", "pip", "install", "-q", *PACKAGES], check=True)
    args = [a for a in argv if a != "--install"]
    os.execv(str(venv_python()), [str(venv_python()), str(Path(__file__).resolve()), *args])


def model_dir() -> Path:
    if os.environ.get("ECHO_SMOLLM2_DIR"):
        return Path(os.environ["ECHO_SMOLLM2_DIR"])
    if os.environ.get("ECHO_LORA_CACHE"):
        root = Path(os.environ["ECHO_LORA_CACHE"])
    elif os.environ.get("XDG_CACHE_HOME"):
        root = Path(os.environ["XDG_CACHE_HOME"]) / "echo-lora"
    else:
        root = Path.home() / ".cache" / "echo-lora"
    return root / "models" / "smollm2-135m-instruct"


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def batch(vocab):
    s, ids = 0, []
    for _ in range(BATCH * SEQ):
        s, z = splitmix64(s)
        ids.append(16 + z % (vocab - 16))
    labels = [t if i % SEQ >= SEQ - ANSWER else -100 for i, t in enumerate(ids)]
    return ids, labels


def run_method(torch, dir_, method, ids, mask, labels, steps, warmup, profile=False):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(str(dir_), dtype=torch.float32)
    cfg = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0, target_modules=TARGETS, use_dora=(method == "dora"), bias="none")
    model = get_peft_model(model, cfg)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]

    def step():
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        return float(out.loss.detach())

    if profile:
        step()
        from torch.profiler import ProfilerActivity, profile as tprofile

        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            step()
            dt = time.perf_counter() - t
        print(f"pytorch+peft {method}: profiled step {dt:.3f} s (profiler overhead included)", file=sys.stderr)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18), file=sys.stderr)
    times, loss = [], None
    for i in range(warmup + steps):
        t = time.perf_counter()
        loss = step()
        dt = time.perf_counter() - t
        if i >= warmup:
            times.append(dt)
        print(f"  pytorch+peft {method} step {i + 1}/{warmup + steps}: {dt:.3f} s{' (warm-up)' if i < warmup else ''}", file=sys.stderr)
    with_grad = sum(1 for p in trainable if p.grad is not None)
    return {
        "impl": "pytorch+peft",
        "method": method,
        "mean_s": statistics.fmean(times),
        "min_s": min(times),
        "max_s": max(times),
        "stdev_s": statistics.stdev(times) if len(times) > 1 else 0.0,
        "steps": len(times),
        "warmup": warmup,
        "loss": loss,
        "trainable_tensors": len(trainable),
        "tensors_with_grad": with_grad,
        "trainable_params": sum(p.numel() for p in trainable),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
    }


def criterion_mean(group, bench):
    p = ROOT / "target" / "criterion" / group / bench / "new" / "estimates.json"
    if not p.exists():
        return None
    e = json.loads(p.read_text())
    return e["mean"]["point_estimate"] / 1e9, e["mean"]["confidence_interval"]["lower_bound"] / 1e9, e["mean"]["confidence_interval"]["upper_bound"] / 1e9


def table(results):
    ours = {m: criterion_mean("train_step", m) for m in ("lora", "dora", "echo_lora")}
    py = {r["method"]: r for r in results}
    lines = ["| step (fwd+bwd, 8x128, r=32) | s/step | 95% CI / min..max |", "| --- | ---: | --- |"]
    for m, label in (("lora", "ours LoRA"), ("dora", "ours DoRA"), ("echo_lora", "ours Echo-LoRA")):
        if ours[m]:
            mean, lo, hi = ours[m]
            lines.append(f"| {label} | {mean:.3f} | {lo:.3f}..{hi:.3f} (criterion mean CI) |")
        else:
            lines.append(f"| {label} | (no criterion result: run `cargo bench -p echo-benches --bench train_step`) | |")
    for m in ("lora", "dora"):
        if m in py:
            r = py[m]
            lines.append(f"| PyTorch+PEFT {m.upper() if m == 'dora' else 'LoRA'} | {r['mean_s']:.3f} | {r['min_s']:.3f}..{r['max_s']:.3f} ({r['steps']} steps) |")
    lines += ["", "| ratio | value | goal | met |", "| --- | ---: | ---: | --- |"]

    def ratio(name, a, b, goal):
        if a is None or b is None:
            lines.append(f"| {name} | n/a | <= {goal} | |")
            return
        v = a / b
        lines.append(f"| {name} | {v:.3f} | <= {goal} | {'yes' if v <= goal else 'no'} |")

    o = {m: (ours[m][0] if ours[m] else None) for m in ours}
    p = {m: (py[m]["mean_s"] if m in py else None) for m in ("lora", "dora")}
    ratio("ours LoRA / PyTorch+PEFT LoRA", o["lora"], p["lora"], 0.5)
    ratio("ours DoRA / PyTorch+PEFT DoRA", o["dora"], p["dora"], 0.5)
    ratio("ours Echo-LoRA / ours LoRA", o["echo_lora"], o["lora"], 1.5)
    ratio("ours DoRA / ours LoRA", o["dora"], o["lora"], 1.15)
    if p["lora"] and p["dora"]:
        lines.append(f"| (PyTorch+PEFT DoRA / its LoRA) | {p['dora'] / p['lora']:.3f} | | |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--install", action="store_true", help=f"create {VENV.name} and pip-install {', '.join(PACKAGES)} first")
    ap.add_argument("--model", type=Path, default=None, help="SmolLM2 folder (default: the fetch-model cache)")
    ap.add_argument("--methods", default="lora,dora")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per method")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--table", action="store_true", help="print the side-by-side table with target/criterion/train_step")
    ap.add_argument("--profile", action="store_true", help="first print a torch.profiler table of one step per method (to stderr)")
    ap.add_argument("--save", type=Path, default=None, help="also write the JSON lines to this file")
    ap.add_argument("--table-from", type=Path, default=None, help="run nothing: print the table from a --save file and criterion's results")
    args = ap.parse_args()
    if args.install:
        install_and_reexec(sys.argv[1:])
    if args.table_from:
        rows = [json.loads(l) for l in args.table_from.read_text().splitlines() if l.strip()]
        print(table([r for r in rows if r.get("impl") == "pytorch+peft"]))
        return
    try:
        import torch
        import peft
        import transformers
    except ImportError as e:
        sys.exit(f"peft_step.py: {e}. Run `python3 benches/peft_step.py --install` (creates {VENV} with {', '.join(PACKAGES)}), "
                 f"or run it with {venv_python()}.")
    dir_ = args.model or model_dir()
    if not (dir_ / "config.json").exists():
        sys.exit(f"peft_step.py: no SmolLM2 at {dir_}: run `cargo xtask fetch-model smollm2` first")
    torch.set_num_threads(args.threads)
    vocab = json.loads((dir_ / "config.json").read_text())["vocab_size"]
    ids, labels = batch(vocab)
    ids_t = torch.tensor(ids, dtype=torch.long).view(BATCH, SEQ)
    labels_t = torch.tensor(labels, dtype=torch.long).view(BATCH, SEQ)
    mask_t = torch.ones(BATCH, SEQ, dtype=torch.long)
    env = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load": os.getloadavg(),
    }
    lines = [{"env": env}]
    print(json.dumps(lines[-1]), flush=True)
    results = []
    for m in args.methods.split(","):
        r = run_method(torch, dir_, m, ids_t, mask_t, labels_t, args.steps, args.warmup, args.profile)
        results.append(r)
        lines.append(r)
        print(json.dumps(r), flush=True)
    lines.append({"load_after": os.getloadavg()})
    print(json.dumps(lines[-1]), flush=True)
    if args.save:
        args.save.write_text("".join(json.dumps(l) + "\n" for l in lines))
    if args.table:
        print()
        print(table(results))


if __name__ == "__main__":
    main()
