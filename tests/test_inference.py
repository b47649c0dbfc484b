"""Every backend sends every row to the same leaf and agrees on outputs."""

import platform
from contextlib import contextmanager

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fffsklearn import FFFArrays, inference
from fffsklearn._arrays import ACTIVATIONS
from fffsklearn._testing import random_arrays
from fffsklearn.inference import _kernel


@contextmanager
def instruction_set(name):
    """Run the compiled kernel with the named instruction set inside the block."""
    previous = _kernel.use_instruction_set(name)
    try:
        yield
    finally:
        _kernel.use_instruction_set(previous)


# Where the Triton backend runs: on a GPU; on the CPU under Triton's interpreter
# (tests/conftest.py), too slow for this file's larger cases, which tests/test_triton.py
# replaces with small ones.
CUDA = torch.cuda.is_available()
TRITON_DEVICE = ("cuda" if CUDA else "cpu") if inference.triton_available() else None


def assert_backends_agree(arrays, X, n_threads=2, triton=CUDA):
    """The compiled kernel, under every instruction set this CPU runs, the torch backend
    (on the CPU) and, if ``triton`` and Triton is installed, the Triton backend against the
    NumPy reference."""
    ref_out, ref_leaves = inference.hard_forward(arrays, X, backend="reference")
    scale = max(1.0, float(np.abs(ref_out).max(initial=0.0)))
    # Every backend accumulates the leaves in float32, whose rounding error grows as sqrt(d):
    # 1e-5 relative up to d=784; at d=2000 the kernel is 1.1e-5 off a float64 computation.
    tolerance = 1e-5 * max(1.0, np.sqrt(X.shape[1] / 784))

    def check(backend, label, device="cpu"):
        options = dict(backend=backend, n_threads=n_threads, device=device)
        out, leaves = inference.hard_forward(arrays, X, **options)
        np.testing.assert_array_equal(leaves, ref_leaves, err_msg=label)
        np.testing.assert_allclose(out, ref_out, rtol=tolerance, atol=tolerance * scale,
                                   err_msg=label)
        np.testing.assert_array_equal(inference.apply(arrays, X, **options), ref_leaves,
                                      err_msg=label)

    for name in _kernel.instruction_sets():
        with instruction_set(name):
            check("compiled", f"compiled ({name})")
            check_csr(arrays, X, ref_out, ref_leaves, tolerance, scale, n_threads, name)
    check("torch", "torch")
    if triton and TRITON_DEVICE:
        check("triton", f"triton ({TRITON_DEVICE})", TRITON_DEVICE)
    return ref_leaves


def check_csr(arrays, X, ref_out, ref_leaves, tolerance, scale, n_threads, label):
    """The compiled kernel's CSR path on ``X`` as a CSR matrix, with 32- and 64-bit indices,
    against the reference's results on the dense rows."""
    for index_dtype in (np.int32, np.int64):
        csr = sp.csr_matrix(X)
        csr.indices, csr.indptr = csr.indices.astype(index_dtype), csr.indptr.astype(index_dtype)
        out, leaves = inference.hard_forward(arrays, csr, n_threads=n_threads)
        message = f"compiled CSR ({label}, {np.dtype(index_dtype).name})"
        np.testing.assert_array_equal(leaves, ref_leaves, err_msg=message)
        np.testing.assert_allclose(out, ref_out, rtol=tolerance, atol=tolerance * scale,
                                   err_msg=message)
        np.testing.assert_array_equal(inference.apply(arrays, csr, n_threads=n_threads),
                                      ref_leaves, err_msg=message)


def test_compiled_kernel_is_built_and_is_the_default():
    # CI installs with FFFSKLEARN_REQUIRE_KERNEL=1: predict must run through the C kernel.
    assert _kernel is not None
    assert inference.default_backend() == "compiled"


