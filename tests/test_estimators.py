"""What users of the estimators rely on: pipelines, searches, persistence, errors, training."""

import copy
import pickle
import warnings
from concurrent.futures import ThreadPoolExecutor

import joblib
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits, make_blobs, make_classification, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fffsklearn import FFFArrays, FFFClassifier, FFFRegressor, inference
from fffsklearn._device import prediction_options
from fffsklearn._network import FFFNetwork
from fffsklearn._testing import EpochCallback
from fffsklearn._training import Trainer


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    return train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)


@pytest.fixture(scope="module")
def fitted_classifier(digits):
    X_train, _, y_train, _ = digits
    return FFFClassifier(depth=3, max_iter=30, random_state=0).fit(X_train, y_train)


@pytest.fixture(scope="module")
def fitted_regressor():
    X, y = make_regression(n_samples=300, n_features=8, noise=1.0, random_state=0)
    return FFFRegressor(depth=2, max_iter=30, random_state=0).fit(X, y), X


def test_grid_search_over_a_pipeline():
    X, y = make_blobs(n_samples=240, centers=3, n_features=6, random_state=0)
    search = GridSearchCV(
        make_pipeline(StandardScaler(), FFFClassifier(max_iter=20, random_state=0)),
        {"fffclassifier__depth": [1, 3], "fffclassifier__leaf_width": [4, 8]},
        cv=3,
        n_jobs=2,
    ).fit(X, y)
    assert len(search.cv_results_["params"]) == 4
    assert search.best_score_ > 0.9
    assert search.predict(X).shape == (240,)


