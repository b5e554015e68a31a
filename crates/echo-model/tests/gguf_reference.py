#!/usr/bin/env python3
"""Independent check of `cargo xtask import-gguf` against llama.cpp's own Python package.

Not part of CI (it needs the PyPI packages `gguf` and `numpy`; install them in a venv:
`python3 -m venv /tmp/gguf-venv && /tmp/gguf-venv/bin/pip install gguf`).

    # compare an import with gguf-py's dequantisation of the same file
    python gguf_reference.py compare FILE.gguf IMPORTED_DIR [--all]
    # write a tiny llama GGUF using every block format we read (K-quants included)
    python gguf_reference.py synthetic OUT.gguf

`compare` dequantises each GGUF tensor with `gguf.quants.dequantize` (llama.cpp's reference
implementation in numpy), undoes the converter's Q/K row permutation with numpy, and reports
the max |difference| against our model.safetensors, plus the hyper-parameters and vocabulary.
"""
import json
import struct
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            assert info["dtype"] == "F32", (name, info["dtype"])
            a, b = info["data_offsets"]
            f.seek(base + a)
            out[name] = np.frombuffer(f.read(b - a), dtype="<f4").reshape(info["shape"])
        return out


def unpermute(w, n_head):
    """Inverse of convert_hf_to_gguf.py's LlamaModel.permute."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_name(name):
    fixed = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
    if name in fixed:
        return fixed[name]
    _, layer, part, _ = name.split(".")
    module = {
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    }[part]
    return f"model.layers.{layer}.{module}.weight"


def field(r, key):
    f = r.fields.get(key)
    return None if f is None else f.contents()


def compare(gguf_path, out_dir, everything):
    r = gguf.GGUFReader(gguf_path)
    ours = read_safetensors(f"{out_dir}/model.safetensors")
    cfg = json.load(open(f"{out_dir}/config.json"))
    heads, kv_heads = field(r, "llama.attention.head_count"), field(r, "llama.attention.head_count_kv")
    for key, want in [("hidden_size", "llama.embedding_length"), ("num_hidden_layers", "llama.block_count"),
                      ("num_attention_heads", "llama.attention.head_count"), ("num_key_value_heads", "llama.attention.head_count_kv"),
                      ("intermediate_size", "llama.feed_forward_length"), ("max_position_embeddings", "llama.context_length")]:
        assert cfg[key] == field(r, want), (key, cfg[key], field(r, want))
    assert abs(cfg["rope_theta"] - field(r, "llama.rope.freq_base")) < 1e-3
    assert np.float32(cfg["rms_norm_eps"]) == np.float32(field(r, "llama.attention.layer_norm_rms_epsilon"))
    tokens = field(r, "tokenizer.ggml.tokens")
    vocab = json.load(open(f"{out_dir}/tokenizer.json"))["model"]["vocab"]
    assert cfg["vocab_size"] == len(tokens) and all(vocab[t] == i for i, t in enumerate(tokens)), "vocabulary differs"
    print(f"config and vocabulary ({len(tokens)} tokens) agree")

    worst = 0.0
    shown = 0
    for t in r.tensors:
        name = hf_name(t.name)
        if not everything and not (t.name == "token_embd.weight" or t.name.startswith("blk.0.") or t.name == "output_norm.weight"):
            continue
        ref = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        ref = ref.reshape([int(d) for d in reversed(t.shape)])
        if t.name.endswith("attn_q.weight"):
            ref = unpermute(ref, heads)
        elif t.name.endswith("attn_k.weight"):
            ref = unpermute(ref, kv_heads)
        got = ours[name]
        assert got.shape == ref.shape, (name, got.shape, ref.shape)
        d = float(np.max(np.abs(got - ref)))
        worst = max(worst, d)
        shown += 1
        print(f"{t.tensor_type.name:>5} {t.name:<28} -> {name:<45} {str(list(got.shape)):<14} max|diff| {d:.3g}")
    # Two rows of the embedding, spelled out.
    emb = ours["model.embed_tokens.weight"]
    t = next(t for t in r.tensors if t.name == "token_embd.weight")
    ref = gguf.quants.dequantize(t.data, t.tensor_type).reshape(emb.shape)
    for row in (0, emb.shape[0] - 1):
        print(f"token_embd row {row}: ours {emb[row, :4]} gguf-py {ref[row, :4]}")
    print(f"{shown} tensors compared; max |ours - gguf-py| = {worst:.3g}")
    return worst


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def random_blocks(rng, qtype, rows, cols):
    """Random bytes for a quantised [rows, cols] tensor, with sane f16 scale fields."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    scale = lambda n: np.frombuffer(rng.uniform(0.001, 0.05, size=n).astype(np.float16).tobytes(), dtype=np.uint8).reshape(-1, 2)
    flat = raw.reshape(-1, size)
    nb = flat.shape[0]
    if qtype in (Q.Q4_K, Q.Q5_K):  # d, dmin at the start
        flat[:, 0:2] = scale(nb)
        flat[:, 2:4] = scale(nb)
    elif qtype == Q.Q6_K:  # d at the end
        flat[:, 208:210] = scale(nb)
    else:
        raise ValueError(qtype)
    return raw.reshape(rows, cols // block * size)


def synthetic(path):
    rng = np.random.default_rng(0)
    hidden, heads, kv, ffn = 256, 4, 2, 512
    vocab_tokens = bytes_to_unicode() + ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("synthetic-all-formats")
    w.add_block_count(1)
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(vocab_tokens)
    w.add_token_types([1] * 256 + [3, 3, 3])
    w.add_token_merges([])
    w.add_bos_token_id(257)
    w.add_eos_token_id(258)
    v = len(vocab_tokens)

    def dense(name, shape, qtype):
        x = rng.standard_normal(shape).astype(np.float32) * 0.1
        if qtype in (Q.F32,):
            w.add_tensor(name, x)
        elif qtype == Q.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)

    def kquant(name, shape, qtype):
        w.add_tensor(name, random_blocks(rng, qtype, *shape), raw_dtype=qtype)

    dense("token_embd.weight", (v, hidden), Q.Q8_0)
    dense("blk.0.attn_norm.weight", (hidden,), Q.F32)
    kquant("blk.0.attn_q.weight", (heads * 64, hidden), Q.Q4_K)
    kquant("blk.0.attn_k.weight", (kv * 64, hidden), Q.Q5_K)
    kquant("blk.0.attn_v.weight", (kv * 64, hidden), Q.Q6_K)
    dense("blk.0.attn_output.weight", (hidden, heads * 64), Q.Q5_0)
    dense("blk.0.ffn_norm.weight", (hidden,), Q.BF16)
    dense("blk.0.ffn_gate.weight", (ffn, hidden), Q.Q5_1)
    dense("blk.0.ffn_up.weight", (ffn, hidden), Q.Q4_0)
    dense("blk.0.ffn_down.weight", (hidden, ffn), Q.Q4_1)
    dense("output_norm.weight", (hidden,), Q.F32)
    dense("output.weight", (v, hidden), Q.F16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {path}")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3], "--all" in sys.argv)
    elif len(sys.argv) == 3 and sys.argv[1] == "synthetic":
        synthetic(sys.argv[2])
    else:
        sys.exit(__doc__)
