"""CUDA: training and hard-routed inference on a GPU. Skipped, with the reason shown, where
torch sees no CUDA device (as on the project's CPU CI)."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.preprocessing import StandardScaler

from fffsklearn import FFFClassifier, inference
from fffsklearn._testing import random_arrays

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU; torch sees none on this machine"
)


@pytest.fixture(autouse=True)
def no_tf32():
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


@pytest.mark.parametrize("seed", range(50))
def test_cuda_and_cpu_route_every_row_to_the_same_leaf(seed):
    rng = np.random.default_rng(seed)
    depth, d = int(rng.integers(0, 11)), int(rng.choice([3, 64, 784]))
    arrays = random_arrays(rng, depth, d, int(rng.choice([4, 16])), int(rng.choice([0, 16])),
                           int(rng.integers(1, 11)), ("relu", "tanh", "logistic", "identity")[seed % 4])
    X = rng.standard_normal((5000, d)).astype(np.float32)
    ref_out, ref_leaves = inference.hard_forward(arrays, X, backend="reference")
    out, leaves = inference.hard_forward(arrays, X, backend="torch", device="cuda")
    np.testing.assert_array_equal(leaves, ref_leaves)
    np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=1e-4 * max(1, np.abs(ref_out).max()))


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(X).astype(np.float32), y


def test_cuda_training_predicts_on_cuda_and_on_cpu_with_the_same_leaves(digits):
    X, y = digits
    model = FFFClassifier(depth=4, max_iter=20, device="cuda", random_state=0).fit(X, y)
    assert model.device_.startswith("cuda")
    assert model.score(X, y) > 0.9
    on_gpu = model.apply(X), model.predict_proba(X)
    loaded = pickle.loads(pickle.dumps(model)).set_params(device="cpu")
    np.testing.assert_array_equal(loaded.apply(X), on_gpu[0])
    np.testing.assert_allclose(loaded.predict_proba(X), on_gpu[1], rtol=1e-4, atol=1e-6)


def test_same_random_state_same_gpu_same_model(digits):
    X, y = digits
    a = FFFClassifier(depth=3, max_iter=5, device="cuda", random_state=0).fit(X, y)
    b = FFFClassifier(depth=3, max_iter=5, device="cuda", random_state=0).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
