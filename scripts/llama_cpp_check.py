#!/usr/bin/env python3
"""Runs a GGUF file through llama.cpp (llama-cpp-python, from scripts/llama_cpp_venv.sh) and
writes what it computed to JSON, for xtask/tests/gguf_llama_cpp.rs to compare with ours:

* "logits": llama.cpp's logits at every position of --tokens (one forward over the whole
  sequence, positions 0..T-1), a list of T lists of n_vocab floats;
* "tokenized": llama.cpp's token ids of each text in --texts (a JSON list of strings), with
  no BOS added and special tokens matched whole (as our `encode(text, false)`).

Usage: llama_cpp_check.py MODEL.gguf --out OUT.json [--tokens 1,2,3] [--texts TEXTS.json]
                          [--lora ADAPTER.gguf]
With no --tokens only the vocabulary is loaded (vocab_only).
"""

import argparse
import json

import llama_cpp


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gguf")
    p.add_argument("--out", required=True)
    p.add_argument("--tokens", default="", help="comma-separated token ids to evaluate")
    p.add_argument("--texts", help="JSON file: a list of strings to tokenise")
    p.add_argument("--lora", help="a llama.cpp LoRA GGUF applied on top of the model")
    a = p.parse_args()

    ids = [int(x) for x in a.tokens.split(",") if x.strip()]
    llm = llama_cpp.Llama(
        model_path=a.gguf,
        vocab_only=not ids,
        # A small context: the check evaluates one short sequence; llama.cpp rounds n_ctx up.
        n_ctx=max(64, len(ids)),
        n_batch=max(64, len(ids)),
        n_ubatch=max(64, len(ids)),
        logits_all=True,
        n_threads=1,
        lora_path=a.lora,
        verbose=False,
    )
    out = {"n_vocab": llm.n_vocab(), "tokens": ids, "llama_cpp_version": llama_cpp.__version__}
    if ids:
        llm.eval(ids)
        out["logits"] = [[float(x) for x in row] for row in llm.scores[: len(ids)]]
    texts = json.load(open(a.texts, encoding="utf-8")) if a.texts else []
    out["tokenized"] = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
