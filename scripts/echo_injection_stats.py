#!/usr/bin/env python3
"""How strong is the echo injection of a trained Echo-LoRA run? An independent measurement.

Usage (from the repo root, with torch + transformers + peft + safetensors, e.g. .venv-ref):
    .venv-ref/bin/python scripts/echo_injection_stats.py RUN_DIR [--model DIR] [--records N]

RUN_DIR is a `cargo xtask train` output folder: its `adapter/` (the PEFT LoRA adapter) and its
`checkpoint/state.safetensors` (which still holds the echo parameters: `echo.layer_logits`,
`echo.trunk.weight`, `echo.proj.<m>.weight`, `echo.gate.<m>.weight|bias`). Written in plain
PyTorch from docs/method.md, not from our Rust code, so it doubles as a cross-check.

For the first N/4 training records of each of boolq, ARC-Easy, ARC-Challenge, openbookqa (dropout
off), it runs the plain forward of base + adapter, builds each sample's echo (masked mean of the
source blocks' outputs over prompt tokens, softmax layer mix, weightless RMSNorm, SiLU trunk),
then per target module:
  - rms(g * p), the injected vector (per sample, the same for all its tokens);
  - rms(A x), the bottleneck it is added to (over every real token of the sample);
  - their ratio, and the gate's mean value;
and finally runs the echo forward (the injection added to each lora_A output by a hook) and
reports the KL(echo || plain) per answer token at tau = 1, which is what the KD term averages
in training (`kd` in metrics.jsonl). For scale, it also reports the KL between two plain
forwards with adapter dropout on (independent masks, no injection): the part of the training
KD term that dropout alone produces, since training draws separate masks for the two routes.
"""
import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
SETS = ["boolq", "ARC-Easy", "ARC-Challenge", "openbookqa"]