def test_the_kernel_runs_with_the_widest_instruction_set_and_can_narrow_it():
    names = _kernel.instruction_sets()
    assert names[-1] == "baseline"
    if platform.machine() in ("x86_64", "AMD64"):
        assert len(names) in (1, 2)  # "avx2" first wherever the CPU has AVX2 and FMA
    with instruction_set("baseline"):
        assert _kernel.use_instruction_set("baseline") == "baseline"
    assert _kernel.use_instruction_set(names[0]) == names[0]  # restored after the block
    with pytest.raises(ValueError, match="not one this CPU supports; choose one of"):
        _kernel.use_instruction_set("avx1024")
    assert _kernel.use_instruction_set(names[0]) == names[0]  # a refused name changes nothing


def _random_case(seed):
    rng = np.random.default_rng(seed)
    depth = int(rng.integers(0, 13))
    n_features = int(rng.choice([1, 2, 7, 31, 64, 100, 300, 2000]))
    leaf_width = int(rng.choice([1, 3, 8, 16, 17, 33, 64]))
    master = int(rng.choice([0, 0, 5, 16]))
    n_outputs = int(rng.integers(1, 12))
    activation = ACTIVATIONS[seed % len(ACTIVATIONS)]
    arrays = random_arrays(rng, depth, n_features, leaf_width, master, n_outputs, activation)
    n_rows = int(rng.choice([1, 2, 5, 511, 512, 513, 3000]))
    X = rng.standard_normal((n_rows, n_features)) * rng.choice([1e-3, 1.0, 50.0])
    # Mostly zeros in some cases, as the sparse rows the CSR path reads are.
    X[rng.random(X.shape) < rng.choice([0.0, 0.5, 0.98])] = 0.0
    dtype = np.float32 if seed % 2 else np.float64
    order = "F" if seed % 3 == 0 else "C"
    return arrays, np.asarray(X, dtype=dtype, order=order)


@pytest.mark.parametrize("seed", range(60))
def test_random_models_agree(seed):
    arrays, X = _random_case(seed)
    assert_backends_agree(arrays, X)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(60, 260))
def test_random_models_agree_slow(seed):
    arrays, X = _random_case(seed)
    assert_backends_agree(arrays, X)


@pytest.mark.slow
def test_large_batch_agrees(rng):
    arrays = random_arrays(rng, 6, 784, 16, 16, 10, "relu")
    X = rng.standard_normal((100_000, 784)).astype(np.float32)
    leaves = assert_backends_agree(arrays, X)
    assert np.unique(leaves).size > 32


def test_rows_exactly_on_a_boundary_go_left(rng):
    arrays = random_arrays(rng, 3, 6, 4, 2, 2, "relu")
    weights = np.array(arrays.node_weights)
    weights[0] = [1, -1, 0, 0, 0, 0]
    arrays = _replace(arrays, node_weights=weights, node_biases=np.zeros(7, np.float32))
    X = np.zeros((4, 6), dtype=np.float32)
    X[:, :2] = [[1, 1], [0.5, 0.5], [3, 3], [-2, -2]]  # logit exactly 0 at the root
    leaves = assert_backends_agree(arrays, X, triton=True)
    assert (leaves < 4).all()  # root decision is the leaf's most significant bit: left


@pytest.mark.parametrize("magnitude", [1e-25, 1e20, 3e37])
def test_rows_whose_squares_leave_the_float32_range_route_exactly(rng, magnitude):
    # The kernel bounds each row's norm from a float32 sum of squares: these squares underflow
    # to zero or overflow to infinity although every value is a finite float32.
    arrays = random_arrays(rng, 4, 7, 3, 0, 2, "identity")
    X = (rng.standard_normal((50, 7)) * magnitude).astype(np.float32)
    assert np.isfinite(X).all()
    assert_backends_agree(arrays, X, triton=True)


