#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs into fuzz/corpus/<target>/seed-* from the repository's
own fixtures, configs and data, plus a checkpoint and a GGUF file made by the release binary
(`cargo build --release -p xtask` first). The multi-file targets take their files joined as
`echo_fuzz::join` does: a little-endian u32 length before each part but the last.

    python3 scripts/fuzz_seeds.py
"""

import json
import os
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "fixtures", "tiny-llama-a")
XTASK = os.path.join(ROOT, "target", "release", "xtask")


def read(*path):
    with open(os.path.join(*path), "rb") as f:
        return f.read()


def join(parts):
    out = b""
    for i, p in enumerate(parts):
        if i + 1 < len(parts):
            out += struct.pack("<I", len(p))
        out += p
    return out


def seed(target, name, data):
    d = os.path.join(ROOT, "fuzz", "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def tiny_run(tmp):
    """A 2-step LoRA run of the tiny fixture on the synthetic task: its checkpoint folder."""
    cfg = os.path.join(tmp, "run.toml")
    with open(cfg, "w") as f:
        f.write(
            f'[model]\npath = {json.dumps(TINY)}\n[data]\nsynthetic_records = 12\nval_count = 2\ncutoff = 200\n'
            '[adapter]\nr = 2\nalpha = 4\ntargets = ["q_proj"]\n[echo]\nenabled = false\n'
            '[train]\nmax_steps = 2\nbatch_size = 2\nmicro_batch_size = 2\nwarmup_steps = 0\n'
            f'eval_every = 0\nsave_every = 0\ndevice = "cpu"\n[output]\ndir = {json.dumps(os.path.join(tmp, "run"))}\n'
        )
    env = dict(os.environ, ECHO_LORA_CACHE=os.path.join(tmp, "cache"))
    subprocess.run([XTASK, "train", cfg], check=True, env=env, stdout=subprocess.DEVNULL)
    return os.path.join(tmp, "run")


def main():
    if not os.path.exists(XTASK):
        sys.exit(f"{XTASK} is missing: cargo build --release -p xtask")
    seed("safetensors", "peft-lora", read(TINY, "peft-lora", "adapter_model.safetensors"))
    seed("model_config", "tiny-llama-a", read(TINY, "config.json"))
    seed("tokenizer", "tiny-llama-a", join([read(TINY, "tokenizer.json"), read(TINY, "tokenizer_config.json")]))
    records = json.loads(read(ROOT, "data", "commonsense", "ARC-Easy", "test.json"))[:3]
    seed("records", "arc-easy.json", json.dumps(records, indent=1).encode())
    seed("records", "arc-easy.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    for name in ["default.toml", "smollm2-135m-echo-dora.toml"]:
        seed("run_config", name, read(ROOT, "configs", name))
    for method in ["lora", "dora"]:
        d = os.path.join(TINY, "peft-" + method)
        seed("peft", method, join([read(d, "adapter_config.json"), read(d, "adapter_model.safetensors")]))
    with tempfile.TemporaryDirectory() as tmp:
        ck = os.path.join(tiny_run(tmp), "checkpoint")
        files = ["state.json", "state.safetensors", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"]
        seed("checkpoint", "tiny-lora", join([read(ck, f) for f in files]))
        gguf = os.path.join(tmp, "tiny.gguf")
        subprocess.run(
            [XTASK, "export", "--model", TINY, "--adapter", os.path.join(TINY, "peft-lora"), "--merge", "--gguf", gguf,
             "--quant", "q4_0"],
            check=True, stdout=subprocess.DEVNULL,
        )
        seed("gguf", "tiny-q4_0", read(gguf))
    print("seeds written under fuzz/corpus/")


if __name__ == "__main__":
    main()
