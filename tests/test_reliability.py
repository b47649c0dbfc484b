"""Reliability: hostile model files, interrupted and diverging fits, concurrency, extremes."""

import copy
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.datasets import load_digits, make_classification, make_regression
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fffsklearn import FFFArrays, FFFClassifier, FFFRegressor, inference
from fffsklearn._arrays import _rebuild
from fffsklearn._preparation import InputPreparation
from fffsklearn._testing import EpochCallback, random_arrays
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
    hostile = copy.copy(model)
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
    # Python's own SIGINT handler, as at a terminal: a process started in the background of
    # a non-interactive shell inherits SIGINT ignored, and the fit would run its 100,000
    # epochs.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(KeyboardInterrupt):
                model.fit(X, y)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, inherited)
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


# --------------------------------------------------------------------------- cold start
_LOAD_AND_PREDICT = """
import pickle, sys
import numpy as np
{library}
already = set(sys.modules)
{load}
model.predict(np.zeros((1, model.n_features_in_)))
print(sorted(name for name in ("torch", "fffsklearn._training", "fffsklearn._network")
             if name in set(sys.modules) - already))
"""


@pytest.mark.parametrize("Estimator", [FFFClassifier, FFFRegressor])
@pytest.mark.parametrize("file_format", ["pickle", "skops"])
def test_loading_a_model_and_predicting_on_the_cpu_imports_no_torch(
    Estimator, file_format, data, tmp_path
):
    """Neither fffsklearn nor the fitted model loads torch to predict on the CPU. (skops
    imports every scikit-learn module, and with them torch wherever it is installed: what
    the file format's library loads by itself is not counted.)"""
    X, y = data
    model = Estimator(depth=2, max_iter=2, random_state=0).fit(X, y)
    path = tmp_path / "model"
    if file_format == "pickle":
        path.write_bytes(pickle.dumps(model))
        library = ""
        load = f"model = pickle.loads(open({str(path)!r}, 'rb').read())"
    else:
        sio = pytest.importorskip("skops.io")
        sio.dump(model, path)
        library = "import skops.io"
        load = ("import fffsklearn\n"
                f"model = skops.io.load({str(path)!r}, "
                "trusted=fffsklearn.skops_trusted_types())")
    # CUDA_VISIBLE_DEVICES: on a machine with a GPU, prediction would load torch for it.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    script = _LOAD_AND_PREDICT.format(library=library, load=load)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, check=True)
    assert result.stdout.strip() == "[]", result.stderr


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


def _predictions_during(refit, predict, threads=2):
    """What ``predict()`` returned in ``threads`` threads that predicted while ``refit()``
    ran, with whatever ``refit`` raised (or None)."""
    results, outcome, fitting = [], {}, threading.Event()
    done = threading.Event()

    def serve():
        while not done.is_set():
            during = fitting.is_set()
            try:
                results.append((during, predict()))
            except Exception as exc:  # a prediction that raises fails the test
                results.append((during, exc))
            time.sleep(1e-4)  # as a server between requests; the fit gets the GIL too

    workers = [threading.Thread(target=serve) for _ in range(threads)]
    for worker in workers:
        worker.start()
    fitting.set()
    try:
        refit()
    except Exception as exc:
        outcome["error"] = exc
    finally:
        done.set()
        for worker in workers:
            worker.join()
    return [r for during, r in results if during], outcome.get("error")


def _is_one_of(result, *models):
    return any(
        np.array_equal(result, model) for model in models if not isinstance(result, Exception)
    )


@pytest.mark.parametrize("Estimator", [FFFClassifier, FFFRegressor])
def test_predictions_during_a_refit_in_another_thread_come_from_the_old_or_the_new_model(
    Estimator, data
):
    X, y = data
    params = dict(depth=2, max_iter=8, hardening_epochs=2, random_state=0)
    # Other labels and other units, and a network trained on other encoded targets: the
    # old network read through the new labels or units would match neither model.
    old_y, new_y = (y, (y + 1) % 10 + 10) if Estimator is FFFClassifier else (y, 50.0 - 3.0 * y)
    model = Estimator(**params).fit(X, old_y)
    X_test = X[:40]
    old = model.predict(X_test)
    new = Estimator(**params).fit(X, new_y).predict(X_test)
    assert not np.array_equal(old, new)
    seen, error = _predictions_during(lambda: model.fit(X, new_y), lambda: model.predict(X_test))
    assert error is None and seen
    assert all(_is_one_of(result, old, new) for result in seen)
    np.testing.assert_array_equal(model.predict(X_test), new)