def parse_config(run):
    """The [echo] keys this script needs, from the checkpoint's copy of the run config."""
    import tomllib

    state = json.load(open(os.path.join(run, "checkpoint", "state.json")))
    return tomllib.loads(state["config_toml"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/echo-lora/models/smollm2-135m-instruct"))
    ap.add_argument("--data", default="data/commonsense")
    ap.add_argument("--records", type=int, default=32)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a small model; one thread leaves the machine to training jobs
    cfg = parse_config(args.run)
    echo_cfg = cfg["echo"]
    if not echo_cfg.get("enabled", False):
        sys.exit(f"{args.run}: the run has no echo path")
    tok = AutoTokenizer.from_pretrained(args.model)
    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, os.path.join(args.run, "adapter")).eval()
    state = load_file(os.path.join(args.run, "checkpoint", "state.safetensors"))
    layers = model.base_model.model.model.layers
    n_layers = len(layers)
    src = [l % n_layers for l in echo_cfg["source_layers"]]
    tgt = [l % n_layers for l in echo_cfg["target_layers"]]
    eps = base.config.rms_norm_eps
    gate_on = echo_cfg.get("gate", True)

    # Records: prompt ids (pooled) and prompt + answer + EOS (scored).
    samples = []
    per_set = max(1, args.records // len(SETS))
    for name in SETS:
        for rec in json.load(open(os.path.join(args.data, name, "train.json")))[:per_set]:
            prompt = PROMPT.format(instruction=rec["instruction"])
            p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            a_ids = tok(rec["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            samples.append((name, p_ids, a_ids))

    # Hooks: block outputs (the boundary states h_l) and every target module's lora_A output.
    captured = {}
    inject = {}  # module path -> [r] tensor added to its lora_A output (echo forward)

    def block_hook(i):
        def f(_m, _inp, out):
            captured[f"h{i}"] = out[0] if isinstance(out, tuple) else out
        return f

    def lora_hook(path):
        def f(_m, _inp, out):
            captured[path] = out
            if path in inject:
                return out + inject[path]
        return f

    handles = [layers[i].register_forward_hook(block_hook(i)) for i in src]
    targets = []
    for i in tgt:
        for proj in echo_cfg["target_modules"]:
            parent = "self_attn" if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            module = getattr(getattr(layers[i], parent), proj)
            path = f"model.layers.{i}.{parent}.{proj}"
            handles.append(module.lora_A["default"].register_forward_hook(lora_hook(path)))
            targets.append(path)

    mix = torch.softmax(state["echo.layer_logits"], 0)
    trunk = state["echo.trunk.weight"]
    stats = {p: {"inj": [], "ax": [], "gate": []} for p in targets}
    kls, kl_drop, n_tok = 0.0, 0.0, 0
    with torch.no_grad():
        for _name, p_ids, a_ids in samples:
            ids = torch.tensor([p_ids + a_ids])
            inject.clear()
            plain = model(input_ids=ids).logits[0]
            pooled = [captured[f"h{i}"][0, : len(p_ids)].mean(0) for i in src]
            y = sum(w * v for w, v in zip(mix, pooled))
            e = y / torch.sqrt(y.pow(2).mean() + eps)
            u = F.silu(trunk @ e)
            for path in targets:
                p = state[f"echo.proj.{path}.weight"] @ u
                g = torch.sigmoid(state[f"echo.gate.{path}.weight"] @ u + state[f"echo.gate.{path}.bias"]) if gate_on else torch.ones_like(p)
                ax = captured[path][0]
                stats[path]["inj"].append((g * p).pow(2).mean().sqrt().item())
                stats[path]["ax"].append(ax.pow(2).mean().sqrt().item())
                stats[path]["gate"].append(g.mean().item())
                inject[path] = g * p
            echo = model(input_ids=ids).logits[0]
            # Logits at t predict token t+1: the answer tokens are predicted from len(p)-1 on.
            rows = slice(len(p_ids) - 1, len(p_ids) + len(a_ids) - 1)
            lt, ls = F.log_softmax(echo[rows], -1), F.log_softmax(plain[rows], -1)
            kls += (lt.exp() * (lt - ls)).sum().item()
            # Two plain forwards with dropout on, no injection: dropout's share of the KD term.
            inject.clear()
            model.train()
            d1, d2 = (F.log_softmax(model(input_ids=ids).logits[0][rows], -1) for _ in range(2))
            model.eval()
            kl_drop += (d1.exp() * (d1 - d2)).sum().item()
            n_tok += len(a_ids)
    for h in handles:
        h.remove()

    mean = lambda v: sum(v) / len(v)
    print(f"run: {args.run}  ({len(samples)} training records, {n_tok} answer tokens; dropout off)")
    print(f"layer mix softmax(w): {[round(x, 4) for x in mix.tolist()]}")
    print("| module | gate mean | rms(g*p) | rms(A x) | ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    ratios = []
    for path in targets:
        s = stats[path]
        r = mean(s["inj"]) / mean(s["ax"])
        ratios.append(r)
        print(f"| {path} | {mean(s['gate']):.4f} | {mean(s['inj']):.5f} | {mean(s['ax']):.4f} | {r:.4f} |")
    print(f"injection / bottleneck, all {len(targets)} modules: mean {mean(ratios):.4f}, max {max(ratios):.4f}")
    for kind in ("proj", "gate"):
        w = [state[f"echo.{kind}.{p}.weight"] for p in targets]
        rms = math.sqrt(sum(x.pow(2).sum().item() for x in w) / sum(x.numel() for x in w))
        print(f"rms of echo.{kind}.*.weight: {rms:.5f} (init std {echo_cfg['init_std']:.3f})")
    b = torch.cat([state[f"echo.gate.{p}.bias"] for p in targets])
    print(f"gate bias c: mean {b.mean().item():.4f}, min {b.min().item():.4f}, max {b.max().item():.4f} (init -2)")
    print(f"KL(echo || plain) per answer token, tau 1, dropout off: {kls / n_tok:.3e}")
    print(f"KL(plain || plain) per answer token, two dropout masks, no echo: {kl_drop / n_tok:.3e}")


if __name__ == "__main__":
    main()
