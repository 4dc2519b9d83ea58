#!/usr/bin/env bash
# Runs every libFuzzer target in DIR for SECONDS on its corpus (fuzz/corpus/<name>),
# writing new inputs to a scratch copy so that the checked-in corpus stays small.
set -euo pipefail
dir=${1:?usage: run-fuzzers.sh BUILD_FUZZ_DIR SECONDS}
seconds=${2:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
for target in fuzz_msgpack fuzz_frame fuzz_checkpoint fuzz_json fuzz_store fuzz_import; do
  corpus="$root/fuzz/corpus/${target#fuzz_}"
  work=$(mktemp -d)
  cp -r "$corpus"/. "$work"/
  echo "fuzz: $target for ${seconds}s on $(ls "$corpus" | wc -l) seeds"
  status=0
  "$dir/$target" -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$work/" "$work" \
    > "$work.log" 2>&1 || status=$?
  grep -E "stat::number_of_executed_units|stat::new_units_added|ERROR|SUMMARY" "$work.log" || true
  if [[ $status -ne 0 ]] || ls "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-* >/dev/null 2>&1; then
    tail -30 "$work.log" >&2
    echo "fuzz: $target found a failure; inputs kept in $work" >&2
    exit 1
  fi
  rm -rf "$work" "$work.log"
done