def test_cross_val_score_and_clone():
    X, y = make_blobs(n_samples=150, centers=2, random_state=1)
    model = FFFClassifier(depth=2, max_iter=20, random_state=0)
    scores = cross_val_score(model, X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.9
    copy = clone(model)
    assert copy.get_params() == model.get_params() and not hasattr(copy, "arrays_")


@pytest.mark.parametrize("dump_load", ["pickle", "joblib"])
def test_persistence_round_trip(fitted_classifier, digits, tmp_path, dump_load):
    _, X_test, _, _ = digits
    if dump_load == "pickle":
        loaded = pickle.loads(pickle.dumps(fitted_classifier))
    else:
        joblib.dump(fitted_classifier, tmp_path / "model.joblib")
        loaded = joblib.load(tmp_path / "model.joblib")
    np.testing.assert_array_equal(
        loaded.predict_proba(X_test), fitted_classifier.predict_proba(X_test)
    )
    np.testing.assert_array_equal(loaded.apply(X_test), fitted_classifier.apply(X_test))
    assert "_trainer" not in loaded.__dict__


@pytest.mark.parametrize(
    "edits, message",
    [
        ({"_fffsklearn_state_format": -1}, "state format -1.*refit"),
        ({"_fffsklearn_version": "0.0.1"}, "saved by fffsklearn 0.0.1.*same"),
        ({"_fffsklearn_version": None, "_fffsklearn_state_format": None}, "format None"),
    ],
)
def test_loading_a_model_of_another_version_warns(fitted_classifier, digits, edits, message):
    from fffsklearn import InconsistentFFFVersionWarning

    state = fitted_classifier.__getstate__()
    for key, value in edits.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    fresh = FFFClassifier.__new__(FFFClassifier)
    with pytest.warns(InconsistentFFFVersionWarning, match=message):
        fresh.__setstate__(state)
    np.testing.assert_array_equal(fresh.predict(digits[1]), fitted_classifier.predict(digits[1]))


def test_loading_a_model_of_this_version_does_not_warn(fitted_classifier):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pickle.loads(pickle.dumps(fitted_classifier))


def test_same_random_state_same_model(digits):
    X_train, X_test, y_train, _ = digits
    a = FFFClassifier(depth=2, max_iter=5, random_state=3).fit(X_train, y_train)
    b = FFFClassifier(depth=2, max_iter=5, random_state=3).fit(X_train, y_train)
    np.testing.assert_array_equal(a.predict_proba(X_test), b.predict_proba(X_test))
    c = FFFClassifier(depth=2, max_iter=5, random_state=4).fit(X_train, y_train)
    assert not np.array_equal(a.predict_proba(X_test), c.predict_proba(X_test))


def test_digits_accuracy_and_leaf_usage(fitted_classifier, digits):
    _, X_test, _, y_test = digits
    assert fitted_classifier.score(X_test, y_test) > 0.9
    counts = fitted_classifier.leaf_sample_counts_
    assert counts.shape == (8,) and counts.sum() == len(digits[0]) and (counts > 0).all()
    proba = fitted_classifier.predict_proba(X_test)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(
        fitted_classifier.predict(X_test), fitted_classifier.classes_[proba.argmax(axis=1)]
    )
    np.testing.assert_allclose(np.exp(fitted_classifier.predict_log_proba(X_test)), proba)


def _confident_network(rng, depth=3, n_features=5):
    network = FFFNetwork(n_features, 2, depth, 4, 3, "tanh", random_state=0)
    arrays = network.to_arrays()
    state = arrays.__getstate__()
    # Large node weights and rows far from every hyperplane: every decision has p near 0 or 1.
    state["node_weights"] = state["node_weights"] * 1e4
    network.load_arrays(type(arrays)(state.pop("depth"), state.pop("activation"), **state))
    return network, network.to_arrays()


def test_soft_and_hard_outputs_agree_when_decisions_are_confident(rng):
    network, arrays = _confident_network(rng)
    X = rng.standard_normal((500, 5)).astype(np.float32)
    network.eval()
    with torch.no_grad():
        soft = network.soft_forward(torch.from_numpy(X), straight_through=False)
    hard_outputs, leaves = inference.hard_forward(arrays, X)
    right = soft.right_probabilities.numpy()
    confident = np.minimum(right, 1 - right).max(axis=1) < 1e-6
    assert confident.mean() > 0.9
    np.testing.assert_allclose(soft.outputs.numpy()[confident], hard_outputs[confident], atol=1e-4)
    np.testing.assert_array_equal(soft.hard_one_hot.numpy().argmax(1), leaves)


def test_apply_is_the_path_of_the_hard_forward(fitted_classifier, digits):
    _, X_test, _, _ = digits
    arrays = fitted_classifier.arrays_
    leaves = fitted_classifier.apply(X_test)
    X64 = X_test.astype(np.float32).astype(np.float64)
    for row, leaf in zip(X64[:50], leaves[:50]):
        node = 0
        for level in range(arrays.depth):
            went_right = row @ arrays.node_weights[node] + arrays.node_biases[node] > 0
            bit = (leaf >> (arrays.depth - 1 - level)) & 1
            assert bit == went_right
            node = 2 * node + 1 + went_right
    # The leaf's MLP plus the master's is what predict_proba reports.
    outputs, _ = inference.hard_forward(arrays, X_test)
    np.testing.assert_allclose(
        np.log(fitted_classifier.predict_proba(X_test)),
        outputs - np.log(np.exp(outputs.astype(np.float64)).sum(1, keepdims=True)),
        atol=1e-5,
    )


BAD_X = {
    "nan": lambda X: np.where(np.arange(X.size).reshape(X.shape) == 3, np.nan, X),
    "inf": lambda X: np.where(np.arange(X.size).reshape(X.shape) == 3, np.inf, X),
    "wrong feature count": lambda X: X[:, :-1],
    "empty": lambda X: X[:0],
    "strings": lambda X: np.full(X.shape, "a", dtype=object),
    "sparse with a NaN": lambda X: sp.csr_matrix(
        np.where(np.arange(X.size).reshape(X.shape) == 3, np.nan, X)
    ),
    "3-D": lambda X: X[:, :, None],
}


BAD_INPUT_CASES = [
    (corrupt, method)
    for corrupt in BAD_X
    for method in ("predict", "predict_proba", "apply", "score", "fit")
    # Fitting on fewer features is a valid new fit, not bad input.
    if not (corrupt == "wrong feature count" and method == "fit")
]


@pytest.mark.parametrize("corrupt, method", BAD_INPUT_CASES)
def test_bad_input_raises_and_loses_nothing(fitted_classifier, digits, corrupt, method):
    X_train, X_test, y_train, y_test = digits
    model = pickle.loads(pickle.dumps(fitted_classifier))
    before = model.predict_proba(X_test)
    bad = BAD_X[corrupt](X_test[:20] if method != "fit" else X_train[:60])
    y = y_test[:20] if method != "fit" else y_train[:60]
    with pytest.raises((ValueError, TypeError)):
        args = (bad, y) if method in ("score", "fit") else (bad,)
        getattr(model, method)(*args)
    np.testing.assert_array_equal(model.predict_proba(X_test), before)
    assert model.n_features_in_ == X_test.shape[1]


@pytest.mark.parametrize(
    "bad_y, sample_weight, message",
    [
        ("nan", None, "NaN|nan"),
        ("continuous", None, "Unknown label type"),
        (None, "zeros", "non-zero"),
        (None, "negative", "non-negative"),
    ],
)
def test_bad_targets_and_weights_raise_and_lose_nothing(
    fitted_classifier, digits, bad_y, sample_weight, message
):
    X_train, X_test, y_train, _ = digits
    model = pickle.loads(pickle.dumps(fitted_classifier))
    before = model.predict_proba(X_test)
    y = y_train[:60].astype(float)
    if bad_y == "nan":
        y[5] = np.nan
    elif bad_y == "continuous":
        y = y + 0.5
    weights = {"zeros": np.zeros(60), "negative": -np.ones(60), None: None}[sample_weight]
    with pytest.raises(ValueError, match=message):
        model.fit(X_train[:60], y, sample_weight=weights)
    np.testing.assert_array_equal(model.predict_proba(X_test), before)


def test_sample_weight_is_not_mutated_and_changes_the_fit(digits):
    X_train, _, y_train, _ = digits
    weights = np.ones(len(y_train))
    weights[y_train == 0] = 0.0
    original = weights.copy()
    model = FFFClassifier(depth=1, max_iter=10, random_state=0).fit(X_train, y_train, weights)
    np.testing.assert_array_equal(weights, original)
    unweighted = FFFClassifier(depth=1, max_iter=10, random_state=0).fit(X_train, y_train)
    assert (model.predict(X_train) == 0).sum() < (unweighted.predict(X_train) == 0).sum()


def test_regressor_multi_output_and_integer_targets():
    X, y = make_regression(n_samples=200, n_features=5, n_targets=3, random_state=0)
    model = FFFRegressor(depth=2, max_iter=20, random_state=0).fit(X, y)
    assert model.predict(X).shape == (200, 3) and model.n_outputs_ == 3
    assert model.score(X, y) > 0.5
    y_int = np.round(y[:, 0]).astype(np.int64)
    from_int = FFFRegressor(depth=2, max_iter=5, random_state=0).fit(X, y_int)
    from_float = FFFRegressor(depth=2, max_iter=5, random_state=0).fit(X, y_int.astype(float))
    np.testing.assert_array_equal(from_int.predict(X), from_float.predict(X))
    assert from_int.predict(X).shape == (200,)


def test_regressor_persistence_and_apply(fitted_regressor):
    model, X = fitted_regressor
    loaded = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert set(np.unique(model.apply(X))) <= set(range(4))
    assert not hasattr(model, "predict_proba")


def test_partial_fit_and_warm_start_continue_training(digits):
    X_train, X_test, y_train, y_test = digits
    model = FFFClassifier(depth=2, random_state=0)
    with pytest.raises(ValueError, match="classes"):
        model.partial_fit(X_train, y_train)
    classes = np.unique(y_train)
    for epoch in range(1, 4):
        model.partial_fit(X_train, y_train, classes=classes)
        assert model.n_iter_ == epoch and len(model.loss_curve_) == epoch
    assert model.loss_curve_[-1] < model.loss_curve_[0]
    with pytest.raises(ValueError, match="not in classes_"):
        model.partial_fit(X_train[:5], np.full(5, 42))
    assert model.n_iter_ == 3

    warm = FFFClassifier(depth=2, max_iter=3, warm_start=True, random_state=0).fit(X_train, y_train)
    first = warm.score(X_test, y_test)
    warm.fit(X_train, y_train)
    assert warm.n_iter_ == 6 and len(warm.loss_curve_) == 6
    assert warm.score(X_test, y_test) >= first - 0.05

    with pytest.raises(ValueError, match="early_stopping"):
        FFFClassifier(early_stopping=True).partial_fit(X_train, y_train, classes=classes)


def test_early_stopping_hardens_the_best_balancing_weights(digits):
    X_train, _, y_train, _ = digits
    model = FFFClassifier(
        depth=2, early_stopping=True, n_iter_no_change=3, max_iter=200, random_state=0
    ).fit(X_train, y_train)
    assert model.n_iter_ < 200
    assert len(model.validation_scores_) == model.n_iter_
    balancing_scores = model.validation_scores_[: -model.hardening_epochs]
    assert model.best_validation_score_ == max(balancing_scores)
    # Balancing ended on a plateau: its last n_iter_no_change + 1 epochs did not improve.
    assert max(balancing_scores[-4:]) <= max(balancing_scores[:-4]) + model.tol
    assert model.best_loss_ is None


def test_hardening_phase_makes_the_soft_mixture_the_hard_model(digits):
    X_train, X_test, y_train, _ = digits
    X_test = X_test.astype(np.float32)
    # Without the input projection, whose soft mixture here already routes closer to the
    # hard model, so that the phase has a difference to remove.
    models = {
        epochs: FFFClassifier(
            depth=3, hardening_epochs=epochs, max_iter=64, n_iter_no_change=64,
            projection_rank=None, device="cpu", random_state=0,
        ).fit(X_train, y_train)
        for epochs in (0, 16)
    }
    on_hard_leaf, probability_gap, disagreement = {}, {}, {}
    for epochs, model in models.items():
        with torch.no_grad():
            soft = FFFNetwork.from_arrays(model.arrays_).soft_forward(
                torch.from_numpy(X_test), straight_through=False
            )
        leaves = model.apply(X_test)
        on_hard_leaf[epochs] = soft.leaf_probabilities.numpy()[np.arange(len(leaves)), leaves]
        soft_proba = torch.softmax(soft.outputs, dim=1).numpy()
        probability_gap[epochs] = np.abs(soft_proba - model.predict_proba(X_test)).max()
        disagreement[epochs] = np.mean(soft_proba.argmax(1) != model.predict(X_test))
        assert model.n_iter_ == 64
    # 16 doublings of the routing logits: the soft mixture then routes like predict (a
    # mixture over the path probabilities before; measured 0.17 on the hard leaf, and
    # probabilities up to 0.40 apart).
    assert on_hard_leaf[0].mean() < 0.5 and on_hard_leaf[16].mean() > 0.99
    assert probability_gap[16] <= 0.01 < 0.1 < probability_gap[0]
    assert disagreement[16] <= 0.01


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_hardening_freezes_the_routing_and_partial_fit_releases_it(digits):
    X_train, _, y_train, _ = digits
    balanced = FFFClassifier(depth=3, max_iter=12, hardening_epochs=0, random_state=0)
    hardened = clone(balanced).set_params(max_iter=16, hardening_epochs=4)
    balanced.fit(X_train, y_train)
    hardened.fit(X_train, y_train)
    # The same 12 balancing epochs, then 4 hardening epochs that only sharpen (once each) the
    # routing while the leaves keep training.
    after, before = hardened.arrays_, balanced.arrays_
    np.testing.assert_array_equal(after.node_weights, 16 * before.node_weights)
    np.testing.assert_array_equal(after.node_biases, 16 * before.node_biases)
    assert not np.array_equal(after.leaf_hidden_weights, before.leaf_hidden_weights)

    routing = hardened.arrays_.node_weights.copy()
    hardened.partial_fit(X_train, y_train)
    changed = hardened.arrays_.node_weights != routing
    assert changed.mean() > 0.5


@pytest.mark.parametrize(
    "task, mean_squared_residual, n_outputs, expected",
    [
        ("regression", 0.5, 1, 1.0),  # a noisy fit: full regularisation
        ("regression", 0.02, 1, 0.1),  # a close fit: a tenth of it
        ("regression", 0.02, 3, 0.1),  # per target, not summed over targets
        ("classification", 0.02, 1, 1.0),
    ],
)
def test_regularisers_fade_only_for_a_close_regression_fit(
    task, mean_squared_residual, n_outputs, expected
):
    Estimator = FFFRegressor if task == "regression" else FFFClassifier
    loss = Estimator(depth=2)._recipe(100, incremental=False).loss
    # The regression data loss is half the squared error summed over the targets.
    data_loss = torch.tensor(0.5 * mean_squared_residual * n_outputs)
    y = torch.zeros((8, n_outputs))
    assert loss.regulariser_weight(data_loss, y) == pytest.approx(expected)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_warm_started_fit_uses_changed_hyper_parameters(digits):
    X_train, _, y_train, _ = digits
    model = FFFClassifier(depth=2, max_iter=3, hardening_epochs=0, random_state=0)
    model.fit(X_train, y_train)
    model.set_params(warm_start=True, learning_rate_init=1e-4, load_balancing=0.0)
    model.fit(X_train, y_train)
    trainer = model._trainer
    assert trainer.optimizer.learning_rates()[0] == 1e-4
    assert trainer.recipe.load_balancing == 0.0


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_sharpening_doubles_the_logits_and_keeps_the_routing(digits):
    from fffsklearn._phases import _SHARPEN_CAP, sharpen_routing

    X_train, X_test, y_train, _ = digits
    model = FFFClassifier(depth=3, max_iter=2, hardening_epochs=0, random_state=0)
    model.fit(X_train, y_train)
    trainer = model._trainer
    before = trainer.network.node_weights.detach().clone()
    sharpen_routing(trainer.network)
    after = trainer.network.to_arrays()
    np.testing.assert_array_equal(after.node_weights, 2 * before.cpu().numpy())
    np.testing.assert_array_equal(
        inference.apply(trainer.deployed(after), X_test), model.apply(X_test)
    )
    with torch.no_grad():
        trainer.network.node_weights.fill_(_SHARPEN_CAP)
    sharpen_routing(trainer.network)  # at the cap: no further growth, so no float32 overflow
    assert trainer.network.node_weights.max().item() == _SHARPEN_CAP


def test_convergence_warning_when_max_iter_is_reached(digits):
    from sklearn.exceptions import ConvergenceWarning

    X_train, _, y_train, _ = digits
    with pytest.warns(ConvergenceWarning):
        FFFClassifier(depth=1, max_iter=2, random_state=0).fit(X_train, y_train)


def test_verbose_reports_loss_and_leaves(digits, capsys):
    X_train, _, y_train, _ = digits
    FFFClassifier(depth=2, max_iter=2, verbose=1, random_state=0).fit(X_train, y_train)
    out = capsys.readouterr()
    assert "loss =" in out.out + out.err and "leaves used =" in out.out + out.err


def test_cuda_request_without_a_gpu_raises_at_fit(digits):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    X_train, _, y_train, _ = digits
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ValueError, match="CUDA"):
            FFFClassifier(device=device, max_iter=1).fit(X_train, y_train)
    with pytest.raises(ValueError, match="device"):
        FFFClassifier(device="tpu", max_iter=1).fit(X_train, y_train)
    model = FFFClassifier(max_iter=1).fit(X_train, y_train)
    assert model.device_ == "cpu"