@settings(max_examples=60, deadline=None)
@given(
    depth=st.integers(0, 6),
    n_features=st.integers(1, 40),
    leaf_width=st.integers(1, 20),
    master=st.integers(0, 6),
    activation=st.sampled_from(ACTIVATIONS),
    seed=st.integers(0, 2**32 - 1),
    magnitude=st.sampled_from([1e-30, 1e-6, 1.0, 1e6, 1e15, 1e20]),
    on_boundary=st.booleans(),
    data=st.data(),
)
def test_hypothesis_parity(
    depth, n_features, leaf_width, master, activation, seed, magnitude, on_boundary, data
):
    rng = np.random.default_rng(seed)
    arrays = random_arrays(rng, depth, n_features, leaf_width, master, 3, activation)
    n_rows = data.draw(st.integers(1, 40))
    X = (rng.standard_normal((n_rows, n_features)) * magnitude).astype(np.float32)
    if on_boundary and depth:
        # Project rows onto the root's hyperplane: logits of (nearly) exactly zero.
        w, b = arrays.node_weights[0].astype(np.float64), float(arrays.node_biases[0])
        X64 = X.astype(np.float64)
        X = (X64 - np.outer(X64 @ w + b, w) / (w @ w)).astype(np.float32)
    X[rng.random(X.shape) < 0.1] = 0.0
    assert_backends_agree(arrays, X, triton=True)


def test_wide_float64_rows_agree_in_blocks_within_the_copy_budget(rng):
    # float64 rows are cast to float32 a block at a time, in at most 8 MB per thread: with
    # 10,000 features that is 209 rows a block.
    arrays = random_arrays(rng, 3, 10_000, 4, 2, 3, "relu")
    X = rng.standard_normal((700, 10_000))
    assert_backends_agree(arrays, X, n_threads=1)


def test_batch_does_not_change_a_rows_result(rng):
    arrays = random_arrays(rng, 5, 50, 16, 8, 4, "tanh")
    X = rng.standard_normal((1000, 50)).astype(np.float32)
    out, leaves = inference.hard_forward(arrays, X, n_threads=2)
    for rows in (slice(0, 1), slice(3, 4), slice(100, 613), slice(999, 1000)):
        sub_out, sub_leaves = inference.hard_forward(arrays, X[rows], n_threads=1)
        np.testing.assert_array_equal(sub_leaves, leaves[rows])
        np.testing.assert_array_equal(sub_out, out[rows])


@pytest.mark.parametrize("n_rows", [5000, 600, 513])
def test_threads_give_identical_results(rng, n_rows):
    # Down to 256 rows a thread, a batch is shared among the threads.
    arrays = random_arrays(rng, 6, 64, 16, 16, 3, "relu")
    X = rng.standard_normal((n_rows, 64))
    one = inference.hard_forward(arrays, X, n_threads=1)
    for n_threads in (2, 3, 8):
        many = inference.hard_forward(arrays, X, n_threads=n_threads)
        np.testing.assert_array_equal(one[0], many[0])
        np.testing.assert_array_equal(one[1], many[1])


