#!/usr/bin/env bash
# Builds the Python venv that the llama.cpp cross-check uses (xtask/tests/gguf_llama_cpp.rs,
# scripts/llama_cpp_check.py): llama-cpp-python from PyPI, which compiles its bundled
# llama.cpp from source (several minutes on one core; nothing prebuilt is downloaded).
#
# Where: $ECHO_LLAMA_CPP_VENV, else <echo-lora cache>/llama-cpp-venv with the cache folder
# found as echo_data::user_cache_root does ($ECHO_LORA_CACHE, $XDG_CACHE_HOME/echo-lora,
# ~/.cache/echo-lora). The test looks in the same place.
#
# CMAKE_BUILD_PARALLEL_LEVEL defaults to 1 so the compile leaves the other cores alone; set
# it higher on a machine of your own. The version is pinned so the numbers in docs/export.md
# can be reproduced.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
if [[ -n "${ECHO_LLAMA_CPP_VENV:-}" ]]; then
    venv="$ECHO_LLAMA_CPP_VENV"
elif [[ -n "${ECHO_LORA_CACHE:-}" ]]; then
    venv="$ECHO_LORA_CACHE/llama-cpp-venv"
elif [[ -n "${XDG_CACHE_HOME:-}" ]]; then
    venv="$XDG_CACHE_HOME/echo-lora/llama-cpp-venv"
else
    venv="$HOME/.cache/echo-lora/llama-cpp-venv"
fi

python="${PYTHON:-python3}"
echo "building the llama.cpp venv in $venv (llama-cpp-python $LLAMA_CPP_PYTHON_VERSION)"
# Built under a temporary name and renamed at the end, so the test never sees a half-built
# venv (it checks only that the venv's python exists).
tmp="$venv.partial"
rm -rf "$tmp"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$tmp"
"$tmp/bin/python" -m pip install --quiet --upgrade pip
# CPU only, portable flags: the check is about file format and numerics, not speed.
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-1}" \
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}" \
    "$tmp/bin/python" -m pip install --no-cache-dir "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
"$tmp/bin/python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
# A venv's scripts name its folder, so it cannot simply be renamed: rebuild in place only if
# the check passed (pip's console scripts are not used by the check, only bin/python, whose
# pyvenv.cfg holds no path).
rm -rf "$venv"
mv "$tmp" "$venv"
"$venv/bin/python" -c "import llama_cpp; print('ready:', '$venv')"
