#!/usr/bin/env python3
"""Real-data throughput: one epoch of a fixed commonsense subset, ours against PyTorch + PEFT.

The throughput issue's bench. Every arm trains SmolLM2-135M for one epoch over the same
records: the first K records (default 128) of each of the four commonsense train sets in
data/commonsense (boolq, ARC-Easy, ARC-Challenge, openbookqa), the LLM-Adapters recipe:
Alpaca template, answer-only labels, cutoff 256, adapters r 32 / alpha 64 / dropout 0.05 on
q, k, v, up, down, batch 16 in micro-batches of 8, AdamW lr 3e-4, fp32, 2 threads.

- **PyTorch + PEFT, the LLM-Adapters way**: records tokenised as LLM-Adapters' finetune.py does
  (prompt + answer, EOS appended when it fits, prompt labels -100), in a seeded random order,
  each micro-batch right-padded to its longest row, `loss.backward()` per micro-batch (the loss
  scaled by 1/2 for the accumulation), `optimizer.step()` every two. Each method in its own
  process, so its peak RSS (`ru_maxrss`) is its own.
- **Ours**: `target/release/xtask train` on a generated config (validation held out: 8
  records, so ours trains on 8 fewer; tokens/s is what compares), packing as configured
  (default on), plus a padded LoRA arm (`train.packing = false`) to show what packing buys.
  Loop time and tokens/s are the run's step time (`summary.json`), peak RSS its `VmHWM`.

Tokens are real (non-padding) tokens of the micro-batches each side trained on.

    python3 benches/real_data.py --install          # create .venv-ref (torch, transformers, peft), run all
    .venv-ref/bin/python benches/real_data.py       # run all arms (the venv must exist)
    python3 benches/real_data.py --ours-only        # no PyTorch (no venv needed)
    .venv-ref/bin/python benches/real_data.py --arms lora,pytorch-lora --records 32

Prints one JSON line per arm and a Markdown table; `--json PATH` also writes them to a file.
Takes about 10 minutes per arm on 2 cores at K = 128; keep the machine otherwise idle.
"""

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The model folder is found as the step bench finds it (ECHO_SMOLLM2_DIR, else the cache).
from peft_step import model_dir

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-ref"
PACKAGES = ["torch", "transformers", "peft", "safetensors", "numpy", "tokenizers"]
SETS = ["boolq", "ARC-Easy", "ARC-Challenge", "openbookqa"]
TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
CUTOFF, BATCH, MICRO, R, ALPHA, DROPOUT, LR, SEED = 256, 16, 8, 32, 64, 0.05, 3e-4, 42
OURS = ["lora", "dora", "echo-lora", "lora-padded"]
TORCH = ["pytorch-lora", "pytorch-dora"]
# LLM-Adapters' Alpaca prompts (the same text as echo-data's `Template::alpaca`).
WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
WITHOUT_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


def subset(k: int) -> list:
    """The first `k` records of each train set, in set order."""
    records = []
    for s in SETS:
        path = ROOT / "data" / "commonsense" / s / "train.json"
        records += json.loads(path.read_text())[:k]
    return records


# ------------------------------------------------------------------ PyTorch + PEFT side