def test_csr_rows_in_any_form_scipy_allows_give_the_dense_rows_results(rng):
    arrays = random_arrays(rng, 5, 40, 16, 8, 3, "tanh")
    X = rng.standard_normal((700, 40))
    X[rng.random(X.shape) < 0.9] = 0.0
    X[5] = 0.0  # an empty row
    expected_out, expected_leaves = inference.hard_forward(arrays, X)
    csr = sp.csr_matrix(X)
    # Columns out of order, a column stored twice (scipy sums repeats), explicit zeros.
    data, indices, indptr = [], [], [0]
    for row in X:
        (columns,) = np.nonzero(row)
        columns = rng.permutation(columns)
        values = list(row[columns])
        if len(columns):
            values[0] /= 2
            columns, values = np.r_[columns, columns[0], 0], values + [values[0], 0.0]
        data += list(values)
        indices += list(columns)
        indptr.append(len(data))
    messy = sp.csr_matrix((np.array(data), np.array(indices), np.array(indptr)), shape=X.shape)
    assert not messy.has_canonical_format
    for rows in (csr, messy, sp.csr_matrix(X.astype(np.float32)), csr[100:600]):
        dense = rows.toarray()
        expected_out, expected_leaves = inference.hard_forward(arrays, dense)
        out, leaves = inference.hard_forward(arrays, rows, n_threads=2)
        np.testing.assert_array_equal(leaves, expected_leaves)
        np.testing.assert_allclose(out, expected_out, rtol=1e-5, atol=1e-5)
    # Other sparse formats are read as CSR; the other backends densify a chunk at a time.
    for rows in (sp.csc_matrix(X), sp.coo_array(X)):
        out, leaves = inference.hard_forward(arrays, rows)
        np.testing.assert_array_equal(leaves, inference.apply(arrays, X))
    for backend in ("reference", "torch"):
        out, leaves = inference.hard_forward(arrays, csr, backend=backend)
        np.testing.assert_array_equal(leaves, inference.apply(arrays, X))


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda d, i, p: (d, np.where(i == i.max(), 40, i), p), "column index"),
        (lambda d, i, p: (d, np.where(i == i.max(), -1, i), p), "column index"),
        (lambda d, i, p: (d, i, p[::-1].copy()), "row pointers"),
        (lambda d, i, p: (d, i, np.r_[p[:-1], p[-1] + 5]), "row pointers"),
        (lambda d, i, p: (np.where(np.arange(d.size) == 3, np.nan, d), i, p), "NaN"),
        (lambda d, i, p: (np.where(np.arange(d.size) == 3, 1e300, d), i, p), "too large"),
        (lambda d, i, p: (d, i[:-1], p), "as long as data"),
        (lambda d, i, p: (d.astype(np.float16), i, p), "float32 or float64"),
        (lambda d, i, p: (d, i.astype(np.int16), p), "int32 or int64"),
    ],
)
def test_the_csr_path_refuses_corrupt_matrices(rng, corrupt, message):
    """A tampered CSR matrix raises ValueError: no read outside its buffers, no crash."""
    arrays = random_arrays(rng, 3, 40, 4, 2, 2, "relu")
    X = sp.random(300, 40, density=0.1, format="csr", random_state=0)
    data, indices, indptr = corrupt(X.data, X.indices, X.indptr)
    leaves, outputs = np.empty(300, np.int64), np.empty((300, 2), np.float32)
    with pytest.raises(ValueError, match=message):
        _kernel.hard_forward_csr(arrays, data, indices, indptr, 40, leaves, outputs, 2)
    with pytest.raises(ValueError, match="features"):
        _kernel.hard_forward_csr(arrays, X.data, X.indices, X.indptr, 41, leaves, outputs, 2)


def _replace(arrays, **changes):
    state = arrays.__getstate__()
    state.update(changes)
    return FFFArrays(state.pop("depth"), state.pop("activation"), **state)


class _Tampered:
    """An object with FFFArrays' attributes that bypasses its validation."""

    def __init__(self, arrays, **changes):
        for name in ("depth", "activation") + FFFArrays.ARRAY_NAMES:
            setattr(self, name, changes.get(name, getattr(arrays, name)))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"depth": 4}, "shape"),
        ({"depth": -1}, "depth"),
        ({"depth": 64}, "depth"),
        ({"node_weights": np.zeros((7, 5), np.float32)}, "shape"),
        ({"leaf_hidden_weights": np.zeros((8, 6, 4), np.float64)}, "float32"),
        ({"leaf_output_weights": np.zeros((8, 4, 2), np.float32)[:, ::2]}, "shape|contiguous"),
        ({"master_output_weights": np.zeros((3, 2), np.float32)}, "shape"),
        ({"activation": "softmax"}, "activation"),
        ({"node_biases": [0.0] * 7}, "array|buffer|contiguous"),
    ],
)
def test_kernel_rejects_tampered_models(rng, changes, message):
    arrays = random_arrays(rng, 3, 6, 4, 2, 2, "relu")
    tampered = _Tampered(arrays, **changes)
    X = rng.standard_normal((10, 6)).astype(np.float32)
    leaves, outputs = np.empty(10, np.int64), np.empty((10, 2), np.float32)
    with pytest.raises((ValueError, TypeError), match=message):
        _kernel.hard_forward(tampered, X, leaves, outputs, 1)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"depth": 2}, "shape"),
        ({"depth": 21}, "depth"),
        ({"node_weights": np.full((7, 6), np.nan, np.float32)}, "NaN"),
        ({"leaf_hidden_biases": np.zeros((8, 4), np.int64)}, "floating"),
        ({"activation": "gelu"}, "activation"),
    ],
)
def test_arrays_validate_on_construction_and_unpickling(rng, changes, message):
    arrays = random_arrays(rng, 3, 6, 4, 2, 2, "relu")
    with pytest.raises(ValueError, match=message):
        _replace(arrays, **changes)
    state = arrays.__getstate__()
    state.update(changes)
    with pytest.raises(ValueError, match=message):
        FFFArrays.__new__(FFFArrays).__setstate__(state)


