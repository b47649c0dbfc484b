"""Helpers shared by the benchmarks: timing, thread reporting, models built from arrays."""

import time

import numpy as np
import torch
from threadpoolctl import threadpool_info

from fffsklearn import FFFArrays, FFFClassifier


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


def gemm_flops_per_second(size=2048):
    """float32 GEMM rate of NumPy's BLAS on this machine, measured now."""
    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    seconds = best_time(lambda: a @ a, repeat=3, min_time=0.2)
    return 2 * size**3 / seconds


def describe_threads():
    blas = ", ".join(f"{i['internal_api']}:{i['num_threads']}" for i in threadpool_info())
    return f"torch threads {torch.get_num_threads()}; BLAS/OpenMP pools {blas}"


def routed_arrays(X, depth, leaf_width, master_leaf_width, n_outputs, seed=0):
    """Random FFF arrays whose node hyperplanes pass through rows of ``X``, as trained trees'
    do, so that real rows spread over the leaves."""
    rng = np.random.default_rng(seed)
    n, d = X.shape
    n_leaves = 2**depth
    node_weights = rng.standard_normal((n_leaves - 1, d)).astype(np.float32) / np.sqrt(d)
    anchors = X[rng.integers(0, n, n_leaves - 1)]
    node_biases = -np.einsum("ij,ij->i", node_weights, anchors).astype(np.float32)

    def weights(*shape):
        return (rng.standard_normal(shape) / np.sqrt(shape[-2] if len(shape) > 1 else 1)).astype(
            np.float32
        )

    return FFFArrays(
        depth,
        "relu",
        node_weights=node_weights,
        node_biases=node_biases,
        leaf_hidden_weights=weights(n_leaves, d, leaf_width),
        leaf_hidden_biases=weights(n_leaves, leaf_width),
        leaf_output_weights=weights(n_leaves, leaf_width, n_outputs),
        leaf_output_biases=weights(n_leaves, n_outputs),
        master_hidden_weights=weights(d, master_leaf_width),
        master_hidden_biases=weights(master_leaf_width),
        master_output_weights=weights(master_leaf_width, n_outputs),
        master_output_biases=weights(n_outputs),
    )


def classifier_from_arrays(arrays, n_jobs=None):
    """A fitted FFFClassifier around ``arrays``, as fit would leave it (for timing predict)."""
    model = FFFClassifier(
        depth=arrays.depth,
        leaf_width=arrays.leaf_width,
        master_leaf_width=arrays.master_leaf_width,
        n_jobs=n_jobs,
    )
    model.arrays_ = arrays
    model.classes_ = np.arange(arrays.n_outputs)
    model.n_features_in_ = arrays.n_features
    return model


def leaf_usage_entropy(leaves, n_leaves):
    """Entropy of the leaf histogram over log(n_leaves): 1 means perfectly even use."""
    if n_leaves == 1:
        return 1.0
    p = np.bincount(leaves, minlength=n_leaves) / len(leaves)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / np.log(n_leaves))