def torch_arm(method: str, records: list) -> dict:
    """One epoch the LLM-Adapters way; runs in its own process (see main)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    tok = AutoTokenizer.from_pretrained(str(model_dir()))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    def tokenize(prompt: str):
        ids = tok(prompt, truncation=True, max_length=CUTOFF, padding=False)["input_ids"]
        if ids and ids[-1] != tok.eos_token_id and len(ids) < CUTOFF:
            ids = ids + [tok.eos_token_id]
        return ids

    examples = []
    for r in records:
        template = WITH_INPUT if r.get("input") else WITHOUT_INPUT
        prompt = template.format(instruction=r["instruction"], input=r.get("input", ""))
        full = tokenize(prompt + r["output"])
        n_prompt = len(tokenize(prompt)) - 1  # LLM-Adapters: the prompt without its EOS
        labels = [-100] * n_prompt + full[n_prompt:]
        examples.append((full, labels[: len(full)]))
    random.Random(SEED).shuffle(examples)

    model = LlamaForCausalLM.from_pretrained(str(model_dir()), dtype=torch.float32)
    cfg = LoraConfig(
        r=R, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules=TARGETS, use_dora=(method == "dora"), bias="none"
    )
    model = get_peft_model(model, cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    accumulation = BATCH // MICRO
    tokens, loop, first, last = 0, 0.0, None, None
    micro_batches = [examples[i : i + MICRO] for i in range(0, len(examples), MICRO)]
    for step, mb in enumerate(micro_batches):
        t = max(len(ids) for ids, _ in mb)
        ids = torch.tensor([x + [pad_id] * (t - len(x)) for x, _ in mb])
        mask = torch.tensor([[1] * len(x) + [0] * (t - len(x)) for x, _ in mb])
        labels = torch.tensor([y + [-100] * (t - len(y)) for _, y in mb])
        start = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        (loss / accumulation).backward()
        if (step + 1) % accumulation == 0 or step + 1 == len(micro_batches):
            opt.step()
            opt.zero_grad(set_to_none=True)
        loop += time.perf_counter() - start
        tokens += int(mask.sum())
        first = first if first is not None else float(loss)
        last = float(loss)
        if (step + 1) % 8 == 0:
            print(f"  pytorch+peft {method}: micro-batch {step + 1}/{len(micro_batches)}, {tokens / loop:.0f} tokens/s", file=sys.stderr)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "arm": f"pytorch-{method}",
        "loop_s": loop,
        "tokens": tokens,
        "tokens_per_s": tokens / loop,
        "peak_rss_bytes": rss,
        "first_loss": first,
        "last_loss": last,
        "versions": f"torch {torch.__version__}",
    }


# ------------------------------------------------------------------------------ ours


def our_config(arm: str, data: Path, out: Path) -> str:
    method = "dora" if arm == "dora" else "lora"
    echo = arm == "echo-lora"
    packing = "false" if arm == "lora-padded" else "true"
    return f"""[model]
