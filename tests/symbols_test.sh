#!/bin/sh
# symbols_test.sh NM STATIC SHARED - both libraries define no global symbol but
# the bp_ API (the static one through cmake/clean_archive.sh, the shared one
# through src/batpak.map); prints what they export.
set -eu
nm=$1 static=$2 shared=$3
fail=0
for lib in "$static" "$shared"; do
  if [ "$lib" = "$shared" ]; then flags="-D --defined-only"; else flags="-g --defined-only"; fi
  # shellcheck disable=SC2086
  other=$("$nm" $flags "$lib" | awk 'NF >= 3 { print $NF }' | grep -v '^bp_[a-z]' || true)
  # shellcheck disable=SC2086
  count=$("$nm" $flags "$lib" | awk 'NF >= 3 { print $NF }' | grep -c '^bp_[a-z]' || true)
  echo "$(basename "$lib"): $count bp_ symbols"
  if [ -n "$other" ]; then
    echo "$(basename "$lib") also exports:"; echo "$other" | head -20
    fail=1
  fi
done
exit $fail