@pytest.mark.parametrize("Estimator", [FFFClassifier, FFFRegressor])
def test_a_refit_that_fails_in_another_thread_leaves_predictions_on_the_old_model(
    Estimator, data
):
    X, y = data
    model = Estimator(depth=2, max_iter=5, hardening_epochs=2, random_state=0).fit(X, y)
    X_test = X[:40]
    old = model.predict(X_test)
    errors = []

    def failing_refits():
        # Fewer features (validated first, the number stored), then weights that fit
        # refuses; a failure is quick, so many, for the predictions to meet one.
        for _ in range(200):
            with pytest.raises(ValueError, match="non-negative") as error:
                model.fit(X[:, :3], y, sample_weight=-np.ones(len(y)))
            errors.append(error)

    seen, error = _predictions_during(failing_refits, lambda: model.predict(X_test))
    assert error is None and len(errors) == 200 and seen
    assert all(_is_one_of(result, old) for result in seen)
    assert model.n_features_in_ == X.shape[1]


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
def _skops_with(blob, edit_schema=None, replace_array=None, replace_attribute=None):
    """Rewrite a skops file: edit the FFFArrays part of its schema, one of its arrays, or an
    array attribute of the estimator."""
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
    if replace_attribute:
        name, value = replace_attribute
        buffer = io.BytesIO()
        np.save(buffer, value)
        files[schema["content"]["content"][name]["file"]] = buffer.getvalue()
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


# ----------------------------------------------------------- clients and red team (issue #17)
@pytest.fixture(scope="module")
def cancer():
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def test_bagging_an_fff_on_bagging_defaults(cancer):
    from sklearn.ensemble import BaggingClassifier, BaggingRegressor

    X, y = cancer
    # Bootstrap counts as sample weights: small last batches are soon all zero.
    classifier = BaggingClassifier(FFFClassifier(max_iter=5, random_state=0), random_state=0)
    assert classifier.fit(X[:401], y[:401]).score(X[401:], y[401:]) > 0.8
    regressor = BaggingRegressor(FFFRegressor(max_iter=5, random_state=0), random_state=0)
    assert np.isfinite(regressor.fit(X[:201], X[:201, 0]).predict(X[201:])).all()


@pytest.mark.parametrize(
    "zero_rows, batch_size", [(slice(3, None), "auto"), (slice(0, None, 2), 8)]
)
def test_fitting_with_mostly_zero_sample_weights(cancer, zero_rows, batch_size):
    X, y = cancer
    weights = np.ones(300)
    weights[zero_rows] = 0.0
    model = FFFClassifier(max_iter=5, batch_size=batch_size, random_state=0)
    model.fit(X[:300], y[:300], sample_weight=weights)
    assert np.isfinite(model.predict_proba(X)).all()


def test_divergence_from_a_huge_alpha_blames_alpha(cancer):
    X, y = cancer
    with pytest.raises(FloatingPointError, match="alpha=1e\\+300 is too large"):
        FFFClassifier(max_iter=5, alpha=1e300).fit(X, y)


def test_early_stopping_on_too_few_rows_raises_a_clear_error(cancer):
    X, y = cancer
    with pytest.raises(ValueError, match="holds out validation_fraction=0.1 of the 10 rows"):
        FFFRegressor(early_stopping=True, max_iter=5).fit(X[:10], X[:10, 0])
    # One held-out row is enough to score accuracy.
    rows = np.r_[np.flatnonzero(y == 0)[:5], np.flatnonzero(y == 1)[:5]]
    model = FFFClassifier(early_stopping=True, max_iter=5, random_state=0).fit(X[rows], y[rows])
    assert len(model.validation_scores_) == model.n_iter_


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_fitting_targets_near_the_float64_limit_predicts_finite_values(cancer):
    X, y = cancer
    model = FFFRegressor(max_iter=5, random_state=0)
    prediction = model.fit(X, y * 1e200 + 1e200).predict(X[:50])
    assert np.isfinite(prediction).all()
    np.testing.assert_allclose(
        prediction / 1e200 - 1, clone(model).fit(X, y).predict(X[:50]), atol=1e-4
    )
    untransformable = np.where(y == 1, 1.7e308, -1.7e308)
    untransformable[0] = 1.7e308
    with pytest.raises(ValueError, match="cannot be standardised"):
        clone(model).fit(X, untransformable)


def test_inputs_beyond_the_float32_range_raise_at_predict(cancer):
    X, y = cancer
    model = FFFClassifier(max_iter=5, random_state=0).fit(X, y)
    rows = X[:3].copy()
    rows[1] = 3e38
    for method in (model.predict, model.predict_proba, model.predict_log_proba):
        with pytest.raises(ValueError, match="first such row: 1"):
            method(rows)
    rows[1] = 1e30  # large, but the float32 network still evaluates it
    assert np.isfinite(model.predict_proba(rows)).all()


