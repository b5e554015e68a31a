#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ and runs each for SECONDS (default 10) over its
# committed corpus, under a 2 GiB memory limit; a crash, a leak of the limit or a timeout fails
# the script, and the input that did it is left in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS] [TARGET ...]      every target when none is named
#   FUZZ_MERGE=1 scripts/fuzz.sh 1800 gguf      30 minutes, then minimise the corpus in place
#   FUZZ_BUILD_ONLY=1 scripts/fuzz.sh            build the targets, run nothing
#   FUZZ_KEEP_GOING=1 scripts/fuzz.sh 1800 gguf  go on past a failing input (libFuzzer fork mode),
#                                                for long runs; every failing input is kept
#
# Each run appends a line to fuzz/hours.tsv (date, target, seconds, executions, failures), the
# record of the fuzzing time spent that docs/reliability.md sums up.
#
# It needs no nightly toolchain and no cargo-fuzz: RUSTC_BOOTSTRAP=1 lets the stable compiler
# take the sanitizer flags cargo-fuzz would pass (coverage counters, compare tracing,
# AddressSanitizer), and libfuzzer-sys builds libFuzzer itself with the system C++ compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(safetensors gguf model_config tokenizer records run_config peft checkpoint)
fi
triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks \
-Zsanitizer=address"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}
echo "== building the fuzz targets ($triple)"
cargo build --release --manifest-path fuzz/Cargo.toml --target "$triple" --bins
bin=fuzz/target/$triple/release
if [ "${FUZZ_BUILD_ONLY:-0}" = 1 ]; then
  exit 0
fi
status=0
for t in "${targets[@]}"; do
  corpus=fuzz/corpus/$t
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  echo "== $t: ${secs}s over $(ls "$corpus" | wc -l) corpus inputs"
  keep_going=()
  if [ "${FUZZ_KEEP_GOING:-0}" = 1 ]; then
    keep_going=(-fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1)
  fi
  before=$(ls "fuzz/artifacts/$t" | grep -cE '^(crash|oom|timeout|leak)-' || true)
  start=$(date +%s)
  ok=1
  "$bin/$t" "$corpus" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=30 "${keep_going[@]}" \
      -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 2> "fuzz/artifacts/$t/log.txt" || ok=0
  spent=$(( $(date +%s) - start ))
  after=$(ls "fuzz/artifacts/$t" | grep -cE '^(crash|oom|timeout|leak)-' || true)
  # Fork mode prints no final stats; its progress lines carry the count. (`|| true`: a grep
  # that matches nothing must not end the script under `set -e`.)
  execs=$(grep -E "^stat::number_of_executed_units" "fuzz/artifacts/$t/log.txt" | awk '{s+=$2} END {print s+0}' || true)
  if [ "${FUZZ_KEEP_GOING:-0}" = 1 ]; then
    execs=$(grep -oE "^#[0-9]+" "fuzz/artifacts/$t/log.txt" | tail -n 1 | tr -d '#' || true)
  fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$spent" "${execs:-0}" "$((after - before))" >> fuzz/hours.tsv
  if [ $ok = 0 ] || [ "$after" -gt "$before" ]; then
    echo "!! $t failed: the input is in fuzz/artifacts/$t/; the end of its log:"
    tail -n 40 "fuzz/artifacts/$t/log.txt"
    status=1
    continue
  fi
  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|cov: " "fuzz/artifacts/$t/log.txt" | tail -n 3
  if [ "${FUZZ_MERGE:-0}" = 1 ]; then
    rm -rf "$corpus.min" && mkdir "$corpus.min"
    "$bin/$t" -merge=1 -rss_limit_mb=2048 "$corpus.min" "$corpus" 2>> "fuzz/artifacts/$t/log.txt"
    rm -rf "$corpus" && mv "$corpus.min" "$corpus"
    echo "   corpus minimised: $(ls "$corpus" | wc -l) inputs"
  fi
done
exit $status