def test_arrays_are_read_only(rng):
    arrays = random_arrays(rng, 2, 3, 2, 0, 1, "relu")
    with pytest.raises(ValueError):
        arrays.node_weights[0, 0] = 1.0
    with pytest.raises(AttributeError):
        arrays.depth = 3


def test_kernel_rejects_bad_buffers(rng):
    arrays = random_arrays(rng, 2, 3, 2, 0, 1, "relu")
    X = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="features"):
        _kernel.hard_forward(arrays, np.zeros((4, 5), np.float32), np.empty(4, np.int64), None, 1)
    with pytest.raises(ValueError, match="float32 or float64"):
        _kernel.hard_forward(arrays, X.astype(np.int32), np.empty(4, np.int64), None, 1)
    with pytest.raises(ValueError, match="leaves_out"):
        _kernel.hard_forward(arrays, X, np.empty(3, np.int64), None, 1)
    with pytest.raises(ValueError, match="outputs_out"):
        _kernel.hard_forward(arrays, X, np.empty(4, np.int64), np.empty((4, 2), np.float32), 1)
    with pytest.raises(ValueError, match="n_threads"):
        _kernel.hard_forward(arrays, X, np.empty(4, np.int64), None, 0)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_backend_covers_every_activation(activation):
    """The registry's every activation: the NumPy reference, the kernel, the torch and Triton
    backends, the training network's straight-through forward (the hard model) and the ONNX
    export."""
    import torch

    from fffsklearn import FFFClassifier
    from fffsklearn._network import FFFNetwork

    rng = np.random.default_rng(7)
    arrays = random_arrays(rng, 3, 9, 5, 4, 3, activation)
    X = rng.standard_normal((400, 9)).astype(np.float32)
    reference, leaves = inference.hard_forward(arrays, X, backend="reference")
    assert_backends_agree(arrays, X, triton=True)

    network = FFFNetwork.from_arrays(arrays)
    for training in (True, False):  # straight-through in training, hard in evaluation
        with torch.no_grad():
            outputs = network.train(training)(torch.from_numpy(X)).numpy()
        np.testing.assert_allclose(outputs, reference, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(network.routing.hard_one_hot.argmax(1).numpy(), leaves)

    pytest.importorskip("onnxruntime")
    pytest.importorskip("skl2onnx")
    import onnxruntime

    from fffsklearn import to_onnx

    model = FFFClassifier.from_network(arrays, X, classes=np.arange(3))
    session = onnxruntime.InferenceSession(
        to_onnx(model).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    _, probabilities = session.run(None, {"X": X})
    np.testing.assert_allclose(probabilities, model.predict_proba(X), rtol=1e-5, atol=1e-5)


def test_inference_never_imports_training_code():
    import ast
    from pathlib import Path

    package = Path(inference.__file__).parent
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [alias.name for alias in node.names]
                assert not any(
                    part in name for name in names for part in ("_training", "_network")
                ), f"{source.name} imports {names}"


def test_the_kernel_reads_its_depth_limit_and_activations_from_the_python_registries():
    from types import SimpleNamespace

    from fffsklearn._limits import MAX_DEPTH

    X, leaves = np.zeros((1, 2), np.float32), np.zeros(1, np.int64)

    def kernel_error(depth, activation):
        model = SimpleNamespace(depth=depth, activation=activation)  # no weights at all
        with pytest.raises((ValueError, AttributeError)) as error:
            _kernel.hard_forward(model, X, leaves, None, 1)
        return str(error.value)

    assert f"[0, {MAX_DEPTH}]" in kernel_error(MAX_DEPTH + 1, "relu")
    assert "depth" not in kernel_error(MAX_DEPTH, "relu")
    for name in ACTIVATIONS:  # accepted: the kernel fails later, on the missing weights
        assert "activation" not in kernel_error(1, name)
    assert "unknown activation" in kernel_error(1, "gelu")