@pytest.mark.parametrize("n_jobs", [0, 2**40, -(2**40)])
def test_invalid_n_jobs_is_refused_before_fitting(cancer, n_jobs, monkeypatch):
    X, y = cancer
    monkeypatch.setattr(Trainer, "run_epoch", lambda *args: pytest.fail("fit started"))
    with pytest.raises(ValueError, match="'n_jobs' parameter"):
        FFFClassifier(n_jobs=n_jobs).fit(X, y)


@pytest.mark.parametrize(
    "attribute, value, match",
    [
        ("_target_mean", np.array([np.nan, 0.0]), "_target_mean must be finite"),
        ("_target_scale", np.array([np.inf, 1.0]), "_target_scale finite and positive"),
        ("_target_scale", np.array([0.0, 1.0]), "_target_scale finite and positive"),
        ("_target_mean", np.array(["a", "b"]), "_target_mean must be finite"),
        ("_target_is_1d", True, "_target_is_1d"),
    ],
)
def test_edited_regressor_values_raise_at_load(attribute, value, match):
    X, y = make_regression(n_samples=100, n_features=4, n_targets=2, random_state=0)
    hostile = pickle.loads(pickle.dumps(FFFRegressor(depth=1, max_iter=2).fit(X, y)))
    hostile.__dict__[attribute] = value
    with pytest.raises(ValueError, match=match):
        pickle.loads(pickle.dumps(hostile))


@pytest.mark.parametrize(
    "attribute, value, match",
    [
        ("scale_", np.array([1.0, 0.0, 1.0, 1.0]), "mean_ and scale_ must be finite"),
        ("mean_", np.array([0.0, np.nan, 0.0, 0.0]), "mean_ and scale_ must be finite"),
        ("mean_", np.zeros(3), "mean_ and scale_ must be finite"),
        ("mean_", None, "mean_ and scale_ must be finite"),
        ("std_", np.array([1.0, -1.0, 1.0, 1.0]), "std_ must be a finite"),
        ("std_", np.array([1.0, np.inf, 1.0, 1.0]), "std_ must be a finite"),
        ("std_", np.ones(5), "std_ must be a finite"),
        ("routing_feature_penalties_", np.full(4, 2.0), "routing_feature_penalties_ must be"),
        ("routing_feature_penalties_", np.full(4, np.nan), "routing_feature_penalties_ must"),
        ("routing_feature_penalties_", np.ones(3), "routing_feature_penalties_ must be"),
        ("routing_feature_penalties_", np.ones(4, dtype=int), "routing_feature_penalties_ must"),
        ("n_features_in_", 5.0, "n_features_in_ must be a positive int"),
    ],
)
def test_edited_input_statistics_raise_at_load(attribute, value, match):
    X, y = make_classification(n_samples=100, n_features=4, n_informative=2, random_state=0)
    hostile = pickle.loads(pickle.dumps(FFFClassifier(depth=1, max_iter=2).fit(X, y)))
    hostile._preparation.__dict__[attribute] = value
    with pytest.raises(ValueError, match="Corrupt input preparation: " + match):
        pickle.loads(pickle.dumps(hostile))


@pytest.mark.parametrize("value", [None, "mean", "another model's"])
def test_a_missing_or_foreign_input_preparation_raises_at_load(fitted, value):
    hostile = pickle.loads(pickle.dumps(fitted))
    if value == "another model's":
        value = InputPreparation.identity(fitted.n_features_in_ + 1)
    hostile.__dict__["_preparation"] = value
    with pytest.raises(ValueError, match="_preparation must be the InputPreparation of the 64"):
        pickle.loads(pickle.dumps(hostile))


@pytest.mark.parametrize(
    "value", [np.array([1, 1] + list(range(2, 10))), np.r_[np.nan, np.arange(1.0, 10.0)]]
)
def test_edited_classes_raise_at_load(fitted, value):
    hostile = pickle.loads(pickle.dumps(fitted))
    hostile.__dict__["classes_"] = value
    with pytest.raises(ValueError, match="classes_ must be distinct"):
        pickle.loads(pickle.dumps(hostile))


def test_finite_but_huge_weights_raise_at_load(fitted):
    with pytest.raises(ValueError, match="magnitude 3e\\+38"):
        pickle.loads(_edited_pickle(fitted, leaf_hidden_weights=lambda a: np.full_like(a, 3e38)))