def test_backends_and_threads_give_the_same_predictions(fitted_classifier, digits):
    _, X_test, _, _ = digits
    compiled = inference.hard_forward(fitted_classifier.arrays_, X_test, backend="compiled")
    reference = inference.hard_forward(fitted_classifier.arrays_, X_test, backend="reference")
    np.testing.assert_array_equal(compiled[1], reference[1])
    np.testing.assert_allclose(compiled[0], reference[0], rtol=1e-5, atol=1e-5)
    one = copy.deepcopy(fitted_classifier).set_params(n_jobs=1)
    np.testing.assert_array_equal(
        one.predict_proba(X_test), fitted_classifier.predict_proba(X_test)
    )


def test_cpu_inference_uses_the_compiled_kernel(fitted_classifier):
    options = prediction_options("cpu", fitted_classifier.n_jobs)
    assert options["backend"] == "compiled"
    if not torch.cuda.is_available():
        assert prediction_options(fitted_classifier.device, None)["backend"] == "compiled"


def test_concurrent_predict_matches_serial(fitted_classifier, digits):
    _, X_test, _, _ = digits
    expected = fitted_classifier.predict_proba(X_test)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: fitted_classifier.predict_proba(X_test), range(40)))
    for result in results:
        np.testing.assert_array_equal(result, expected)


