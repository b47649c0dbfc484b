"""Reliability: hostile model files, interrupted and diverging fits, concurrency, extremes."""

import os
import pickle
import signal
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.datasets import load_digits, make_regression
from sklearn.exceptions import NotFittedError
from sklearn.preprocessing import StandardScaler

from fffsklearn import FFFArrays, FFFClassifier, FFFRegressor, inference
from fffsklearn._arrays import _rebuild
from fffsklearn._testing import random_arrays
from fffsklearn._training import Trainer


@pytest.fixture(scope="module")
def data():
    X, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(X)[:600], y[:600]


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    return FFFClassifier(depth=3, max_iter=10, random_state=0).fit(X, y)


# --------------------------------------------------------------------------- hostile files
class _EditedArrays:
    """Pickles as an FFFArrays whose saved state was edited, as a hostile file would hold."""

    def __init__(self, state):
        self.state = state

    def __reduce__(self):
        return (_rebuild, (self.state,))


def _edited_pickle(model, **array_edits):
    state = model.arrays_.__getstate__()
    for name, edit in array_edits.items():
        state[name] = edit(state[name]) if callable(edit) else edit
    hostile = clone(model)
    hostile.__dict__.update({k: v for k, v in model.__dict__.items() if k.endswith("_")})
    hostile.__dict__["arrays_"] = _EditedArrays(state)
    return pickle.dumps(hostile)


@pytest.mark.parametrize(
    "edits, message",
    [
        ({"node_weights": lambda a: a[:, :-1]}, "shape"),
        ({"leaf_hidden_weights": lambda a: a[:3]}, "shape"),
        ({"leaf_output_biases": lambda a: a.astype(np.int32)}, "floating"),
        ({"master_hidden_weights": "not an array"}, "NumPy array"),
        ({"depth": -1}, "depth"),
        ({"depth": 10**9}, "depth"),
        ({"depth": 4}, "shape"),
        ({"node_biases": lambda a: np.full_like(a, np.nan)}, "NaN"),
        ({"leaf_hidden_biases": lambda a: np.full_like(a, np.inf)}, "infinity"),
        ({"activation": "os.system"}, "activation"),
    ],
)
def test_edited_model_arrays_raise_at_load(fitted, edits, message):
    with pytest.raises(ValueError, match=message):
        pickle.loads(_edited_pickle(fitted, **edits))


def test_missing_array_raises_at_load(fitted):
    state = fitted.arrays_.__getstate__()
    del state["leaf_output_weights"]
    with pytest.raises(ValueError, match="missing"):
        FFFArrays.__new__(FFFArrays).__setstate__(state)


def test_non_contiguous_and_float64_arrays_are_accepted_as_copies(fitted, data):
    X, _ = data
    edits = {
        "node_weights": lambda a: np.asfortranarray(a.astype(np.float64)),
        "leaf_hidden_weights": lambda a: np.repeat(a, 2, axis=2)[:, :, ::2],
    }
    loaded = pickle.loads(_edited_pickle(fitted, **edits))
    assert loaded.arrays_.node_weights.flags.c_contiguous
    np.testing.assert_array_equal(loaded.predict_proba(X), fitted.predict_proba(X))


@pytest.mark.parametrize(
    "attribute, value",
    [
        ("classes_", None),
        ("classes_", np.arange(3)),
        ("n_features_in_", 5),
        ("leaf_sample_counts_", np.zeros(3)),
        ("arrays_", {"depth": 3}),
    ],
)
def test_inconsistent_estimator_state_raises_at_load(fitted, attribute, value):
    hostile = pickle.loads(pickle.dumps(fitted))
    if value is None:
        del hostile.__dict__[attribute]
    else:
        hostile.__dict__[attribute] = value
    with pytest.raises(ValueError, match="Corrupt FFFClassifier state"):
        pickle.loads(pickle.dumps(hostile))


def test_inconsistent_regressor_state_raises_at_load():
    X, y = make_regression(n_samples=100, n_features=4, random_state=0)
    model = FFFRegressor(depth=1, max_iter=2).fit(X, y)
    for attribute, value in [("_target_mean", np.zeros(3)), ("n_outputs_", 2)]:
        hostile = pickle.loads(pickle.dumps(model))
        hostile.__dict__[attribute] = value
        with pytest.raises(ValueError, match="Corrupt FFFRegressor state"):
            pickle.loads(pickle.dumps(hostile))


# --------------------------------------------------------------------------- interruption
def _interrupt_on_epoch(monkeypatch, epoch):
    original = Trainer.run_epoch
    calls = {"n": 0}

    def run_epoch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == epoch:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "run_epoch", run_epoch)


