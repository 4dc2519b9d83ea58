#!/usr/bin/env bash
# replication_smoke.sh BENCH CLUSTER_SCRIPT DIR - one small run of
# batpak-bench --replication on a three-node cluster started for it; exit 77
# (skipped) where nats-server cannot be started. Numbers are not asserted.
set -euo pipefail
bench=$1 script=$2 dir=$3
rm -rf "$dir"
mkdir -p "$dir"
export BATPAK_CLUSTER_OWNER=$$
if ! urls=$(bash "$script" start "$dir/cluster"); then echo "no cluster: skipped" >&2; exit 77; fi
trap 'bash "$script" stop "$dir/cluster"; rm -rf "$dir"' EXIT
"$bench" --replication "$urls" --json --runs 1 --events 2000 --dir "$dir/data"