def test_float32_float64_and_fortran_inputs_agree(fitted_classifier, digits):
    _, X_test, _, _ = digits
    expected = fitted_classifier.predict_proba(X_test.astype(np.float32))
    for X in (X_test, np.asfortranarray(X_test), np.asfortranarray(X_test.astype(np.float32))):
        np.testing.assert_array_equal(fitted_classifier.predict_proba(X), expected)


@pytest.mark.slow
def test_predict_on_a_large_memmap_needs_only_the_output(tmp_path):
    from fffsklearn._testing import PeakSampler, anonymous_rss_bytes, random_arrays

    rng = np.random.default_rng(0)
    n_rows, n_features = 2_000_000, 100
    X = np.lib.format.open_memmap(
        tmp_path / "X.npy", mode="w+", dtype=np.float32, shape=(n_rows, n_features)
    )
    for start in range(0, n_rows, 500_000):
        X[start : start + 500_000] = rng.standard_normal((500_000, n_features), np.float32)
    X.flush()
    X = np.load(tmp_path / "X.npy", mmap_mode="r")
    arrays = random_arrays(rng, 6, n_features, 16, 16, 10)
    model = FFFClassifier.from_network(arrays, X[:1000], classes=np.arange(10))
    for method, output_bytes in (("predict", n_rows * 8), ("predict_proba", n_rows * 80)):
        baseline = anonymous_rss_bytes()
        with PeakSampler() as sampler:
            getattr(model, method)(X)
        assert sampler.peak - baseline <= output_bytes + 50 * 2**20, method


