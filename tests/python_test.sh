#!/bin/sh
# python_test.sh PYTHON SOURCE INCLUDE_DIR LIBRARY_DIR WORK - installs the
# Python binding with pip (no index, no build isolation: nothing is
# downloaded) from a copy of SOURCE into WORK, against the library in the
# build tree, and runs its tests.
set -eu
py=$1 src=$2 inc=$3 lib=$4 work=$5
if ! "$py" -c 'import cffi, setuptools' 2>/dev/null; then
  echo "python_test: $py lacks cffi or setuptools (apt-get install python3-cffi python3-setuptools)" >&2
  exit 1
fi
rm -rf "$work"
mkdir -p "$work"
cp -r "$src" "$work/src"
rm -rf "$work/src/build" "$work/src"/*.egg-info
BATPAK_INCLUDE_DIR=$inc BATPAK_LIBRARY_DIR=$lib PIP_NO_INDEX=1 \
  "$py" -m pip install -q --no-build-isolation --no-deps --target "$work/site" "$work/src" 2>&1 |
  grep -v "Running pip as the 'root' user" || true
test -d "$work/site/batpak" || { echo "python_test: pip did not install the binding" >&2; exit 1; }
cd "$work"
PYTHONPATH="$work/site" "$py" -m unittest discover -s "$src/tests" -v
