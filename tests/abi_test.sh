#!/bin/sh
# abi_test.sh ABIDIFF BASELINE LIBRARY INCLUDE_DIR (unused) - compares the shared
# library's ABI with the baseline recorded for its SONAME (abi/, written by
# abidw at the release): an incompatible change fails (it would need a new
# SONAME, docs/ABI.md); compatible ones (functions added) are printed.
set -u
abidiff=$1 base=$2 lib=$3 inc=$4
if ! command -v "$abidiff" >/dev/null 2>&1; then
  echo "abi_test: $abidiff not found (apt-get install abigail-tools)" >&2
  exit 1
fi
soname=$(objdump -p "$lib" | awk '/SONAME/ { print $2 }')
case "$base" in
  */"$soname".abi) ;;
  *) echo "abi_test: the library's SONAME is $soname, the baseline is $base: record a baseline for it" >&2; exit 1 ;;
esac
suppr="$(dirname "$base")/opaque.suppr"
out=$("$abidiff" --suppressions "$suppr" "$base" "$lib")
rc=$?
echo "$out"
if [ $((rc & 3)) -ne 0 ]; then
  echo "abi_test: abidiff failed with status $rc" >&2
  exit 1
fi
# Functions or variables removed or changed (a public struct's layout
# included, through the functions that take it): a break. Added ones: fine.
broken=$(echo "$out" | grep -E '^(Functions|Variables) changes summary' | grep -vE ' 0 Removed, 0 Changed' || true)
if [ $((rc & 8)) -ne 0 ] || [ -n "$broken" ]; then
  echo "abi_test: incompatible change to the ABI of $soname (docs/ABI.md): use reserved space, or a new SONAME" >&2
  exit 1
fi
echo "abi_test: $soname is compatible with $base"
exit 0
