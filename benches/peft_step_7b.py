#!/usr/bin/env python3
"""transformers + PEFT side of the headline GPU bench (issue 7; ours: `echo_trainer::step_bench`).

LoRA training steps on a LLaMA-7B-shaped model (transformers' `LlamaConfig()` defaults: hidden
4096, 32 layers, 32 heads, intermediate 11008, vocab 32000) with random weights in bf16 on CUDA,
SDPA attention, gradient checkpointing off. PEFT `LoraConfig(r=32, lora_alpha=64,
lora_dropout=0, target_modules=q,k,v,up,down)` with PEFT's defaults (adapter weights upcast to
fp32). One step = forward with labels + backward + `clip_grad_norm_(1.0)` + `torch.optim.AdamW`
(lr 1e-4) + zero_grad, timed with a CUDA synchronisation at its end, after warm-up steps.

The batch is the Rust side's: token ids from splitmix64 (seed 0) in [16, V), batch 16 x 256,
attention mask all ones, labels = the ids.

    python3 benches/peft_step_7b.py [--layers N] [--steps S] [--warmup W]

Prints one JSON line (tokens_per_s among its fields). Exit status 3 when torch, transformers or
peft cannot be imported, 4 when torch sees no CUDA device (`cargo xtask gpu-check` reports
either as a skip).
"""

import argparse
import json
import platform
import statistics
import sys
import time

MASK64 = (1 << 64) - 1
TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def batch(n, vocab):
    s, ids = 0, []
    for _ in range(n):
        s, z = splitmix64(s)
        ids.append(16 + z % (vocab - 16))
    return ids


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32, help="decoder layers (LLaMA-7B has 32)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--r", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=64.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda:0")
    args = ap.parse_args()
    try:
        import torch
        import transformers
        import peft
        from peft import LoraConfig, get_peft_model
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as e:
        print(json.dumps({"impl": "transformers+peft", "skipped": f"cannot import: {e}"}), flush=True)
        sys.exit(3)
    if not torch.cuda.is_available():
        print(json.dumps({"impl": "transformers+peft", "skipped": "torch sees no CUDA device"}), flush=True)
        sys.exit(4)

    dev = torch.device(args.device)
    t0 = time.perf_counter()
    try:
        config = LlamaConfig(attn_implementation="sdpa")
    except TypeError:
        config = LlamaConfig()
    config.num_hidden_layers = args.layers
    config.use_cache = False
    torch.manual_seed(0)
    # Built directly on the GPU in bf16 (no fp32 copy of 7B weights anywhere).
    torch.set_default_dtype(torch.bfloat16)
    with dev:
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.train()
    lora = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=TARGETS, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=args.lr)
    ids = torch.tensor(batch(args.batch * args.seq, config.vocab_size), dtype=torch.long, device=dev).view(args.batch, args.seq)
    mask = torch.ones_like(ids)

    def step():
        out = model(input_ids=ids, attention_mask=mask, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, args.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.detach()

    torch.cuda.synchronize(dev)
    setup = time.perf_counter() - t0
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        loss = step()
        torch.cuda.synchronize(dev)
        dt = time.perf_counter() - t
        if i >= args.warmup:
            times.append(dt)
        losses.append(float(loss))
        print(f"  transformers+peft step {i + 1}/{args.warmup + args.steps}: {dt:.3f} s{' (warm-up)' if i < args.warmup else ''}", file=sys.stderr, flush=True)
    tokens = args.batch * args.seq
    print(json.dumps({
        "impl": "transformers+peft",
        "layers": args.layers,
        "batch": args.batch,
        "seq": args.seq,
        "r": args.r,
        "tokens_per_step": tokens,
        "steps": len(times),
        "warmup": args.warmup,
        "mean_s": statistics.fmean(times),
        "min_s": min(times),
        "max_s": max(times),
        "tokens_per_s": tokens * len(times) / sum(times),
        "setup_s": setup,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "trainable_params": sum(p.numel() for p in trainable),
        "adapter_dtype": str(trainable[0].dtype),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30,
        "gpu": torch.cuda.get_device_name(dev),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
    }), flush=True)


if __name__ == "__main__":
    main()
