#!/usr/bin/env python3
"""Where a training step's GPU time goes, from an `ncu --csv --page raw` log of
`xtask gpu-check --bench-only ... --steps 1 --warmup 1` (the command is in benches/README.md).

Each step begins with the embedding gather (`embed_gather_*`), so the launches from the last
gather on are the measured step; the warm-up step's are the ones before it. Prints the
step's kernel time summed by kernel (cuBLAS's own kernels grouped by precision), to set
against the step's wall time from the un-profiled run: what the sum leaves over is host
overhead and gaps between launches.

    python3 scripts/ncu_step_summary.py ncu-step.csv [--slim OUT.csv]

--slim writes the two steps' launches with only the columns read here (the raw page has
~300 columns: 7 MB).
"""
import argparse
import collections
import csv
import io
import sys

COLUMNS = ["ID", "Kernel Name", "Block Size", "Grid Size", "gpu__time_duration.sum"]


def read_rows(path):
    """The launch rows of an ncu raw-page CSV (its log lines and units row skipped)."""
    lines = [l for l in open(path, encoding="utf-8").read().splitlines() if l and not l.startswith("==")]
    rows = list(csv.DictReader(io.StringIO("\n".join(lines))))
    if rows and not rows[0]["ID"].strip().isdigit():  # the units row of the raw page
        rows = rows[1:]
    return rows


def nanoseconds(row):
    return float(row["gpu__time_duration.sum"].replace(",", ""))


def group(name):
    """cuBLAS/cuBLASLt pick kernels by shape; one line per precision reads better."""
    if "nvjet" in name:
        return "cuBLAS GEMM, bf16 weight (nvjet)"
    if any(s in name for s in ("xmma", "cutlass", "gemv", "splitK", "dgmm", "internal::kernel")):
        return "cuBLAS GEMM/GEMV, f32"
    return name.split("(")[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--slim", help="also write the launch rows with only the columns used here")
    args = ap.parse_args()
    rows = read_rows(args.csv)
    starts = [i for i, r in enumerate(rows) if r["Kernel Name"].startswith("embed_gather")]
    if len(starts) < 2:
        sys.exit(f"{args.csv}: expected the embedding gathers of two steps, found {len(starts)}")
    # Both embedding tables (bf16 ids and the f32 path) may be gathered: a step starts at its
    # first gather, so the measured step starts at the first gather of the last pair.
    if args.slim:
        with open(args.slim, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows[starts[0] :])
    per_step = len(starts) // 2
    warm = rows[starts[0] : starts[per_step]]
    step = rows[starts[per_step] :]
    for label, part in (("warm-up step", warm), ("measured step", step)):
        print(f"{label}: {len(part)} launches, kernel time {sum(map(nanoseconds, part)) / 1e6:.2f} ms")
    total = sum(map(nanoseconds, step))
    by = collections.defaultdict(lambda: [0, 0.0])
    for r in step:
        g = by[group(r["Kernel Name"])]
        g[0] += 1
        g[1] += nanoseconds(r)
    print(f"\nmeasured step by kernel ({total / 1e6:.2f} ms in all):")
    for name, (count, ns) in sorted(by.items(), key=lambda kv: -kv[1][1]):
        print(f"{100 * ns / total:5.1f}%  {ns / 1e6:8.2f} ms  x{count:<4d} {name[:70]}")


if __name__ == "__main__":
    main()
