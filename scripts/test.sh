#!/usr/bin/env bash
# Installs fffsklearn with its test extras (CPU torch, the compiled kernel required) and runs
# the whole test suite (the fast default suite alone: python -m pytest -m "not slow"), the
# kernel's tests under AddressSanitizer and UBSan, then the quickstart example and the quick
# accuracy benchmark as smoke tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "torch==2.13.0" || python -m pip install --quiet torch
FFFSKLEARN_REQUIRE_KERNEL=1 python -m pip install --quiet --no-build-isolation -e ".[tests,progress,benchmark]" \
  || FFFSKLEARN_REQUIRE_KERNEL=1 python -m pip install --quiet -e ".[tests,progress,benchmark]"
python -m pytest -p no:cacheprovider
bash scripts/sanitize.sh
python examples/quickstart.py
(cd benchmarks && python bench_accuracy.py --quick)
