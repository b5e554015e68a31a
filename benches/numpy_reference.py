#!/usr/bin/env python3
"""numpy (OpenBLAS) reference for the criterion benchmarks in benches/benches/.

Times, in float32 on all cores:
  gemm/{m}x{k}x{n}             C = X @ W.T into a preallocated C (X [m, k], W [n, k]),
                               as benches/benches/gemm.rs does with echo's kernel;
  lora_fwd_bwd/{N}x{in}x{out}_r{r}
                               the LoRA linear's forward and backward as plain numpy matmuls,
                               the same eight GEMMs echo's fused node runs (W frozen: no dW).

Prints one JSON line per benchmark on stdout:
  {"name": ..., "gflops": ..., "ms": ..., "flops": ..., "iters": ...}
with ms the mean time of one call, and first one line {"blas": ...} saying which BLAS numpy
runs and how (library, version, the core kernel it picked at run time, threads).
The names and FLOP counts are those of benches/src/lib.rs, so `cargo xtask bench` can put
the two side by side.

Run it from the venv that `cargo xtask bench` creates (.venv-bench, numpy only):
  .venv-bench/bin/python benches/numpy_reference.py [--quick]
With --openblas-path it only prints where numpy's OpenBLAS library is, for the paired run
(src/bin/gemm_paired.rs) that calls the same library from Rust.
"""

import argparse
import ctypes
import glob
import json
import os
import sys
import time

