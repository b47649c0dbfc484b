#!/usr/bin/env bash
# Installs fffsklearn with its test extras (CPU torch, the compiled kernel required) and runs
# the default test suite, then the quick benchmarks and the quickstart example as smoke tests.
# Slow tests (large parity sweeps): python -m pytest -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "torch==2.13.0" || python -m pip install --quiet torch
FFFSKLEARN_REQUIRE_KERNEL=1 python -m pip install --quiet --no-build-isolation -e ".[tests,progress,benchmark]" \
  || FFFSKLEARN_REQUIRE_KERNEL=1 python -m pip install --quiet -e ".[tests,progress,benchmark]"
python -m pytest -m "not slow" -p no:cacheprovider
python examples/quickstart.py
(cd benchmarks && python bench_accuracy.py --quick)