def test_interrupt_keeps_the_last_completed_epoch_and_warm_start_continues(monkeypatch, data):
    X, y = data
    model = FFFClassifier(depth=2, max_iter=10, random_state=0, warm_start=True)
    _interrupt_on_epoch(monkeypatch, epoch=4)
    with pytest.warns(UserWarning, match="last completed epoch"):
        with pytest.raises(KeyboardInterrupt):
            model.fit(X, y)
    assert model.n_iter_ == 3 and len(model.loss_curve_) == 3
    assert model.leaf_sample_counts_.sum() == len(X)
    assert np.isfinite(model.predict_proba(X)).all()
    monkeypatch.undo()
    model.set_params(max_iter=2).fit(X, y)
    assert model.n_iter_ == 5 and len(model.loss_curve_) == 5


def test_interrupt_in_the_first_epoch_leaves_a_first_fit_unfitted(monkeypatch, data):
    X, y = data
    model = FFFClassifier(depth=2, max_iter=5)
    _interrupt_on_epoch(monkeypatch, epoch=1)
    with pytest.raises(KeyboardInterrupt):
        model.fit(X, y)
    with pytest.raises(NotFittedError):
        model.predict(X)


def test_interrupt_in_the_first_epoch_of_a_refit_keeps_the_old_model(monkeypatch, fitted, data):
    X, y = data
    model = pickle.loads(pickle.dumps(fitted))
    before = model.predict_proba(X)
    _interrupt_on_epoch(monkeypatch, epoch=1)
    with pytest.raises(KeyboardInterrupt):
        model.fit(X, y)
    np.testing.assert_array_equal(model.predict_proba(X), before)


def test_a_real_sigint_during_fit_leaves_a_consistent_estimator(data):
    X, y = data
    model = FFFClassifier(depth=3, max_iter=100_000, n_iter_no_change=100_000, random_state=0)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(KeyboardInterrupt):
                model.fit(X, y)
    finally:
        timer.cancel()
    if hasattr(model, "arrays_"):
        assert len(model.loss_curve_) == model.n_iter_ >= 1
        assert model.predict(X).shape == (len(X),)
    else:
        with pytest.raises(NotFittedError):
            model.predict(X)


# --------------------------------------------------------------------------- divergence
def test_diverging_fit_raises_a_clear_error_and_keeps_the_old_model(fitted, data):
    X, y = data
    model = pickle.loads(pickle.dumps(fitted))
    before = model.predict_proba(X)
    model.set_params(learning_rate_init=1e20)
    with pytest.raises(FloatingPointError, match="NaN or infinite.*learning_rate_init"):
        model.fit(X, y)
    np.testing.assert_array_equal(model.predict_proba(X), before)
    with pytest.raises(FloatingPointError, match="NaN or infinite"):
        FFFClassifier(max_iter=3, learning_rate_init=1e20).fit(X, y)


# --------------------------------------------------------------------------- concurrency
def test_eight_threads_predicting_a_thousand_times_match_serial(fitted, data):
    X, _ = data
    rows = [X[i : i + 7] for i in range(0, 56, 7)]
    expected = [fitted.predict_proba(r) for r in rows]

    def worker(i):
        return all(
            np.array_equal(fitted.predict_proba(rows[i]), expected[i]) for _ in range(1000)
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(worker, range(8)))


def test_fitting_clones_in_joblib_workers_while_the_parent_predicts(fitted, data):
    X, y = data
    expected = fitted.predict_proba(X)
    results = {}

    def search():
        results["clones"] = Parallel(n_jobs=2, backend="loky")(
            delayed(clone(fitted).set_params(max_iter=3, random_state=seed).fit)(X, y)
            for seed in range(4)
        )

    thread = threading.Thread(target=search)
    thread.start()
    while thread.is_alive():
        np.testing.assert_array_equal(fitted.predict_proba(X), expected)
    thread.join()
    assert [c.n_iter_ for c in results["clones"]] == [3, 3, 3, 3]
    np.testing.assert_array_equal(fitted.predict_proba(X), expected)