def test_nan_classes_in_a_skops_file_raise_at_load(fitted):
    sio = pytest.importorskip("skops.io")
    from fffsklearn import skops_trusted_types

    nan_classes = np.r_[np.nan, np.arange(1.0, 10.0)]
    hostile = _skops_with(sio.dumps(fitted), replace_attribute=("classes_", nan_classes))
    with pytest.raises(ValueError, match="classes_ must be distinct"):
        sio.loads(hostile, trusted=skops_trusted_types())


def test_a_fit_too_large_for_memory_is_refused_up_front(cancer, monkeypatch):
    X, y = cancer
    monkeypatch.setattr(Trainer, "run_epoch", lambda *args: pytest.fail("fit started"))
    with pytest.raises(ValueError, match=r"depth=20, leaf_width=16 .* needs about \d+\.\d GiB"):
        FFFClassifier(depth=20).fit(X[:300], y[:300])


def test_a_deep_fit_stays_within_its_memory_estimate():
    from fffsklearn._testing import PeakSampler, anonymous_rss_bytes
    from fffsklearn._training import training_memory_bytes

    rng = np.random.default_rng(0)
    # More features than the classifier's projection rank (32): its first layers are thinner
    # than the exported ones.
    X, y = rng.standard_normal((300, 40)), rng.integers(0, 2, 300)
    FFFClassifier(depth=2, max_iter=1).fit(X, y)  # torch allocates its pools once
    baseline = anonymous_rss_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with PeakSampler() as sampler:
            FFFClassifier(depth=12, max_iter=2, device="cpu").fit(X, y)
    assert sampler.peak - baseline <= training_memory_bytes(40, 2, 12, 16, 16, 200,
                                                            projection_rank=32)


# ----------------------------------------------------------- reliability III (issue #37)
@pytest.mark.parametrize("change", [{"depth": 3}, {"leaf_width": 8}, {"master_leaf_width": 0},
                                    {"activation": "tanh"}])
@pytest.mark.parametrize("how", ["warm_start", "partial_fit"])
def test_continuing_a_fit_after_changing_the_network_shape_names_the_parameter(change, how, data):
    X, y = data
    model = FFFClassifier(depth=2, max_iter=2, warm_start=True, random_state=0).fit(X, y)
    before = model.predict_proba(X)
    model.set_params(**change)
    name = next(iter(change))
    with pytest.raises(ValueError, match=f"{name}=.*differs from the fitted network.*"
                                         "warm_start=False"):
        model.fit(X, y) if how == "warm_start" else model.partial_fit(X, y)
    np.testing.assert_array_equal(model.predict_proba(X), before)
    model.set_params(warm_start=False).fit(X, y)  # afresh, the new shape trains
    assert model.arrays_.__getattribute__(name) == change[name]


@pytest.mark.parametrize("weight", [np.nan, np.inf, -1.0])
def test_non_finite_or_negative_class_weights_are_refused_up_front(weight, fitted, data):
    X, y = data
    model = pickle.loads(pickle.dumps(fitted))
    before = model.predict_proba(X)
    with pytest.raises(ValueError, match="class_weight must give every class a finite"):
        model.set_params(class_weight={0: weight}).fit(X, y)
    np.testing.assert_array_equal(model.predict_proba(X), before)


def test_validation_rows_a_score_cannot_use_are_refused():
    X, y = make_regression(n_samples=200, n_features=4, random_state=0)
    model = FFFRegressor(early_stopping=True, max_iter=3)
    with pytest.raises(ValueError, match="X_val has 1 row; scoring it needs at least 2"):
        model.fit(X, y, X_val=X[:1], y_val=y[:1])
    with pytest.raises(ValueError, match="sample_weight_val must be non-negative"):
        model.fit(X, y, X_val=X[:20], y_val=y[:20], sample_weight_val=-np.ones(20))


@pytest.mark.parametrize("scale", [1e-38, 1e-50, 1e300])
def test_uniform_sample_weights_of_any_size_train_the_unweighted_model(scale):
    X, y = make_regression(n_samples=200, n_features=5, noise=1.0, random_state=0)
    unweighted = FFFRegressor(depth=2, max_iter=5, random_state=0).fit(X, y)
    weighted = FFFRegressor(depth=2, max_iter=5, random_state=0).fit(
        X, y, sample_weight=np.full(len(y), scale)
    )
    np.testing.assert_array_equal(weighted.predict(X), unweighted.predict(X))


@pytest.mark.parametrize(
    "params, named",
    [({"input_noise": 1e30}, r"input_noise=1e\+30 is too large"),
     ({"learning_rate_init": 1e10}, r"learning_rate_init=1e\+10 is too large")],
)
def test_a_diverging_fit_names_the_setting_that_diverged(params, named):
    X, y = make_regression(n_samples=200, n_features=5, random_state=0)
    with pytest.raises(FloatingPointError, match=named):
        FFFRegressor(depth=2, max_iter=5, random_state=0, **params).fit(X, y)


