"""CUDA: training and hard-routed inference on a GPU. Skipped, with the reason shown, where
torch sees no CUDA device (as on the project's CPU CI)."""

import contextlib
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.preprocessing import StandardScaler

from fffsklearn import FFFClassifier, FFFRegressor, inference
from fffsklearn._device import prediction_options
from fffsklearn._testing import random_arrays
from fffsklearn._training import Trainer

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU; torch sees none on this machine"
)


@pytest.fixture(autouse=True)
def no_tf32():
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


CUDA_BACKENDS = ["torch"] + (["triton"] if inference.triton_available() else [])


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("seed", range(50))
def test_cuda_and_cpu_route_every_row_to_the_same_leaf(seed, backend):
    rng = np.random.default_rng(seed)
    depth, d = int(rng.integers(0, 11)), int(rng.choice([3, 64, 784]))
    arrays = random_arrays(rng, depth, d, int(rng.choice([4, 16])), int(rng.choice([0, 16])),
                           int(rng.integers(1, 11)),
                           ("relu", "tanh", "logistic", "identity")[seed % 4])
    X = rng.standard_normal((5000, d)).astype(np.float32)
    ref_out, ref_leaves = inference.hard_forward(arrays, X, backend="reference")
    out, leaves = inference.hard_forward(arrays, X, backend=backend, device="cuda")
    np.testing.assert_array_equal(leaves, ref_leaves)
    np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=1e-4 * max(1, np.abs(ref_out).max()))


def test_predict_on_a_gpu_runs_the_triton_kernels_where_triton_is_installed():
    options = prediction_options("auto", None)
    assert options["device"].type == "cuda"
    assert options["backend"] == ("triton" if inference.triton_available() else "torch")


def test_triton_and_torch_agree_on_a_million_rows():
    # The benchmark's batch: 1,000,000 rows of d=784 at depth 8, X on the device.
    from fffsklearn.inference import _torch, _triton

    if not inference.triton_available():
        pytest.skip("needs Triton (pip install triton)")
    arrays = random_arrays(np.random.default_rng(0), 8, 784, 16, 16, 10)
    X = torch.randn(1_000_000, 784, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    out, leaves = _triton.forward_tensors(arrays, X)
    ref_out, ref_leaves = _torch.forward_tensors(arrays, X)
    assert torch.equal(leaves, ref_leaves)
    assert ((out - ref_out).norm() / ref_out.norm()).item() < 1e-5


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


def _fit(estimator, X, y, **trainer_options):
    with pytest.MonkeyPatch.context() as patch:
        for name, value in trainer_options.items():
            patch.setattr(Trainer, name, value)
        return estimator.fit(X, y)


@pytest.mark.parametrize("hardening_epochs", [0, 3])
def test_graph_replayed_steps_train_the_model_that_single_kernels_train(digits,
                                                                        hardening_epochs):
    # Captured once per phase, learning rate and set of moments, then replayed: the graph
    # must run the same arithmetic as the step launched kernel by kernel, every phase.
    X, y = digits
    params = dict(depth=3, max_iter=6, hardening_epochs=hardening_epochs, batch_size=64,
                  device="cuda", random_state=0)
    graphed = _fit(FFFClassifier(**params), X, y)
    eager = _fit(FFFClassifier(**params), X, y, use_cuda_graphs=False)
    for name in graphed.arrays_.ARRAY_NAMES:
        np.testing.assert_allclose(getattr(graphed.arrays_, name), getattr(eager.arrays_, name),
                                   rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(graphed.loss_curve_, eager.loss_curve_, rtol=1e-5)


def test_rows_on_the_device_give_the_batches_the_host_gives(digits):
    X, y = digits
    params = dict(depth=3, max_iter=4, batch_size=50, device="cuda", random_state=0)
    on_device = _fit(FFFClassifier(**params), X, y, use_cuda_graphs=False)
    no_room = contextlib.nullcontext  # as when X does not fit in the device's memory
    from_host = _fit(FFFClassifier(**params), X, y, use_cuda_graphs=False,
                     rows_on_device=lambda self, X: no_room())
    for name in on_device.arrays_.ARRAY_NAMES:
        np.testing.assert_array_equal(getattr(on_device.arrays_, name),
                                      getattr(from_host.arrays_, name), err_msg=name)


def test_cuda_training_from_a_memmap_with_early_stopping_and_partial_fit(digits, tmp_path):
    X, y = digits
    path = tmp_path / "X.npy"
    np.save(path, X)
    X_map = np.load(path, mmap_mode="r")
    model = FFFClassifier(depth=3, max_iter=8, early_stopping=True, device="cuda",
                          random_state=0).fit(X_map, y)
    assert model.score(X, y) > 0.85
    model.set_params(early_stopping=False)
    for _ in range(3):
        model.partial_fit(X_map, y)
    assert model.n_iter_ > 3 and np.isfinite(model.loss_curve_).all()
    assert model.score(X, y) > 0.85


def test_cuda_regression_matches_its_cpu_predictions(digits):
    X, _ = digits
    y = X[:, :5] @ np.arange(1, 6) + np.sin(X[:, 10])
    model = FFFRegressor(depth=3, max_iter=20, device="cuda", random_state=0).fit(X, y)
    assert model.score(X, y) > 0.9
    on_gpu = model.predict(X)
    np.testing.assert_allclose(model.set_params(device="cpu").predict(X), on_gpu,
                               rtol=1e-4, atol=1e-4)


def test_a_cuda_trained_model_predicts_in_a_process_that_sees_no_gpu(digits, tmp_path):
    X, y = digits
    model = FFFClassifier(depth=4, max_iter=10, device="cuda", random_state=0).fit(X, y)
    np.save(tmp_path / "X.npy", X)
    with open(tmp_path / "model.pkl", "wb") as f:
        pickle.dump(model, f)
    script = (
        "import pickle, sys, numpy as np, torch\n"
        "assert not torch.cuda.is_available()\n"
        "model = pickle.load(open(sys.argv[1] + '/model.pkl', 'rb'))\n"
        "X = np.load(sys.argv[1] + '/X.npy')\n"
        "np.save(sys.argv[1] + '/leaves.npy', model.apply(X))\n"
        "np.save(sys.argv[1] + '/proba.npy', model.predict_proba(X))\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True,
                   env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    np.testing.assert_array_equal(np.load(tmp_path / "leaves.npy"), model.apply(X))
    np.testing.assert_allclose(np.load(tmp_path / "proba.npy"), model.predict_proba(X),
                               rtol=1e-4, atol=1e-6)


def test_a_network_runs_under_cuda_autocast_in_its_own_dtype():
    from fffsklearn.nn import FFFNetwork

    torch.manual_seed(0)
    X = torch.randn(64, 5, device="cuda")
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 8), FFFNetwork(8, 2, depth=2, random_state=0)
    ).cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        encoded = model[0](X)
        outputs = model(X)
    outputs.sum().backward()
    assert encoded.dtype == torch.float16 and outputs.dtype == torch.float32
    torch.testing.assert_close(outputs, model[1](encoded.float()))
    assert torch.isfinite(model[0].weight.grad).all()
