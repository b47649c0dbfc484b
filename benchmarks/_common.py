"""Helpers shared by the benchmarks: timing, thread reporting, models built from arrays."""

import time

import numpy as np
import torch
from threadpoolctl import threadpool_info

from fffsklearn import FFFClassifier
from fffsklearn._testing import random_arrays


def best_time(fn, repeat=5, min_time=0.05):
    """Best wall time of ``fn()`` over ``repeat`` runs, each looping until ``min_time``."""
    fn()  # warm-up
    best = np.inf
    for _ in range(repeat):
        loops, start = 0, time.perf_counter()
        while True:
            fn()
            loops += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        best = min(best, elapsed / loops)
    return best


def interleaved_best_times(fns, rounds=5, min_time=0.05):
    """Best time of each function, measured in alternating rounds so that a burst of load on
    this shared machine slows every contender rather than only the one it coincides with."""
    best = [np.inf] * len(fns)
    for fn in fns:
        fn()  # warm-up
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], best_time(fn, repeat=1, min_time=min_time))
    return best


def gemm_flops_per_second(size=2048):
    """float32 GEMM rate of NumPy's BLAS on this machine, measured now."""
    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    seconds = best_time(lambda: a @ a, repeat=3, min_time=0.2)
    return 2 * size**3 / seconds


def describe_threads():
    blas = ", ".join(f"{i['internal_api']}:{i['num_threads']}" for i in threadpool_info())
    return f"torch threads {torch.get_num_threads()}; BLAS/OpenMP pools {blas}"


def routed_arrays(X, depth, leaf_width, master_leaf_width, n_outputs, seed=0):
    """Random FFF arrays whose node hyperplanes pass through rows of ``X``, so that real rows
    spread over the leaves."""
    rng = np.random.default_rng(seed)
    return random_arrays(
        rng, depth, X.shape[1], leaf_width, master_leaf_width, n_outputs, anchors=X
    )


def classifier_from_arrays(arrays, n_jobs=None):
    """A fitted FFFClassifier around ``arrays``, as fit would leave it (for timing predict)."""
    rows = np.zeros((1, arrays.n_features), dtype=np.float32)
    return FFFClassifier.from_network(
        arrays, rows, classes=np.arange(arrays.n_outputs), n_jobs=n_jobs
    )


def leaf_usage_entropy(leaves, n_leaves):
    """Entropy of the leaf histogram over log(n_leaves): 1 means perfectly even use."""
    if n_leaves == 1:
        return 1.0
    p = np.bincount(leaves, minlength=n_leaves) / len(leaves)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / np.log(n_leaves))