# --------------------------------------------------------------------- input standardisation
def _unscaled_digits():
    """Digits as a user may bring them: pixel counts scaled by 1,000 around an offset."""
    X, y = load_digits(return_X_y=True)
    X = X * 1000.0 + 5000.0
    X[:, 0] = 7.0  # a constant feature
    return train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)


def test_standardize_trains_on_unscaled_inputs_and_predicts_raw_rows():
    X_train, X_test, y_train, y_test = _unscaled_digits()
    model = FFFClassifier(max_iter=30, random_state=0).fit(X_train, y_train)
    assert model.score(X_test, y_test) > 0.9
    # arrays_ take raw rows: every backend reads them as any other model.
    outputs, leaves = inference.hard_forward(model.arrays_, X_test.astype(np.float32))
    np.testing.assert_array_equal(model.predict(X_test), model.classes_[outputs.argmax(1)])
    np.testing.assert_array_equal(model.apply(X_test), leaves)
    assert all(np.isfinite(getattr(model.arrays_, name)).all() for name in FFFArrays.ARRAY_NAMES)


def test_standardize_gives_the_model_of_a_scaler_in_front():
    X_train, X_test, y_train, _ = _unscaled_digits()
    inside = FFFClassifier(max_iter=5, random_state=0).fit(X_train, y_train)
    in_front = make_pipeline(
        StandardScaler(), FFFClassifier(max_iter=5, random_state=0, standardize=False)
    ).fit(X_train, y_train)
    # The two scalings round differently in float32; after a few epochs the routing of the
    # odd row near a boundary differs, and with it a little of the training that follows.
    proba_inside, proba_in_front = inside.predict_proba(X_test), in_front.predict_proba(X_test)
    assert np.abs(proba_inside - proba_in_front).mean() < 2e-3
    assert np.mean(proba_inside.argmax(axis=1) == proba_in_front.argmax(axis=1)) >= 0.99
    same_leaf = inside.apply(X_test) == in_front[-1].apply(in_front[0].transform(X_test))
    assert same_leaf.mean() >= 0.97


def test_standardize_statistics_come_from_the_first_call():
    X_train, _, y_train, _ = _unscaled_digits()
    model = FFFClassifier(random_state=0)
    model.partial_fit(X_train[:500], y_train[:500], classes=np.arange(10))
    first = model.predict_proba(X_train[500:600])
    mean, scale = model._preparation.mean_.copy(), model._preparation.scale_.copy()
    with pytest.warns(UserWarning, match="partial_fit: feature"):  # other statistics: unused
        model.partial_fit(X_train[500:] * 3.0, y_train[500:])
    np.testing.assert_array_equal(model._preparation.mean_, mean)
    np.testing.assert_array_equal(model._preparation.scale_, scale)
    assert not np.allclose(model.predict_proba(X_train[500:600]), first)


@pytest.mark.parametrize("projection_rank", [None, 64, 5])
def test_warm_start_continues_from_the_folded_arrays(projection_rank):
    X_train, X_test, y_train, _ = _unscaled_digits()
    model = FFFClassifier(max_iter=8, projection_rank=projection_rank, random_state=0)
    model.fit(X_train, y_train)
    before = model.predict_proba(X_test)
    # A learning rate too small to move any weight: the warm start must restore the network
    # exactly from arrays_, undoing the folded scaling (and factorising the first layers
    # again, to float32 rounding, under a projection of lower rank than the features).
    model.set_params(warm_start=True, learning_rate_init=1e-12, max_iter=4).fit(X_train, y_train)
    np.testing.assert_allclose(model.predict_proba(X_test), before, atol=5e-5)


def test_early_stopping_hardens_the_best_epoch_and_partial_fit_goes_on(digits):
    X_train, X_test, y_train, y_test = digits
    model = FFFClassifier(depth=3, early_stopping=True, random_state=0)
    model.fit(X_train, y_train)
    # The hardening started from the best balancing epoch's weights.
    assert model.best_validation_score_ == max(model.validation_scores_[: -model.hardening_epochs])
    assert model.score(X_test, y_test) > 0.9
    model.set_params(early_stopping=False).partial_fit(X_train, y_train)
    assert model.score(X_test, y_test) > 0.9


def _record_training_batches(monkeypatch):
    """The list that every training step's input rows will be appended to."""
    seen = []
    step = Trainer._accumulated_step

    def spy(self, X_batch, *args):
        seen.append(X_batch.cpu().numpy().copy())
        return step(self, X_batch, *args)

    monkeypatch.setattr(Trainer, "_accumulated_step", spy)
    return seen


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("standardize", [True, False])
def test_input_noise_is_a_fraction_of_each_features_spread(standardize, compiled, monkeypatch):
    """The rows that reach the training steps carry Gaussian noise of ``input_noise`` times
    each feature's standard deviation; a constant feature gets none. Both the C extension's
    noise (on the CPU) and torch's (on the GPU where there is one)."""
    from fffsklearn import _training

    if compiled and _training._training_kernel is None:
        pytest.skip("the C training extension is not built")
    if not compiled:
        monkeypatch.setattr(_training, "_compiled", lambda tensor: False)
    rng = np.random.default_rng(0)
    n = 4000
    # Two levels per feature, so that a noisy value's level can be told and subtracted.
    levels = np.array([[0.0, 0.0, 7.0], [1.0, 50.0, 7.0]])
    X = levels[rng.integers(0, 2, (n, 3)), [0, 1, 2]].astype(np.float32)
    y = rng.integers(0, 2, n)
    seen = _record_training_batches(monkeypatch)
    model = FFFClassifier(depth=1, max_iter=1, input_noise=0.1, standardize=standardize,
                          device="cpu" if compiled else "auto", random_state=0).fit(X, y)
    rows = np.concatenate(seen)
    assert rows.shape == X.shape
    if standardize:
        levels = (levels - model._preparation.mean_) / model._preparation.scale_
    nearest = np.abs(rows[:, None, :] - levels[None, :, :]).argmin(axis=1)
    noise = rows - levels[nearest, [0, 1, 2]]
    # Both levels equally often: a feature's standard deviation is half its step.
    expected = 0.1 * np.abs(levels[1] - levels[0]) / 2
    np.testing.assert_allclose(noise[:, :2].std(axis=0), expected[:2], rtol=0.05)
    assert (np.abs(noise[:, :2].mean(axis=0)) < 0.2 * expected[:2]).all()
    assert not noise[:, 2].any()  # the constant feature


