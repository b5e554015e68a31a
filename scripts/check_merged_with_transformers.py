#!/usr/bin/env python3
# Usage (from the repo root, with torch + transformers + safetensors installed, e.g. in .venv-ref):
#   cargo xtask export --model fixtures/tiny-llama-a --adapter fixtures/tiny-llama-a/peft-dora --out /tmp/merged --merge
#   python scripts/check_merged_with_transformers.py
# Loads our merged DoRA model folder with transformers and compares its logits with the
# fixture's PEFT DoRA logits (model + adapter as PEFT computes them).
import torch, transformers
from safetensors.torch import load_file
ref = load_file("fixtures/tiny-llama-a/reference-dora.safetensors")
m = transformers.LlamaForCausalLM.from_pretrained("/tmp/merged", torch_dtype=torch.float32, attn_implementation="eager").eval()
with torch.no_grad():
    out = m(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"], labels=ref["labels"])
mask = ref["attention_mask"].bool()
d = (out.logits - ref["logits_dora"])[mask].abs().max().item()
print(f"transformers {transformers.__version__}: merged-model logits vs PEFT model+DoRA: max abs diff {d:.3e}; loss {out.loss.item():.6f} vs {ref['loss_dora'].item():.6f}")
