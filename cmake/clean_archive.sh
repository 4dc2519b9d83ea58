#!/bin/sh
# clean_archive.sh ARCHIVE LD OBJCOPY NM AR OBJECT... - rewrites ARCHIVE as one
# relocatable object made of OBJECTs in which every defined global symbol but
# the public API (bp_ followed by a lower-case letter) is made local: the
# library's internal bp__ functions and BLAKE3's symbols can then clash with
# nothing in the program that links it, as with the shared library's version
# script.
set -eu
archive=$1 ld=$2 objcopy=$3 nm=$4 ar=$5
shift 5
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$ld" -r -o "$work/batpak.o" "$@"
"$nm" -g --defined-only "$work/batpak.o" | awk '{ print $NF }' | grep -v '^bp_[a-z]' > "$work/local.txt" || true
"$objcopy" --localize-symbols="$work/local.txt" "$work/batpak.o"
rm -f "$archive"
"$ar" rcs "$archive" "$work/batpak.o"