def test_input_noise_zero_trains_on_the_rows_as_given(monkeypatch):
    X = np.random.default_rng(0).standard_normal((300, 3)).astype(np.float32)
    seen = _record_training_batches(monkeypatch)
    FFFClassifier(depth=1, max_iter=1, input_noise=0.0, standardize=False, random_state=0).fit(
        X, X[:, 0] > 0
    )
    np.testing.assert_array_equal(np.sort(np.concatenate(seen), axis=0), np.sort(X, axis=0))


def test_label_smoothing_softens_the_probabilities_until_hardening():
    """Balancing fits targets of 1 - 0.4 + 0.4 / 2 = 0.8 on two classes that a line
    separates; hardening then fits the plain log-loss, which makes the model surer again.
    The L2 penalty is kept negligible, so that the targets alone set the confidence."""
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(-3, 1, (300, 2)), rng.normal(3, 1, (300, 2))])
    y = np.repeat([0, 1], 300)

    def confidence(**params):
        model = FFFClassifier(depth=1, max_iter=200, alpha=1e-4, random_state=0,
                              **params).fit(X, y)
        return model.predict_proba(X).max(axis=1).mean()

    assert confidence(label_smoothing=0.0, hardening_epochs=0) > 0.98
    softened = confidence(label_smoothing=0.4, hardening_epochs=0)
    assert softened == pytest.approx(0.8, abs=0.02)
    assert confidence(label_smoothing=0.4, hardening_epochs=16) > softened + 0.05


def test_input_statistics_are_weighted_and_streamed(monkeypatch):
    from fffsklearn import _preparation

    rng = np.random.default_rng(0)
    X = (rng.standard_normal((1000, 4)) * [1.0, 100.0, 0.0, 1e-3] + [0, 5e3, 2.0, 1e3]).astype(
        np.float32
    )
    weight = rng.integers(0, 3, 1000).astype(np.float64)
    monkeypatch.setattr(_preparation, "CHUNK_VALUES", 28)  # chunks of 7 rows
    mean, std = _preparation.input_statistics(X, weight)
    expected_mean = np.average(X.astype(np.float64), axis=0, weights=weight)
    expected_std = np.sqrt(np.average((X - expected_mean) ** 2, axis=0, weights=weight))
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(std[[0, 1, 3]], expected_std[[0, 1, 3]], rtol=1e-9)
    assert std[2] == 0.0
    scale = _preparation.standardizing_scale(std)
    np.testing.assert_array_equal(scale[[0, 1, 3]], std[[0, 1, 3]])
    assert scale[2] == 1.0  # constant: only centred


# ----------------------------------------------------------------------- class weights
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_class_weight_multiplies_the_sample_weights(digits):
    X_train, X_test, y_train, _ = digits
    class_weight = {0: 3.0, 1: 0.5, 7: 2.0}
    row_weight = np.array([class_weight.get(label, 1.0) for label in y_train])
    params = dict(depth=2, max_iter=4, random_state=0)
    weighted = FFFClassifier(class_weight=class_weight, **params).fit(
        X_train, y_train, sample_weight=np.full(len(y_train), 2.0)
    )
    by_rows = FFFClassifier(**params).fit(X_train, y_train, sample_weight=2.0 * row_weight)
    np.testing.assert_allclose(weighted.predict_proba(X_test), by_rows.predict_proba(X_test))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_balanced_class_weight_finds_more_of_a_rare_class():
    from sklearn.datasets import make_classification
    from sklearn.metrics import recall_score

    # 5% of 6,000 rows, barely separated: unweighted, the model almost never predicts the
    # rare class (recall near 0, every seed tried); balanced, it finds most of it.
    X, y = make_classification(n_samples=6000, n_features=10, weights=[0.95], class_sep=0.5,
                               random_state=0)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.5, random_state=0,
                                                        stratify=y)
    recall = {
        class_weight: recall_score(y_test, FFFClassifier(
            depth=2, max_iter=20, class_weight=class_weight, random_state=0
        ).fit(X_train, y_train).predict(X_test))
        for class_weight in (None, "balanced")
    }
    assert recall["balanced"] > recall[None] + 0.3


def test_partial_fit_takes_class_weights_as_a_dict_only(digits):
    X_train, _, y_train, _ = digits
    classes = np.unique(y_train)
    model = FFFClassifier(depth=1, class_weight="balanced", random_state=0)
    with pytest.raises(ValueError, match="'balanced' is not supported by partial_fit"):
        model.partial_fit(X_train, y_train, classes=classes)
    model.set_params(class_weight={0: 2.0}).partial_fit(X_train, y_train, classes=classes)
    assert model.n_iter_ == 1