# OPENBLAS_CORETYPE forces a kernel family and OPENBLAS_L2_SIZE overrides the cache size
# OpenBLAS blocks for; either makes the comparison one against a hand-tuned OpenBLAS rather
# than the stock one. OpenBLAS reads them when it is loaded, so drop them before numpy is
# imported (`cargo xtask bench` already removes them from this process's environment).
_DROPPED = {k: os.environ.pop(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}

import numpy as np  # noqa: E402  (after the environment is cleaned)

TOKENS = 1024
RANK = 32
SCALE = np.float32(2.0)
GEMM_SHAPES = [(TOKENS, 576, 1536), (TOKENS, 1536, 576)]  # (m, k, n)
LORA_SHAPES = [(TOKENS, 576, 1536, RANK), (TOKENS, 1536, 576, RANK)]  # (N, in, out, r)


def openblas_library_paths():
    """The OpenBLAS shared libraries bundled with numpy's wheel (numpy.libs/), if any."""
    libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    return [os.path.realpath(p) for p in sorted(glob.glob(os.path.join(libs, "*openblas*.so*")))]


def openblas_runtime():
    """Core kernel and thread count of the OpenBLAS numpy loaded, via its exported C API
    (scipy-openblas wheels prefix the symbols). Empty when the library is not found."""
    for path in openblas_library_paths():
        try:
            lib = ctypes.CDLL(path)  # already loaded by numpy: same handle, no re-init
        except OSError:
            continue
        for prefix in ("scipy_openblas_", "openblas_"):
            for suffix in ("64_", ""):
                try:
                    corename = getattr(lib, f"{prefix}get_corename{suffix}")
                    threads = getattr(lib, f"{prefix}get_num_threads{suffix}")
                    config = getattr(lib, f"{prefix}get_config{suffix}")
                except AttributeError:
                    continue
                corename.restype = ctypes.c_char_p
                config.restype = ctypes.c_char_p
                threads.restype = ctypes.c_int
                return {
                    "core": corename().decode(),
                    "threads": threads(),
                    "config": config().decode().strip(),
                }
    return {}


def blas_info():
    info = {"numpy": np.__version__}
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = f'{deps.get("name")} {deps.get("version")}'
    except Exception as e:  # older numpy: no mode="dicts"
        info["blas"] = f"unknown ({e})"
    info.update(openblas_runtime())
    try:
        from threadpoolctl import threadpool_info  # only if already installed

        info["threadpoolctl"] = [
            {k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for p in threadpool_info()
        ]
    except ImportError:
        pass
    info["cpu_count"] = os.cpu_count()
    if _DROPPED:
        info["unset_env"] = _DROPPED
    return info


def timeit(fn, warmup_s, measure_s, min_iters=10):
    """Mean seconds per call: `warmup_s` of untimed calls, then calls until `measure_s` has
    passed and at least `min_iters` were timed."""
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < measure_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sum(times) / len(times), len(times)


def report(name, flops, mean_s, iters):
    print(
        json.dumps(
            {"name": name, "gflops": round(flops / mean_s / 1e9, 2), "ms": round(mean_s * 1e3, 3), "flops": flops, "iters": iters}
        ),
        flush=True,
    )


def bench_gemm(rng, warmup_s, measure_s):
    for m, k, n in GEMM_SHAPES:
        x = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((n, k), dtype=np.float32) / np.float32(np.sqrt(k))
        c = np.empty((m, n), dtype=np.float32)
        wt = w.T  # a transposed view: BLAS reads it with trans='T', no copy

        def step():
            np.matmul(x, wt, out=c)

        mean, iters = timeit(step, warmup_s, measure_s)
        report(f"gemm/{m}x{k}x{n}", 2 * m * n * k, mean, iters)


def lora_flops(n, i, o, r):
    forward = 2 * n * i * o + 2 * n * i * r + 2 * n * r * o
    backward = 2 * n * o * i + 2 * o * n * r + 2 * n * o * r + 2 * r * n * i + 2 * n * r * i
    return forward + backward


def bench_lora(rng, warmup_s, measure_s):
    for n, d_in, d_out, r in LORA_SHAPES:
        x = rng.standard_normal((n, d_in), dtype=np.float32)
        w = rng.standard_normal((d_out, d_in), dtype=np.float32) / np.float32(np.sqrt(d_in))
        a = rng.standard_normal((r, d_in), dtype=np.float32) / np.float32(np.sqrt(d_in))
        b = rng.standard_normal((d_out, r), dtype=np.float32) / np.float32(np.sqrt(r))
        dy = rng.standard_normal((n, d_out), dtype=np.float32)

        def step():
            # forward: y = x W^T + s (x A^T) B^T; z = x A^T is kept for backward
            y = x @ w.T
            z = x @ a.T
            y += (SCALE * z) @ b.T
            # backward (W frozen: no dW)
            db = SCALE * (dy.T @ z)
            dz = SCALE * (dy @ b)
            da = dz.T @ x
            dx = dy @ w
            dx += dz @ a
            return y, dx, da, db

        mean, iters = timeit(step, warmup_s, measure_s)
        report(f"lora_fwd_bwd/{n}x{d_in}x{d_out}_r{r}", lora_flops(n, d_in, d_out, r), mean, iters)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 s warm-up and 3 s of measurement per benchmark")
    p.add_argument("--warm-up-time", type=float, default=2.0, help="seconds of untimed calls (default 2)")
    p.add_argument("--measurement-time", type=float, default=6.0, help="seconds of timed calls (default 6)")
    p.add_argument(
        "--openblas-path",
        action="store_true",
        help="print {\"openblas_path\": ...}, the OpenBLAS library numpy loads (for gemm_paired), and exit",
    )
    args = p.parse_args()
    if args.openblas_path:
        paths = openblas_library_paths()
        if not paths:
            print("numpy_reference.py: numpy bundles no OpenBLAS library (numpy.libs/*openblas*.so)", file=sys.stderr)
            return 1
        print(json.dumps({"openblas_path": paths[0]}), flush=True)
        return 0
    warmup_s, measure_s = (1.0, 3.0) if args.quick else (args.warm_up_time, args.measurement_time)

    print(json.dumps({"blas": blas_info()}), flush=True)
    rng = np.random.default_rng(7)
    bench_gemm(rng, warmup_s, measure_s)
    bench_lora(rng, warmup_s, measure_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
