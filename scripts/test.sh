#!/usr/bin/env bash
# Installs fffsklearn with its test extras (CPU torch, the compiled kernel required), runs ruff
# and the whole test suite (the fast default suite alone: python -m pytest -m "not slow"), the
# kernel's tests under AddressSanitizer and UBSan, the quick accuracy benchmark, and the docs
# build, which runs every example (the quickstart included).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "torch==2.13.0" || python -m pip install --quiet torch
FFFSKLEARN_REQUIRE_KERNEL=1 python -m pip install --quiet --no-build-isolation -e ".[tests,progress,benchmark,docs]" \
  || FFFSKLEARN_REQUIRE_KERNEL=1 python -m pip install --quiet -e ".[tests,progress,benchmark,docs]"
# The linter (configured in pyproject.toml) over the package, tests, benchmarks and examples.
python -m ruff check .
python -m pytest -p no:cacheprovider
bash scripts/sanitize.sh
(cd benchmarks && python bench_accuracy.py --quick)
# The documentation site, warnings as errors; it runs every example of the gallery.
make -C docs clean html
