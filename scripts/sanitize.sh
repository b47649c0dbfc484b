#!/usr/bin/env bash
# Runs the tests of the compiled code (the inference kernel, the training kernel) with the C
# extensions built under AddressSanitizer and UndefinedBehaviorSanitizer (out-of-bounds reads and writes, use after free, misaligned or
# overflowing arithmetic abort the run). Works on a copy of the checkout; the installed
# package is left alone. Usage: bash scripts/sanitize.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git ls-files -z | xargs -0 cp --parents -t "$work"
cd "$work"
CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -O1 -g" \
LDFLAGS="-fsanitize=address,undefined" \
  python setup.py -q build_ext --inplace
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
# CPython and torch keep memory until exit by design: leaks are not what this run looks for.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
PYTHONPATH="$work" python -m pytest -p no:cacheprovider -q tests/test_inference.py tests/test_network.py \
  tests/test_training.py "$@"