# ---------------------------------------------------------------- validation data of one's own
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_early_stopping_scores_the_validation_rows_passed_to_fit(digits):
    X_train, X_test, y_train, y_test = digits
    weight_val = np.linspace(0.5, 2.0, len(y_test))
    model = FFFClassifier(depth=2, max_iter=8, early_stopping=True, random_state=0).fit(
        X_train, y_train, X_val=X_test, y_val=y_test, sample_weight_val=weight_val
    )
    # Every training row trains (nothing is held out of X), and the score of the last epoch
    # is the final model's weighted accuracy on the rows passed.
    assert model.leaf_sample_counts_.sum() == len(X_train)
    assert model.validation_scores_[-1] == pytest.approx(
        model.score(X_test, y_test, sample_weight=weight_val)
    )
    regressor = FFFRegressor(depth=1, max_iter=4, early_stopping=True, random_state=0)
    X, y = make_regression(n_samples=200, n_features=4, noise=1.0, random_state=0)
    regressor.fit(X[:150], y[:150], X_val=X[150:], y_val=y[150:])
    assert regressor.leaf_sample_counts_.sum() == 150
    assert regressor.validation_scores_[-1] == pytest.approx(
        regressor.score(X[150:], y[150:]), abs=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"X_val": "X"}, "X_val is provided, but y_val"),
        ({"y_val": "y"}, "y_val is provided, but X_val"),
        ({"sample_weight_val": "w"}, "sample_weight_val is provided"),
        ({"X_val": "X", "y_val": "y", "early_stopping": False}, "early_stopping=False"),
        ({"X_val": "X_narrow", "y_val": "y"}, "features"),
        ({"X_val": "X", "y_val": "y_unseen"}, "not in classes_"),
    ],
)
def test_bad_validation_data_raises_and_keeps_the_fitted_model(fitted_classifier, digits,
                                                                kwargs, message):
    X_train, X_test, y_train, _ = digits
    model = clone(fitted_classifier).set_params(early_stopping=True, warm_start=True)
    model.fit(X_train, y_train, X_val=X_test[:50], y_val=y_train[:50])
    before = model.predict_proba(X_test)
    values = {"X": X_test[:20], "X_narrow": X_test[:20, :5], "y": y_train[:20],
              "y_unseen": np.full(20, 99), "w": np.ones(20)}
    early_stopping = kwargs.pop("early_stopping", True)
    model.set_params(early_stopping=early_stopping)
    with pytest.raises(ValueError, match=message):
        model.fit(X_train, y_train, **{k: values[v] for k, v in kwargs.items()})
    np.testing.assert_array_equal(model.predict_proba(X_test), before)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_validation_rows_reach_the_estimator_through_metadata_routing(digits):
    import sklearn
    from sklearn.pipeline import Pipeline

    X_train, X_test, y_train, y_test = digits
    with sklearn.config_context(enable_metadata_routing=True):
        model = FFFClassifier(depth=1, max_iter=3, early_stopping=True, random_state=0)
        pipeline = Pipeline(
            [("scale", StandardScaler()),
             ("fff", model.set_fit_request(X_val=True, y_val=True))],
            transform_input=["X_val"],
        )
        pipeline.fit(X_train * 5.0, y_train, X_val=X_test * 5.0, y_val=y_test)
    fitted = pipeline.named_steps["fff"]
    assert fitted.leaf_sample_counts_.sum() == len(X_train)
    assert fitted.validation_scores_[-1] == pytest.approx(pipeline.score(X_test * 5.0, y_test))


# ------------------------------------------------------------------- scikit-learn callbacks
class _StopAfter(EpochCallback):
    """Asks to stop after epoch ``n`` and records its calls."""

    def __init__(self, n):
        self.n, self.calls = n, []

    def setup(self, estimator, context):
        self.calls.append("setup")

    def teardown(self, estimator, context):
        self.calls.append("teardown")

    def epoch_end(self, epoch, fitted_estimator):
        self.calls.append(fitted_estimator.n_features_in_)
        return epoch == self.n