def _timestamp_like_data(n=2000, offset=1e8, seed=0):
    """One informative feature of unit spread around ``offset``: float32 rounds it to
    steps of 8 there, so only rows centred before the cast keep the signal."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    y = (X[:, 0] > 0).astype(int)
    X[:, 0] += offset
    return X, y


def test_a_feature_far_from_zero_trains_and_predicts_as_if_centred():
    X, y = _timestamp_like_data()
    X_test, y_test = _timestamp_like_data(seed=1)
    model = FFFClassifier(depth=2, random_state=0).fit(X, y)
    scaled = make_pipeline(StandardScaler(), FFFClassifier(depth=2, random_state=0)).fit(X, y)
    assert scaled.score(X_test, y_test) > 0.95
    assert model.score(X_test, y_test) >= scaled.score(X_test, y_test) - 0.01
    # partial_fit and the rows given as float32 (already rounded) keep working.
    streamed = FFFClassifier(depth=2, random_state=0)
    for rows in np.array_split(np.arange(len(y)), 4) * 5:
        streamed.partial_fit(X[rows], y[rows], classes=[0, 1])
    assert streamed.score(X_test, y_test) > 0.9
    assert model.predict(X_test.astype(np.float32)).shape == (len(y_test),)
    # The torch module of the model centres float64 rows before its float32 weights too.
    import torch

    with torch.no_grad():
        logits = model.to_module().eval()(torch.as_tensor(X_test))
    assert (logits.argmax(1).numpy() == model.predict(X_test)).mean() > 0.99


def test_streaming_batches_unlike_the_first_warns_that_its_statistics_are_frozen():
    X, y = make_classification(n_samples=2000, n_features=6, random_state=0)
    batches = np.array_split(np.arange(len(y)), 10)
    representative = FFFClassifier(depth=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for rows in batches:
            representative.partial_fit(X[rows], y[rows], classes=[0, 1])
    X_constant_first = X.copy()
    X_constant_first[batches[0], 0] = 3.0  # one value in the first batch only
    model = FFFClassifier(depth=2, random_state=0)
    model.partial_fit(X_constant_first[batches[0]], y[batches[0]], classes=[0, 1])
    with pytest.warns(UserWarning, match=r"partial_fit: feature\(s\) 0 of this batch"):
        model.partial_fit(X_constant_first[batches[1]], y[batches[1]])
    drifting = X.copy()
    drifting[batches[1], 2] += 1e3
    model = FFFClassifier(depth=2, random_state=0).partial_fit(
        drifting[batches[0]], y[batches[0]], classes=[0, 1]
    )
    with pytest.warns(UserWarning, match=r"feature\(s\) 2 of this batch"):
        model.partial_fit(drifting[batches[1]], y[batches[1]])


class _SwitchIntervalSeen(EpochCallback):
    """Records the interpreter's switch interval at the end of every epoch."""

    def __init__(self):
        self.seen = []

    def epoch_end(self, epoch, fitted_estimator):
        self.seen.append(sys.getswitchinterval())


def test_a_background_fit_beside_a_serving_thread_waits_briefly_for_the_gil():
    """Every torch operation releases the GIL; beside a thread that serves predictions
    without pause, each one used to wait a whole switch interval (5 ms) to take it back, and
    a fit of 0.03 s took minutes. During a fit the interval is short, and it comes back
    after, also when fits overlap in threads or one fails. (The slowdown itself is measured
    by ``benchmarks/bench_gil.py``: tests assert no timings.)"""
    from fffsklearn._device import TRAINING_SWITCH_INTERVAL

    X, y = make_regression(n_samples=300, n_features=5, random_state=0)
    before = sys.getswitchinterval()
    assert before > TRAINING_SWITCH_INTERVAL
    seen = _SwitchIntervalSeen()
    FFFRegressor(depth=2, max_iter=3, random_state=0).set_callbacks(seen).fit(X, y)
    assert seen.seen and max(seen.seen) <= TRAINING_SWITCH_INTERVAL
    assert sys.getswitchinterval() == before
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda seed: FFFRegressor(depth=2, max_iter=5, random_state=seed).fit(
            X, y), range(6)))
    assert sys.getswitchinterval() == before
    with pytest.raises(ValueError):
        FFFRegressor(depth=2).fit(X, y, sample_weight=-np.ones(len(y)))
    assert sys.getswitchinterval() == before
