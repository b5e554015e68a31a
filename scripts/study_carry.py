#!/usr/bin/env python3
"""Carries a study run in pieces from one machine to the next through the repository.

A study arm trains for hours; a session's machine is new each time and `runs/` is not
committed. `save` copies what `cargo xtask study` needs to continue into a committed folder,
`restore` puts it back into `runs/` on the next machine:

    python3 scripts/study_carry.py save    runs/study-smollm2-135m-epoch study-state/study-smollm2-135m-epoch
    python3 scripts/study_carry.py restore study-state/study-smollm2-135m-epoch runs/study-smollm2-135m-epoch

What is carried, per arm folder: every top-level file (metrics.jsonl, summary.json, the
evaluations, the plots), the adapter that the evaluation will use (`best-adapter/`, else
`adapter/`), and, while the arm is unfinished, its newest checkpoint (the folder the
`checkpoint` pointer names, and the pointer). Older checkpoints and the last-step `adapter/`
of an unfinished arm are left behind: the checkpoint holds that adapter.

`save` replaces the destination only once the new copy is complete (a temporary folder,
then renames), and `restore` refuses to write over a run folder that already exists.
"""

import json
import os
import shutil
import sys


def finished(arm: str) -> bool:
    path = os.path.join(arm, "summary.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        s = json.load(f)
    return s.get("steps", 0) >= s.get("total_steps", 1)


def copy_arm(src: str, dst: str) -> None:
    os.makedirs(dst)
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if name.startswith("."):
            continue  # locks and temporary folders
        if os.path.isfile(path) and not os.path.islink(path):
            shutil.copy2(path, os.path.join(dst, name))
    for name in ("best-adapter", "adapter"):
        if os.path.isfile(os.path.join(src, name, "adapter_config.json")):
            if name == "adapter" and not finished(src) and os.path.islink(os.path.join(src, "checkpoint")):
                break  # the checkpoint carries the newest adapter
            shutil.copytree(os.path.join(src, name), os.path.join(dst, name))
            break
    pointer = os.path.join(src, "checkpoint")
    if not finished(src) and os.path.islink(pointer):
        target = os.readlink(pointer)
        shutil.copytree(os.path.join(src, target), os.path.join(dst, os.path.basename(target)))
        os.symlink(os.path.basename(target), os.path.join(dst, "checkpoint"))


def save(runs: str, state: str) -> None:
    if not os.path.isdir(runs):
        sys.exit(f"study_carry: {runs}: no such study folder")
    tmp = state.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name in sorted(os.listdir(runs)):
        path = os.path.join(runs, name)
        if name.startswith(".") or ".old-" in name:
            continue
        if os.path.isdir(path):
            copy_arm(path, os.path.join(tmp, name))
        elif os.path.isfile(path):
            shutil.copy2(path, os.path.join(tmp, name))
    old = state.rstrip("/") + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(state):
        os.rename(state, old)
    os.rename(tmp, state)
    shutil.rmtree(old, ignore_errors=True)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(state) for f in fs)
    print(f"study_carry: saved {runs} -> {state} ({total / 1e6:.1f} MB)")


def restore(state: str, runs: str) -> None:
    if not os.path.isdir(state):
        sys.exit(f"study_carry: {state}: nothing to restore")
    if os.path.exists(runs):
        sys.exit(f"study_carry: {runs} exists; refusing to write over it (move it aside first)")
    shutil.copytree(state, runs, symlinks=True)
    print(f"study_carry: restored {state} -> {runs}")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("save", "restore"):
        sys.exit(__doc__)
    (save if sys.argv[1] == "save" else restore)(sys.argv[2], sys.argv[3])