path = "{model_dir()}"
[data]
train = ["{data}"]
val_count = 8
cutoff = {CUTOFF}
template = "alpaca"
train_on_inputs = false
bucket_by_length = false
[adapter]
method = "{method}"
r = {R}
alpha = {ALPHA}
dropout = {DROPOUT}
targets = {json.dumps(TARGETS)}
[echo]
enabled = {"true" if echo else "false"}
source_layers = [-4, -3, -2, -1]
target_layers = [0, 1, 2, 3, 4, 5, 6]
target_modules = {json.dumps(TARGETS)}
d_echo = 64
[train]
seed = {SEED}
epochs = 1
batch_size = {BATCH}
micro_batch_size = {MICRO}
packing = {packing}
lr = {LR}
eval_every = 0
save_every = 0
[output]
dir = "{out}"
"""


def our_arm(arm: str, records: list, work: Path) -> dict:
    xtask = ROOT / "target" / "release" / "xtask"
    if not xtask.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "xtask"], cwd=ROOT, check=True)
    data = work / "subset.json"
    if not data.exists():
        data.write_text(json.dumps(records))
    out = work / f"run-{arm}"
    cfg = work / f"{arm}.toml"
    cfg.write_text(our_config(arm, data, out))
    subprocess.run([str(xtask), "train", str(cfg)], check=True, stdout=sys.stderr)
    s = json.loads((out / "summary.json").read_text())
    tokens = sum(json.loads(l).get("tokens", 0) for l in (out / "metrics.jsonl").read_text().splitlines() if '"step"' in l)
    return {
        "arm": arm,
        "loop_s": tokens / s["tokens_per_second"] if s["tokens_per_second"] else None,
        "tokens": tokens,
        "tokens_per_s": s["tokens_per_second"],
        "peak_rss_bytes": s.get("peak_rss_bytes"),
        "first_loss": s.get("first_loss"),
        "last_loss": s.get("last_loss"),
    }


# ------------------------------------------------------------------------------ main


def table(results: list) -> str:
    by = {r["arm"]: r for r in results}
    ref = by.get("pytorch-lora")
    ours_lora = by.get("lora")
    rows = ["| arm | loop time | real tokens | tokens/s | peak RSS | tokens/s vs PyTorch LoRA | time vs our LoRA |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        vs_ref = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref else "-"
        vs_ours = f"{r['loop_s'] / ours_lora['loop_s']:.2f}" if ours_lora and not r["arm"].startswith("pytorch") else "-"
        rss = f"{r['peak_rss_bytes'] / 1e9:.2f} GB" if r.get("peak_rss_bytes") else "-"
        rows.append(f"| {r['arm']} | {r['loop_s']:.0f} s | {r['tokens']} | {r['tokens_per_s']:.1f} | {rss} | {vs_ref} | {vs_ours} |")
    if ref and ours_lora and ours_lora.get("peak_rss_bytes"):
        rows.append(f"\nPeak RSS, our LoRA / PyTorch LoRA: {ours_lora['peak_rss_bytes'] / ref['peak_rss_bytes']:.2f}")
    return "\n".join(rows)


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        keep = ("Model name", "CPU(s):", "Thread(s) per core", "Flags")
        lines = [l for l in out.splitlines() if l.startswith(keep[:3])]
        return "; ".join(" ".join(l.split()) for l in lines)
    except OSError:
        return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--install", action="store_true", help=f"create {VENV.name} with {', '.join(PACKAGES)} first")
    ap.add_argument("--records", type=int, default=128, help="records taken from each train set (default 128)")
    ap.add_argument("--arms", default=",".join(TORCH[:1] + OURS + TORCH[1:]), help="comma-separated arms")
    ap.add_argument("--ours-only", action="store_true", help="only our arms")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--torch-arm", help=argparse.SUPPRESS)  # internal: one PyTorch arm in this process
    ap.add_argument("--records-file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_arm:
        print(json.dumps(torch_arm(args.torch_arm, json.loads(args.records_file.read_text()))))
        return
    if args.install:
        if not (VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", *PACKAGES], check=True)
        rest = [a for a in sys.argv[1:] if a != "--install"]
        os.execv(str(VENV / "bin" / "python"), [str(VENV / "bin" / "python"), str(Path(__file__).resolve()), *rest])
    if not model_dir().exists():
        sys.exit(f"real_data.py: no model at {model_dir()}; run `cargo xtask fetch-model smollm2` first")
    arms = [a for a in args.arms.split(",") if a]
    if args.ours_only:
        arms = [a for a in arms if a in OURS]
    unknown = [a for a in arms if a not in OURS + TORCH]
    if unknown:
        sys.exit(f"real_data.py: unknown arm(s) {unknown}; known: {OURS + TORCH}")
    records = subset(args.records)
    print(f"machine: {machine()}", file=sys.stderr)
    print(f"{len(records)} records ({args.records} per set), arms: {', '.join(arms)}", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory(prefix="echo-real-data-") as tmp:
        work = Path(tmp)
        rec_file = work / "records.json"
        rec_file.write_text(json.dumps(records))
        for arm in arms:
            print(f"--- {arm} ({time.strftime('%H:%M:%S')}, load {os.getloadavg()[0]:.2f})", file=sys.stderr)
            if arm in TORCH:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--torch-arm", arm.split("-", 1)[1], "--records-file", str(rec_file)]
                out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
            else:
                r = our_arm(arm, records, work)
            r["load_after"] = os.getloadavg()[0]
            print(json.dumps(r))
            results.append(r)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "records_per_set": args.records, "results": results}, indent=2))


if __name__ == "__main__":
    main()
