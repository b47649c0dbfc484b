#!/usr/bin/env bash
# The checks that need a CUDA GPU, for a machine that has one and the test dependencies
# (torch with CUDA, scikit-learn, hypothesis, pytest-xdist): builds the compiled extensions
# in place, then runs the CUDA and Triton tests, benchmarks/bench_gpu.py (with the Triton
# kernels' launch settings) and the fast suite (which then trains on the GPU, the estimators'
# device="auto" finding it).
# CI has no GPU; run this by hand where one is: bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PYTHON" -c "import torch, sklearn; print('torch', torch.__version__, 'sklearn', sklearn.__version__)"
FFFSKLEARN_REQUIRE_KERNEL=1 "$PYTHON" setup.py -q build_ext --inplace || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -m pytest -p no:cacheprovider -q -rs -n "${FAST_SUITE_WORKERS:-8}" tests/test_cuda.py \
  tests/test_triton.py || status=1
(cd benchmarks && "$PYTHON" bench_gpu.py --kernels) || status=1
"$PYTHON" -m pytest -p no:cacheprovider -q -rs -m "not slow" -n "${FAST_SUITE_WORKERS:-8}" \
  tests --ignore=tests/test_cuda.py --ignore=tests/test_triton.py || status=1
exit $status