def test_a_scoring_monitor_scores_every_epoch(digits):
    callback = pytest.importorskip("sklearn.callback")
    X_train, _, y_train, _ = digits
    monitor = callback.ScoringMonitor(scoring="accuracy")
    model = FFFClassifier(depth=2, max_iter=6, hardening_epochs=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.set_callbacks(monitor).fit(X_train, y_train)
    log = monitor.get_logs().data_as_pandas
    epochs = log[log["task_name"] == "epoch"]
    assert len(epochs) == 6
    # The last epoch's model is the fitted one; the first scored its own, worse, weights.
    assert epochs["accuracy"].iloc[-1] == pytest.approx(model.score(X_train, y_train))
    assert epochs["accuracy"].iloc[0] < epochs["accuracy"].iloc[-1]


def test_a_callback_can_stop_training_after_an_epoch(digits):
    pytest.importorskip("sklearn.callback")
    X_train, X_test, y_train, _ = digits
    stop = _StopAfter(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # a requested stop is no warning
        model = FFFClassifier(depth=2, max_iter=20, random_state=0).set_callbacks(stop)
        model.fit(X_train, y_train)
    assert model.n_iter_ == 3 and len(model.loss_curve_) == 3
    assert stop.calls == ["setup", 64, 64, 64, "teardown"]
    # A fit that fails still tears the callbacks down, and keeps the fitted model.
    before = model.predict_proba(X_test)
    with pytest.raises(ValueError, match="at least 2 classes"):
        model.fit(X_train, np.zeros_like(y_train))
    assert stop.calls[-1] == "teardown" and stop.calls.count("setup") == 2
    np.testing.assert_array_equal(model.predict_proba(X_test), before)


# ------------------------------------------------------------------------------ multi-label
@pytest.fixture(scope="module")
def multilabel():
    from sklearn.datasets import make_multilabel_classification

    X, Y = make_multilabel_classification(n_samples=1200, n_features=12, n_classes=5,
                                          random_state=0)
    return train_test_split(X, Y, test_size=0.25, random_state=0)


def test_a_multi_label_indicator_y_trains_one_network_of_a_sigmoid_per_label(multilabel):
    from scipy.special import expit
    from sklearn.metrics import accuracy_score

    X_train, X_test, Y_train, Y_test = multilabel
    model = FFFClassifier(depth=2, random_state=0).fit(X_train, Y_train)
    np.testing.assert_array_equal(model.classes_, np.arange(5))
    assert model.arrays_.n_outputs == 5  # one network, not one per label
    predicted = model.predict(X_test)
    assert predicted.shape == Y_test.shape and predicted.dtype == np.int64
    assert set(np.unique(predicted)) <= {0, 1}
    proba = model.predict_proba(X_test)
    outputs, _ = inference.hard_forward(model.arrays_, X_test.astype(np.float32))
    np.testing.assert_allclose(proba, expit(outputs.astype(np.float64)), rtol=1e-6)
    np.testing.assert_array_equal(predicted, (proba > 0.5).astype(int))
    np.testing.assert_allclose(model.predict_log_proba(X_test), np.log(proba), rtol=1e-6)
    assert model.score(X_test, Y_test) == accuracy_score(Y_test, predicted)
    assert (predicted == Y_test).mean() > 0.75  # per label
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.predict(X_test), predicted)
    stopped = FFFClassifier(depth=2, early_stopping=True, random_state=0).fit(X_train, Y_train)
    assert 0 <= stopped.best_validation_score_ <= 1


def test_multi_label_partial_fit_and_what_it_refuses(multilabel):
    X_train, X_test, Y_train, _ = multilabel
    model = FFFClassifier(depth=2, random_state=0)
    for rows in np.array_split(np.arange(len(X_train)), 3):
        model.partial_fit(X_train[rows], Y_train[rows], classes=np.arange(5))
    assert model.predict(X_test).shape == (len(X_test), 5)
    with pytest.raises(ValueError, match="y has 4 labels but FFFClassifier was fitted with 5"):
        model.partial_fit(X_train, Y_train[:, :4])
    with pytest.raises(ValueError, match="fitted on multi-label targets"):
        model.partial_fit(X_train, Y_train[:, 0])
    with pytest.raises(ValueError, match="class_weight is not supported for multi-label"):
        FFFClassifier(class_weight="balanced").fit(X_train, Y_train)
    single = FFFClassifier(depth=2, max_iter=2).fit(X_train, Y_train[:, 0])
    with pytest.raises(ValueError, match="fitted on one label per row"):
        single.partial_fit(X_train, Y_train)


# ---------------------------------------------------------------------------- sparse input
@pytest.mark.parametrize("to_sparse", [sp.csr_matrix, sp.csc_matrix, sp.csr_array])
@pytest.mark.parametrize("Estimator", [FFFClassifier, FFFRegressor])
def test_a_sparse_fit_trains_the_model_of_the_same_dense_rows(Estimator, to_sparse):
    X, y = make_classification(n_samples=600, n_features=30, n_informative=8, random_state=0)
    X[np.random.default_rng(0).random(X.shape) < 0.8] = 0.0
    target = y if Estimator is FFFClassifier else X[:, :3] @ [1.0, -2.0, 0.5]
    params = {"depth": 3, "max_iter": 8, "early_stopping": True, "random_state": 0}
    dense = Estimator(**params).fit(X, target)
    fitted = Estimator(**params).fit(to_sparse(X), target)
    for name in FFFArrays.ARRAY_NAMES:
        np.testing.assert_array_equal(getattr(fitted.arrays_, name),
                                      getattr(dense.arrays_, name), err_msg=name)
    np.testing.assert_array_equal(fitted.leaf_sample_counts_, dense.leaf_sample_counts_)
    # Predicting reads the sparse rows' non-zeros only: the same leaves, and outputs summed
    # over fewer terms, equal up to float32 rounding.
    np.testing.assert_array_equal(fitted.apply(to_sparse(X)), dense.apply(X))
    if Estimator is FFFClassifier:
        np.testing.assert_array_equal(fitted.predict(to_sparse(X)), dense.predict(X))
        np.testing.assert_allclose(fitted.predict_proba(to_sparse(X)),
                                   dense.predict_proba(X), rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(fitted.predict(to_sparse(X)), dense.predict(X),
                                   rtol=1e-5, atol=1e-6)
    streamed = Estimator(depth=2, random_state=0)
    for rows in np.array_split(np.arange(len(X)), 3):
        extra = {"classes": [0, 1]} if Estimator is FFFClassifier else {}
        streamed.partial_fit(to_sparse(X[rows]), target[rows], **extra)
    assert streamed.predict(to_sparse(X)).shape[0] == len(X)


@pytest.mark.slow
def test_sparse_input_is_never_densified_whole():
    from fffsklearn._testing import PeakSampler, anonymous_rss_bytes

    n_rows, n_features = 40_000, 5_000  # dense: 800 MB in float32, 1.6 GB in float64
    X = sp.random(n_rows, n_features, density=0.001, format="csr", random_state=0,
                  dtype=np.float64)
    y = (np.asarray(X[:, :50].sum(axis=1)).ravel() > 0).astype(int)
    baseline = anonymous_rss_bytes()
    with PeakSampler() as sampler:
        model = FFFClassifier(depth=2, max_iter=1, random_state=0).fit(X, y)
        model.predict(X)
    assert sampler.peak - baseline < 300 * 2**20
