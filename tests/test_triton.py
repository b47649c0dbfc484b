"""The Triton backend against the reference: on the GPU where there is one, else under
Triton's interpreter (tests/conftest.py sets ``TRITON_INTERPRET=1`` without a GPU), on models
small enough for it. On a GPU, tests/test_inference.py runs its larger cases through it too."""

import numpy as np
import pytest

from fffsklearn import inference
from fffsklearn._arrays import ACTIVATIONS
from fffsklearn._testing import random_arrays

from .test_inference import TRITON_DEVICE, _replace, assert_backends_agree

needs_triton = pytest.mark.skipif(
    TRITON_DEVICE is None, reason="needs Triton (pip install triton; torch's CUDA builds have it)"
)


def _small_case(seed):
    rng = np.random.default_rng(seed)
    depth = int(rng.integers(0, 8))
    n_features = int(rng.choice([1, 2, 7, 31, 64, 130, 200]))
    arrays = random_arrays(rng, depth, n_features, int(rng.choice([1, 3, 16, 17, 33])),
                           int(rng.choice([0, 5, 16])), int(rng.integers(1, 12)),
                           ACTIVATIONS[seed % len(ACTIVATIONS)])
    n_rows = int(rng.choice([1, 5, 33, 200]))
    X = rng.standard_normal((n_rows, n_features)) * rng.choice([1e-3, 1.0, 50.0])
    return arrays, np.asarray(X, dtype=np.float32 if seed % 2 else np.float64)


@needs_triton
@pytest.mark.parametrize("seed", range(24))
def test_random_models_agree(seed):
    arrays, X = _small_case(seed)
    assert_backends_agree(arrays, X, triton=True)


@needs_triton
def test_a_float32_logit_of_the_wrong_sign_is_recomputed_in_float64():
    # 1e8 + 5 - 1e8 - 6 is -1, but 2 in float32 (1e8 + 5 rounds to 1e8 + 8): the first row's
    # float32 logit says right, and only the float64 sum, which the error bound calls for,
    # says left.
    rng = np.random.default_rng(0)
    arrays = random_arrays(rng, 1, 3, 4, 0, 2, "identity")
    arrays = _replace(arrays, node_weights=np.array([[1, 1, -1]], np.float32),
                      node_biases=np.array([-6], np.float32))
    X = np.array([[1e8, 5, 1e8], [0, 7, 0]], np.float32)
    assert (np.float32(1e8) + np.float32(5)) - np.float32(1e8) - np.float32(6) > 0
    _, leaves = inference.hard_forward(arrays, X, backend="triton", device=TRITON_DEVICE)
    np.testing.assert_array_equal(leaves, [0, 1])
    np.testing.assert_array_equal(leaves, inference.apply(arrays, X, backend="reference"))


@needs_triton
@pytest.mark.parametrize("route_rows, resident, leaf_rows, block_k",
                         [(8, 0, 16, 16), (32, 1024, 128, 64)])
def test_launch_settings_do_not_change_the_results(monkeypatch, route_rows, resident,
                                                   leaf_rows, block_k):
    # benchmarks/bench_gpu.py --kernels times other settings than the defaults; a row
    # wider than RESIDENT_MAX_FEATURES is routed block by block.
    from fffsklearn.inference import _triton

    for settings, values in ((_triton.ROUTE_LAUNCH, dict(BLOCK_ROWS=route_rows, BLOCK_K=block_k,
                                                         RESIDENT_MAX_FEATURES=resident)),
                             (_triton.LEAF_LAUNCH, dict(BLOCK_ROWS=leaf_rows, BLOCK_K=block_k))):
        for name, value in values.items():
            monkeypatch.setitem(settings, name, value)
    rng = np.random.default_rng(1)
    arrays = random_arrays(rng, 5, 100, 16, 16, 10, "relu")
    assert_backends_agree(arrays, rng.standard_normal((300, 100)).astype(np.float32),
                          triton=True)


def test_asking_for_triton_without_it_names_what_to_install(monkeypatch):
    monkeypatch.setattr(inference, "triton_available", lambda: False)
    arrays = random_arrays(np.random.default_rng(0), 1, 3, 4, 0, 2)
    with pytest.raises(ValueError, match="pip install triton"):
        inference.hard_forward(arrays, np.zeros((1, 3), np.float32), backend="triton")