# --------------------------------------------------------------------------- extremes
finite_float32 = st.floats(
    min_value=-2.0**49, max_value=2.0**49, allow_nan=False, allow_infinity=False, width=32,
    allow_subnormal=True,
)


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    depth=st.integers(0, 5),
    activation=st.sampled_from(["relu", "tanh", "logistic", "identity"]),
    row=st.lists(finite_float32, min_size=6, max_size=6),
    n_rows=st.integers(1, 20),
    equal_rows=st.booleans(),
)
def test_extreme_finite_inputs_give_parity_and_finite_outputs(
    seed, depth, activation, row, n_rows, equal_rows
):
    rng = np.random.default_rng(seed)
    arrays = random_arrays(rng, depth, 6, 5, 3, 4, activation)
    if equal_rows:
        X = np.tile(np.asarray(row, np.float32), (n_rows, 1))
    else:
        scale = np.float32(np.max(np.abs(row)) or 1.0)
        X = (rng.standard_normal((n_rows, 6)) * scale).astype(np.float32)
        X[0] = row
    ref_out, ref_leaves = inference.hard_forward(arrays, X, backend="reference")
    out, leaves = inference.hard_forward(arrays, X, backend="compiled")
    np.testing.assert_array_equal(leaves, ref_leaves)
    assert np.isfinite(out).all() and np.isfinite(ref_out).all()
    scale = max(1.0, float(np.abs(ref_out).max()))
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5 * scale)
    if equal_rows:
        assert (leaves == leaves[0]).all() and (out == out[0]).all()


@pytest.mark.slow
def test_fit_streams_a_float32_memmap_without_copying_it(tmp_path):
    from fffsklearn._testing import PeakSampler, anonymous_rss_bytes

    n_rows, n_features = 500_000, 100
    X = np.lib.format.open_memmap(
        tmp_path / "X.npy", mode="w+", dtype=np.float32, shape=(n_rows, n_features)
    )
    X[:] = np.random.default_rng(0).standard_normal((n_rows, n_features), np.float32)
    X.flush()
    X = np.load(tmp_path / "X.npy", mmap_mode="r")
    y = (np.asarray(X[:, 0]) > 0).astype(np.int64)
    model = FFFClassifier(depth=3, max_iter=1, batch_size=1000)
    model.fit(X[:2000], y[:2000])  # torch and the kernel allocate their pools once
    baseline = anonymous_rss_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with PeakSampler() as sampler:
            model.fit(X, y)
    assert sampler.peak - baseline < X.nbytes / 4


# --------------------------------------------------------------------------- skops files
def _skops_with(blob, edit_schema=None, replace_array=None):
    """Rewrite a skops file: edit the FFFArrays part of its schema, or one of its arrays."""
    import io
    import json
    import zipfile

    source = zipfile.ZipFile(io.BytesIO(blob))
    schema = json.loads(source.read("schema.json"))
    arrays_state = schema["content"]["content"]["arrays_"]["content"]["content"]
    if edit_schema:
        edit_schema(arrays_state)
    files = {name: source.read(name) for name in source.namelist() if name != "schema.json"}
    if replace_array:
        name, value = replace_array
        buffer = io.BytesIO()
        np.save(buffer, value)
        files[arrays_state[name]["file"]] = buffer.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        target.writestr("schema.json", json.dumps(schema))
        for name, content in files.items():
            target.writestr(name, content)
    return out.getvalue()


def test_skops_round_trip_with_the_listed_trusted_types(fitted, data):
    sio = pytest.importorskip("skops.io")
    from fffsklearn import skops_trusted_types

    X, _ = data
    blob = sio.dumps(fitted)
    assert set(sio.get_untrusted_types(data=blob)) <= set(skops_trusted_types())
    loaded = sio.loads(blob, trusted=skops_trusted_types())
    np.testing.assert_array_equal(loaded.predict_proba(X), fitted.predict_proba(X))


@pytest.mark.parametrize(
    "edit, message",
    [
        # skops shares equal values by __id__: an edited value gets an id of its own.
        ({"edit_schema": lambda s: s["depth"].update(content="9", __id__=1)}, "shape"),
        ({"edit_schema": lambda s: s["depth"].update(content="-3", __id__=1)}, "depth"),
        ({"edit_schema": lambda s: s["activation"].update(content='"gelu"', __id__=1)},
         "activation"),
        ({"replace_array": ("node_weights", np.zeros((7, 3), np.float32))}, "shape"),
        ({"replace_array": ("node_biases", np.full(7, np.nan, np.float32))}, "NaN"),
        ({"replace_array": ("leaf_output_biases", np.zeros((8, 10), np.int64))}, "floating"),
    ],
)
def test_edited_skops_file_raises_at_load(fitted, edit, message):
    sio = pytest.importorskip("skops.io")
    from fffsklearn import skops_trusted_types

    hostile = _skops_with(sio.dumps(fitted), **edit)
    with pytest.raises(ValueError, match=message):
        sio.loads(hostile, trusted=skops_trusted_types())
