"""The trainer's hand-written training step against autograd and torch's Adam."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import make_classification
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning

from fffsklearn import FFFClassifier, FFFRegressor, _losses, _network, _preparation
from fffsklearn._losses import BinaryCrossEntropy, CrossEntropy
from fffsklearn._network import FFFNetwork, _training_kernel, load_balancing_loss
from fffsklearn._optim import FusedAdam
from fffsklearn._testing import EpochCallback
from fffsklearn._training import Trainer

needs_training_kernel = pytest.mark.skipif(
    _network._training_kernel is None, reason="the C training extension is not built"
)


def _recipe(task, **params):
    """The recipe the task's estimator trains 1000 rows with."""
    Estimator = FFFClassifier if task == "classification" else FFFRegressor
    return Estimator(**params)._recipe(1000, incremental=False)


def _trainer(task, depth, n_outputs, projection_rank=None, **create):
    recipe = _recipe(task, depth=depth, leaf_width=4, master_leaf_width=3,
                     projection_rank=projection_rank)
    return Trainer.create(6, n_outputs, recipe, "cpu", seed=3, **create)


def _batch(task, n_outputs, n=40):
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(n, 6, generator=generator)
    weight = torch.rand(n, generator=generator) * 2
    if task == "classification":
        return X, torch.randint(0, n_outputs, (n,), generator=generator), weight
    return X, torch.randn(n, n_outputs, generator=generator) * 0.3, weight


def _objective(trainer, X, y, weight):
    """The training objective written with torch's losses, for autograd (no L2 term)."""
    network = trainer.network
    routing = network.soft_forward(X, straight_through=not trainer.hardening)
    recipe = trainer.recipe
    if isinstance(recipe.loss, CrossEntropy):
        smoothing = 0.0 if trainer.hardening else recipe.loss.label_smoothing
        per_row = F.cross_entropy(routing.outputs, y, reduction="none", label_smoothing=smoothing)
    else:
        per_row = 0.5 * (routing.outputs - y).square().sum(dim=1)
    data_loss = torch.dot(per_row, weight) / X.shape[0]
    regulariser_weight = recipe.loss.regulariser_weight(data_loss, y)
    if trainer.hardening or network.depth == 0:  # no routing to balance
        return data_loss
    return data_loss + regulariser_weight * recipe.load_balancing * load_balancing_loss(routing)


@pytest.mark.parametrize("task, n_outputs", [("classification", 4), ("regression", 2)])
@pytest.mark.parametrize("depth", [0, 3])
@pytest.mark.parametrize("hardening", [False, True])
@pytest.mark.parametrize("projection_rank", [None, 2])
def test_training_step_gradients_are_those_of_the_objective(
    task, n_outputs, depth, hardening, projection_rank, monkeypatch
):
    trainer = _trainer(task, depth, n_outputs, projection_rank=projection_rank)
    if hardening:
        trainer.start_hardening()
    X, y, weight = _batch(task, n_outputs)
    expected_loss = _objective(trainer, X, y, weight)
    parameters = [p for p in trainer.network.parameters() if p.requires_grad]
    expected = torch.autograd.grad(expected_loss, parameters, allow_unused=True,
                                   materialize_grads=True)
    monkeypatch.setattr(trainer.optimizer, "step", lambda: None)
    leaf_counts = torch.zeros(trainer.network.n_leaves)
    loss, _ = trainer.train_step(X, y, weight, 1000, leaf_counts)
    torch.testing.assert_close(loss, expected_loss.detach())
    for index, (parameter, want) in enumerate(zip(parameters, expected)):
        # Without routing (depth 0) the routing parameters are empty and get no gradient.
        got = torch.zeros_like(parameter) if parameter.grad is None else parameter.grad
        torch.testing.assert_close(got, want, msg=f"gradient of parameter {index}",
                                   rtol=1e-4, atol=1e-6)
    routing = trainer.network.soft_forward(X, straight_through=True)
    assert torch.equal(leaf_counts, routing.hard_one_hot.sum(dim=0))


def test_fused_adam_updates_as_torch_adam():
    torch.manual_seed(0)
    shapes = [(5, 3), (3,), (4, 2)]
    ours = [torch.nn.Parameter(torch.randn(*shape)) for shape in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]

    def groups(params):
        return [{"params": params[::2], "weight_decay": 0.01},
                {"params": params[1::2], "weight_decay": 0.0}]

    fused = FusedAdam(groups(ours), lr=0.01)
    reference = torch.optim.Adam(groups(theirs), lr=0.01)
    for step in range(12):
        if step == 5:  # as Hardening does: a new learning rate and fresh moments
            for optimizer in (fused, reference):
                optimizer.param_groups[0]["lr"] *= 0.1
                optimizer.state.clear()
        for a, b in zip(ours, theirs):
            grad = torch.randn(a.shape)
            a.grad, b.grad = grad.clone(), grad.clone()
        if step >= 8:  # a frozen parameter has no gradient and does not move
            ours[2].grad = theirs[2].grad = None
        fused.step()
        reference.step()
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert np.isclose(float(fused.state[ours[0]]["step"]), 7)


@needs_training_kernel
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.6])
def test_compiled_cross_entropy_matches_torch_and_refuses_unknown_classes(smoothing):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 4, generator=generator) * 3
    logits[0] = torch.tensor([1e4, -1e4, 0.0, 3.0])  # saturated: no overflow, no NaN
    targets = torch.randint(0, 4, (50,), generator=generator)
    targets[0] = 1
    row_weight = torch.rand(50, generator=generator)
    grad = torch.empty_like(logits)
    loss = _network._training_kernel.cross_entropy(
        logits.numpy(), targets.numpy(), row_weight.numpy(), grad.numpy(), smoothing
    )
    expected = logits.double().requires_grad_()
    expected_loss = torch.dot(
        F.cross_entropy(expected, targets, reduction="none", label_smoothing=smoothing),
        row_weight.double(),
    )
    expected_loss.backward()
    assert loss == pytest.approx(expected_loss.item(), rel=1e-9)
    torch.testing.assert_close(grad, expected.grad.float())
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="smoothing must be in"):
            _network._training_kernel.cross_entropy(
                logits.numpy(), targets.numpy(), row_weight.numpy(), grad.numpy(), bad
            )
    targets[3] = 4
    with pytest.raises(ValueError, match="out of range"):
        _network._training_kernel.cross_entropy(
            logits.numpy(), targets.numpy(), row_weight.numpy(), grad.numpy(), smoothing
        )


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_the_classification_loss_is_label_smoothed_while_balancing(smoothing, compiled,
                                                                    monkeypatch):
    if compiled and _network._training_kernel is None:
        pytest.skip("the C training extension is not built")
    if not compiled:
        monkeypatch.setattr(_losses, "_compiled", lambda tensor: False)
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(40, 5, generator=generator) * 2
    targets = torch.randint(0, 5, (40,), generator=generator)
    row_weight = torch.rand(40, generator=generator)
    loss_of = CrossEntropy(smoothing)
    # Balancing smooths, hardening does not.
    for phase_smoothing, hardening in ((smoothing, False), (0.0, True)):
        loss, grad = loss_of(logits.clone(), targets, row_weight, hardening)
        expected = logits.clone().requires_grad_()
        expected_loss = torch.dot(
            F.cross_entropy(expected, targets, reduction="none", label_smoothing=phase_smoothing),
            row_weight,
        )
        expected_loss.backward()
        torch.testing.assert_close(loss, expected_loss.detach())
        torch.testing.assert_close(grad, expected.grad)


@pytest.mark.parametrize("hardening", [False, True])
def test_each_label_meets_the_regularisers_as_a_single_label_does(hardening):
    """The multi-label loss sums one binary loss per label; against the regularisers (L2,
    load balancing, routing lasso), a label repeated n times must weigh what it weighs once,
    so that alpha means the same whatever the number of labels."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(30, 1, generator=generator) * 2
    labels = (torch.rand(30, 1, generator=generator) > 0.5).float()
    row_weight = torch.rand(30, generator=generator)
    loss_of = BinaryCrossEntropy(0.05)

    def objective_per_regulariser(n):
        outputs, y = logits.repeat(1, n), labels.repeat(1, n)
        loss, grad = loss_of(outputs, y, row_weight, hardening)
        weight = loss_of.regulariser_weight(loss, y)
        # The shared layers below the outputs receive the sum of the labels' gradients.
        return loss / weight, grad.sum(dim=1) / weight

    once_loss, once_grad = objective_per_regulariser(1)
    for n in (2, 5):
        loss, grad = objective_per_regulariser(n)
        torch.testing.assert_close(loss, once_loss)
        torch.testing.assert_close(grad, once_grad)


def test_small_cpu_steps_train_on_one_thread_and_the_count_comes_back(monkeypatch):
    from fffsklearn._device import training_threads

    seen = []
    run_epoch = Trainer.run_epoch

    def spy(self, *args):
        seen.append(torch.get_num_threads())
        return run_epoch(self, *args)

    monkeypatch.setattr(Trainer, "run_epoch", spy)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rng = np.random.default_rng(0)
        y = rng.integers(0, 2, 300)
        params = dict(depth=2, max_iter=2, hardening_epochs=0, device="cpu", random_state=0)
        FFFClassifier(**params).fit(rng.standard_normal((300, 5)), y)
        assert seen == [1, 1] and torch.get_num_threads() == 2
        seen.clear()  # 200 rows x 2,000 features x 64 units: a step worth two threads
        FFFClassifier(**params).fit(rng.standard_normal((300, 2000)), y)
        assert seen == [2, 2]
        with pytest.raises(RuntimeError), training_threads(torch.device("cpu"), 0):
            assert torch.get_num_threads() == 1
            raise RuntimeError
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


@needs_training_kernel
def test_compiled_noise_is_standard_normal_times_each_columns_std():
    from scipy import stats

    from fffsklearn._training import _NORMAL_QUANTILES

    kernel = _network._training_kernel
    rows = np.tile(np.arange(6, dtype=np.float32), (40_000, 1))
    std = np.array([0.0, 0.1, 1.0, 1.0, 2.0, 5.0], dtype=np.float32)
    kernel.add_normal_noise(rows, std, _NORMAL_QUANTILES, 12345)
    noise = rows - np.arange(6, dtype=np.float32)
    assert not noise[:, 0].any()
    np.testing.assert_allclose(noise[:, 1:].std(axis=0), std[1:], rtol=0.02)
    np.testing.assert_allclose(noise[:, 1:].mean(axis=0), 0.0, atol=0.02 * std[1:].max())
    z = (noise[:, 1:] / std[1:]).ravel()
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(np.corrcoef(noise[:, 2], noise[:, 3])[0, 1]) < 0.03  # columns independent
    # The seed alone decides the draws.
    again = np.tile(np.arange(6, dtype=np.float32), (40_000, 1))
    kernel.add_normal_noise(again, std, _NORMAL_QUANTILES, 12345)
    np.testing.assert_array_equal(again, rows)
    other = np.tile(np.arange(6, dtype=np.float32), (40_000, 1))
    kernel.add_normal_noise(other, std, _NORMAL_QUANTILES, 12346)
    assert not np.array_equal(other, rows)


@needs_training_kernel
def test_compiled_noise_refuses_malformed_buffers():
    from fffsklearn._training import _NORMAL_QUANTILES

    kernel = _network._training_kernel
    rows, std = np.zeros((4, 3), np.float32), np.ones(3, np.float32)
    read_only = rows.copy()
    read_only.flags.writeable = False
    for args in [
        (read_only, std, _NORMAL_QUANTILES, 0),
        (rows.astype(np.float64), std, _NORMAL_QUANTILES, 0),
        (np.zeros((3, 4), np.float32).T, std[:4], _NORMAL_QUANTILES, 0),
        (rows, np.ones(4, np.float32), _NORMAL_QUANTILES, 0),
        (rows, std, _NORMAL_QUANTILES[:1024], 0),
        (rows, std.astype(np.float64), _NORMAL_QUANTILES, 0),
    ]:
        with pytest.raises((ValueError, BufferError, TypeError)):
            kernel.add_normal_noise(*args)


class _ArraysOfEachEpoch(EpochCallback):
    """Keeps the fitted arrays of every epoch."""

    def __init__(self):
        self.arrays = []

    def epoch_end(self, epoch, fitted_estimator):
        self.arrays.append(fitted_estimator.arrays_)


@pytest.mark.parametrize("early_stopping", [False, True])
def test_a_fit_ends_on_the_best_epochs_parameters_under_early_stopping_else_on_the_last(
        early_stopping, monkeypatch):
    """The best epoch is kept as a copy of its parameters: the model and the network that
    partial_fit goes on with are that epoch's exactly, not a reload of its arrays (which
    re-factorises the input projection)."""
    pytest.importorskip("sklearn.callback")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 20)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    fit = Trainer.fit

    def fit_with_falling_scores(self, *args, validation_score=None, **kwargs):
        if validation_score is not None:
            scores = iter(range(0, -100, -1))
            validation_score = lambda arrays: float(next(scores))
        return fit(self, *args, validation_score=validation_score, **kwargs)

    monkeypatch.setattr(Trainer, "fit", fit_with_falling_scores)
    epochs = _ArraysOfEachEpoch()
    model = FFFClassifier(depth=2, max_iter=12, hardening_epochs=0, n_iter_no_change=1,
                          tol=1.0 if early_stopping else 0.0, early_stopping=early_stopping,
                          validation_fraction=0.2, random_state=0).set_callbacks(epochs)
    model.fit(X, y)
    if early_stopping:
        # Falling scores never count an epoch as better: the first epoch is kept, and the
        # plateau ends the fit two epochs later.
        assert model.n_iter_ == 3
    kept = epochs.arrays[0] if early_stopping else epochs.arrays[-1]
    trainer = model._trainer
    for name in kept.ARRAY_NAMES:
        np.testing.assert_array_equal(getattr(model.arrays_, name), getattr(kept, name))
        np.testing.assert_array_equal(
            getattr(trainer.deployed(trainer.network.to_arrays()), name), getattr(kept, name)
        )


def _flushes_denormals():
    """Whether this thread treats denormal floats as zero: a product with one as operand."""
    return (torch.tensor([1e-39]) * 1.0).item() == 0.0


@pytest.mark.skipif(_training_kernel is None or not _training_kernel.FLUSH_DENORMALS,
                    reason="needs the compiled training kernel on x86-64 or aarch64")
@pytest.mark.parametrize("flush_before", [False, True])
def test_training_flushes_denormals_and_then_restores_the_callers_mode(monkeypatch, flush_before):
    # Hardening's sharpened routing and the decayed weights and moments of units without a
    # gradient sink below 1.2e-38, where products run many times slower on x86 CPUs.
    seen = []
    run_epoch = Trainer.run_epoch

    def spy(self, *args, **kwargs):
        seen.append(_flushes_denormals())
        return run_epoch(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "run_epoch", spy)
    X, y = make_classification(300, 6, n_classes=3, n_informative=4, random_state=0)
    previous = _training_kernel.swap_denormal_mode(
        _training_kernel.FLUSH_DENORMALS if flush_before else 0)
    try:
        FFFClassifier(depth=2, max_iter=8, random_state=0).fit(X, y)
        after = _flushes_denormals()
    finally:
        _training_kernel.swap_denormal_mode(previous)
    assert seen and all(seen)
    assert after == flush_before


@pytest.mark.parametrize(
    "estimator, depth, n_samples, batch_size, expected",
    [
        # A leaf gets 25 rows of a step where an epoch keeps 50 steps.
        (FFFClassifier, 6, 40_000, "auto", 800),
        (FFFClassifier, 6, 100_000, "auto", 1600),
        (FFFClassifier, 5, 40_000, "auto", 800),
        (FFFClassifier, 6, 20_000, "auto", 400),
        (FFFClassifier, 4, 40_000, "auto", 400),
        (FFFClassifier, 4, 15_000, "auto", 300),
        (FFFClassifier, 3, 40_000, "auto", 200),
        (FFFClassifier, 6, 8_000, "auto", 200),
        (FFFClassifier, 6, 150, "auto", 150),
        (FFFRegressor, 6, 40_000, "auto", 200),
        (FFFClassifier, 6, 40_000, 64, 64),
    ],
)
def test_the_mini_batch_that_fit_trains_with(monkeypatch, estimator, depth, n_samples,
                                             batch_size, expected):
    schedules = []

    def spy(self, X, y, weight, schedule, **kwargs):
        schedules.append(schedule)
        raise KeyboardInterrupt  # nothing completed: fit stops here, before any epoch

    monkeypatch.setattr(Trainer, "fit", spy)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n_samples, 3)).astype(np.float32)
    y = np.arange(n_samples) % 3
    with pytest.raises(KeyboardInterrupt):
        estimator(depth=depth, batch_size=batch_size).fit(X, y)
    assert schedules[0].batch_size == expected


@pytest.mark.parametrize("task, routing_factor", [("classification", 3.0), ("regression", 1.0)])
@pytest.mark.parametrize("depth, leaf_factor", [(2, 1.0), (6, 1.0), (7, 0.5), (9, 0.125)])
def test_alphas_penalty_on_the_routing_neurons_and_on_the_leaves_of_deep_trees(
    task, routing_factor, depth, leaf_factor
):
    # The classifier's routing neurons take three times alpha's penalty; the leaves of a tree
    # deeper than 6 levels share the penalty of 64 leaves.
    recipe = _recipe(task, depth=depth, leaf_width=4, master_leaf_width=3, leaf_tying=0)
    trainer = Trainer.create(6, 3, recipe, "cpu", seed=3)
    network = trainer.network
    trainer.train_step(*_batch(task, 3), 1000, torch.zeros(network.n_leaves))
    decay = {id(p): group["weight_decay"]
             for group in trainer.optimizer.param_groups for p in group["params"]}
    master = decay[id(network.master_hidden_weights)]
    assert master > 0
    assert decay[id(network.master_output_weights)] == master
    for weights in (network.leaf_hidden_weights, network.leaf_output_weights):
        assert decay[id(weights)] == pytest.approx(leaf_factor * master)
    assert decay[id(network.node_weights)] == pytest.approx(routing_factor * master)
    assert decay[id(network.node_biases)] == 0.0

    def squared_norm(weights):
        return weights.square().sum().item()

    squared = sum(squared_norm(w) for w in network.weight_matrices())
    squared += (routing_factor - 1.0) * squared_norm(network.node_weights)
    squared += (leaf_factor - 1.0) * (squared_norm(network.leaf_hidden_weights)
                                      + squared_norm(network.leaf_output_weights))
    expected = 0.5 * recipe.alpha / 100 * squared
    assert trainer.penalties.value(1.0, 100) == pytest.approx(expected, rel=1e-5)
    # Frozen while hardening, the routing leaves the penalty.
    trainer.start_hardening()
    expected -= 0.5 * recipe.alpha / 100 * routing_factor * squared_norm(network.node_weights)
    assert trainer.penalties.value(1.0, 100) == pytest.approx(expected, rel=1e-5)


def _f_classif_penalties(X, y):
    from sklearn.feature_selection import f_classif

    f, _ = f_classif(X.astype(np.float64), y)
    return np.minimum(1.0, 1.0 / f) ** 2


def test_routing_feature_penalties_are_f_classifs_read_in_chunks(monkeypatch):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 500)
    X = rng.standard_normal((500, 6)).astype(np.float32)
    X[:, 0] += 0.5 * y  # informative: F in the hundreds, a share near 0
    X[:, 1] += 0.1 * y  # weak: F about 6
    expected = _f_classif_penalties(X, y)
    monkeypatch.setattr(_preparation, "CHUNK_VALUES", 60)  # 10 rows a chunk
    penalties = _preparation.routing_feature_penalties(X, y, np.ones(500), n_classes=5)
    np.testing.assert_allclose(penalties, expected, rtol=1e-9)
    assert penalties[0] < 1e-3 < penalties[1] < 0.1 < penalties[2:].mean()
    # Scaling the weights changes nothing; integer weights count as repeated rows, up to
    # the degrees of freedom (rows, not the weights' sum).
    weight = rng.integers(0, 3, 500).astype(np.float64)
    scaled = _preparation.routing_feature_penalties(X, y, 7.0 * weight, n_classes=5)
    np.testing.assert_allclose(
        scaled, _preparation.routing_feature_penalties(X, y, weight, n_classes=5), rtol=1e-9
    )
    repeats = weight.astype(int)
    np.testing.assert_allclose(
        scaled, _f_classif_penalties(np.repeat(X, repeats, axis=0), np.repeat(y, repeats)),
        rtol=0.05,
    )


def _principal_subspace_distance(directions, expected):
    """The sine of the largest principal angle between two spans of orthonormal columns."""
    return np.linalg.norm(expected - directions @ (directions.T @ expected), ord=2)


def test_principal_directions_are_pcas_read_in_chunks(monkeypatch):
    rng = np.random.default_rng(0)
    # Three directions of large and distinct variance among 12 features, plus a mean.
    X = (rng.standard_normal((400, 3)) * [6.0, 4.0, 3.0]) @ rng.standard_normal((3, 12))
    X = (X + rng.standard_normal((400, 12)) + 5.0).astype(np.float32)
    monkeypatch.setattr(_preparation, "CHUNK_VALUES", 120)  # 10 rows a chunk
    directions = _preparation.principal_directions(X, np.ones(400), 3, seed=0)
    assert directions.shape == (12, 3)
    np.testing.assert_allclose(directions.T @ directions, np.eye(3), atol=1e-12)
    pca = PCA(3).fit(X.astype(np.float64))
    # By decreasing variance, each direction that of PCA up to its sign.
    np.testing.assert_allclose(np.abs(np.sum(directions * pca.components_.T, axis=0)), 1.0,
                               atol=1e-6)
    # Integer weights count as repeated rows; under a scaling, the scaled rows' PCA.
    weight = rng.integers(0, 3, 400).astype(np.float64)
    repeated = np.repeat(X, weight.astype(int), axis=0).astype(np.float64)
    weighted = _preparation.principal_directions(X, weight, 3, seed=1)
    assert _principal_subspace_distance(weighted, PCA(3).fit(repeated).components_.T) < 1e-6
    mean, scale = X.mean(axis=0).astype(np.float64), np.linspace(0.5, 8.0, 12)
    scaled = _preparation.principal_directions(
        X, np.ones(400), 3, seed=2, input_scaling=(mean, scale)
    )
    expected = PCA(3).fit((X - mean) / scale).components_.T
    assert _principal_subspace_distance(scaled, expected) < 1e-6
    # More than there are features: an orthonormal basis of them all.
    every = _preparation.principal_directions(X[:, :4], np.ones(400), 32, seed=0)
    np.testing.assert_allclose(every.T @ every, np.eye(4), atol=1e-12)


def test_routing_feature_penalties_of_degenerate_features_and_classes():
    y = np.array([0, 0, 1, 1, 2, 2])
    X = np.column_stack([np.full(6, 0.3), y * 2.0, [0.0, 1, 0, 1, 0, 1]]).astype(np.float32)
    penalties = _preparation.routing_feature_penalties(X, y, np.ones(6), n_classes=3)
    # Constant: all the penalty; constant within each class: none; no class effect: all.
    np.testing.assert_allclose(penalties, [1.0, 0.0, 1.0], atol=1e-12)
    assert _preparation.routing_feature_penalties(X, np.zeros(6, int), np.ones(6), 3) is None
    assert _preparation.routing_feature_penalties(X[:2], y[:2], np.ones(2), 3) is None


def test_the_routing_group_lasso_gradient_and_penalty():
    shares = np.array([1.0, 0.5, 0.0, 1.0, 0.25, 1.0])
    trainer = _trainer("classification", 2, 3, routing_feature_penalties=shares)
    weights = trainer.network.node_weights
    with torch.no_grad():
        weights[:, 3] = 0.0  # a column the lasso has zeroed: subgradient 0, not NaN
    weights.grad = torch.zeros_like(weights)
    trainer.penalties.add_lasso_gradient(0.01)
    columns = weights.detach().numpy()
    norms = np.linalg.norm(columns, axis=0)
    strength = trainer.recipe.routing_group_lasso * shares * 0.01
    expected = columns * np.divide(strength, norms, out=np.zeros(6), where=norms > 0)
    np.testing.assert_allclose(weights.grad.numpy(), expected, rtol=1e-5, atol=1e-12)

    l2 = sum(w.square().sum().item() for w in trainer.network.weight_matrices())
    l2 += 2.0 * weights.square().sum().item()  # the routing's factor 3
    lasso = trainer.recipe.routing_group_lasso * float(shares @ norms)
    assert trainer.penalties.value(1.0, 100) == pytest.approx(
        trainer.recipe.alpha / 100 * (0.5 * l2 + lasso), rel=1e-5)
    # Frozen while hardening, the routing leaves both penalties and takes no lasso gradient.
    trainer.start_hardening()
    l2 -= 3.0 * weights.square().sum().item()
    assert trainer.penalties.value(1.0, 100) == pytest.approx(0.5 * trainer.recipe.alpha / 100 * l2,
                                                              rel=1e-5)


def _explicit_tying_penalty(leaves):
    """0.5 * the sum, over every node below the root, of the squared difference between the
    mean of ``leaves`` (rows, n_leaves, columns) below the node and below its parent,
    written node by node."""
    n_leaves = leaves.shape[1]
    total = 0.0
    size = n_leaves // 2
    while size:
        for first in range(0, n_leaves, size):
            parent = first - first % (2 * size)
            deviation = (leaves[:, first : first + size].mean(dim=1)
                         - leaves[:, parent : parent + 2 * size].mean(dim=1))
            total = total + 0.5 * deviation.square().sum()
        size //= 2
    return total


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("depth", [1, 3, 6])
def test_the_leaf_tying_gradient_and_penalty(depth, compiled, monkeypatch):
    """Both the C extension's gradient (CPU, float32) and the torch operations' (elsewhere)."""
    from fffsklearn import _training

    if compiled and _training_kernel is None:
        pytest.skip("the C training extension is not built")
    if not compiled:
        monkeypatch.setattr(_training, "_compiled", lambda tensor: False)
    recipe = FFFClassifier(depth=depth, leaf_width=4, master_leaf_width=3, leaf_tying=5.0,
                           projection_rank=None)._recipe(1000, incremental=False)
    trainer = Trainer.create(6, 3, recipe, "cpu", seed=3)
    network = trainer.network
    leaf_parameters = _network.leaf_parameters(network)
    tying = sum(_explicit_tying_penalty(parameter.view(shape))
                for parameter, shape in leaf_parameters)
    expected = torch.autograd.grad(tying, [parameter for parameter, _ in leaf_parameters])
    for parameter, _ in leaf_parameters:
        parameter.grad = torch.zeros_like(parameter)
    trainer.penalties.add_tying_gradient(0.01)
    for (parameter, _), want in zip(leaf_parameters, expected):
        torch.testing.assert_close(parameter.grad, 0.01 * 5.0 * want, rtol=1e-5, atol=1e-9)

    l2 = sum(w.square().sum().item() for w in network.weight_matrices())
    l2 += 2.0 * network.node_weights.square().sum().item()  # the routing's factor 3
    assert trainer.penalties.value(1.0, 100) == pytest.approx(
        recipe.alpha / 100 * (0.5 * l2 + 5.0 * tying.item()), rel=1e-5)


@needs_training_kernel
def test_compiled_tying_gradient_refuses_inconsistent_buffers():
    leaves, grad = np.zeros((3, 8), np.float32), np.zeros((3, 8), np.float32)
    for n_leaves in (0, 1, 3, 16):
        with pytest.raises(ValueError, match="power of 2"):
            _training_kernel.add_tying_gradient(leaves, grad, n_leaves, 1.0)
    with pytest.raises(ValueError, match="grad"):
        _training_kernel.add_tying_gradient(leaves, np.zeros((3, 4), np.float32), 4, 1.0)
    with pytest.raises(ValueError, match="contiguous"):
        _training_kernel.add_tying_gradient(leaves, np.zeros((8, 3), np.float32).T, 4, 1.0)
    with pytest.raises(ValueError, match="leaves"):
        _training_kernel.add_tying_gradient(leaves.astype(np.float64), grad, 4, 1.0)
    with pytest.raises(ValueError, match="leaves"):
        _training_kernel.add_tying_gradient(np.zeros((8, 3), np.float32).T, grad, 4, 1.0)
    assert not grad.any()


def test_leaf_tying_pulls_the_leaves_of_a_fit_together():
    X, y = make_classification(n_samples=400, n_features=8, n_informative=6, n_classes=3,
                               random_state=0)

    def spread(leaf_tying):
        model = FFFClassifier(depth=3, leaf_tying=leaf_tying, max_iter=20, random_state=0)
        with pytest.warns(ConvergenceWarning):
            arrays = model.fit(X, y).arrays_
        return max(np.ptp(getattr(arrays, name), axis=0).max() for name in (
            "leaf_hidden_biases", "leaf_output_weights", "leaf_output_biases"))

    assert spread(300.0) < 0.3 * spread(0.0)


@pytest.mark.parametrize("Estimator", [FFFClassifier, FFFRegressor])
def test_auto_leaf_tying_ties_trees_deeper_than_four_levels_only(Estimator):
    X, y = make_classification(n_samples=300, n_features=6, random_state=0)

    def fitted_arrays(depth, leaf_tying):
        model = Estimator(depth=depth, leaf_tying=leaf_tying, max_iter=4, random_state=0)
        with pytest.warns(ConvergenceWarning):
            return model.fit(X, y).arrays_

    def same(first, second):
        return all(np.array_equal(getattr(first, name), getattr(second, name))
                   for name in ("leaf_hidden_weights", "leaf_output_weights", "node_weights"))

    assert same(fitted_arrays(4, "auto"), fitted_arrays(4, 0.0))
    deep = fitted_arrays(5, "auto")
    assert same(deep, fitted_arrays(5, 10.0))
    assert not same(deep, fitted_arrays(5, 0.0))


def test_the_classifiers_routing_leaves_noise_features(monkeypatch):
    """Where most features are noise, the group lasso keeps the routing off them."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 1500)
    X = rng.standard_normal((1500, 40))
    X[:, :4] += 1.5 * rng.standard_normal((3, 4))[y]  # 4 features whose class means differ

    def noise_share_of_routing(estimator):
        # The exported weights take raw rows; the features are near unit scale already.
        norms = np.linalg.norm(estimator.arrays_.node_weights, axis=0)
        return norms[4:].sum() / norms.sum()

    params = dict(depth=3, max_iter=40, random_state=0)
    with_lasso = FFFClassifier(**params).fit(X, y)
    np.testing.assert_array_less(with_lasso._preparation.routing_feature_penalties_[:4], 0.01)
    assert with_lasso._preparation.routing_feature_penalties_[4:].mean() > 0.5
    monkeypatch.setattr(FFFClassifier, "_ROUTING_GROUP_LASSO", 0.0)
    without = FFFClassifier(**params).fit(X, y)
    assert noise_share_of_routing(with_lasso) < 0.5 * noise_share_of_routing(without)


def test_only_the_classifier_takes_routing_feature_penalties_from_its_first_call():
    X, y = make_classification(n_samples=300, n_features=5, random_state=0)
    classifier = FFFClassifier(depth=2, max_iter=2).partial_fit(X[:100], y[:100], classes=[0, 1])
    first = classifier._preparation.routing_feature_penalties_.copy()
    np.testing.assert_allclose(
        first, _preparation.routing_feature_penalties(X[:100], y[:100], np.ones(100), 2)
    )
    classifier.partial_fit(X[100:], y[100:])
    np.testing.assert_array_equal(classifier._preparation.routing_feature_penalties_, first)
    regressor = FFFRegressor(depth=2, max_iter=2).fit(X, y)
    assert regressor._preparation.routing_feature_penalties_ is None


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("Estimator", [FFFClassifier, FFFRegressor])
def test_the_input_projection_starts_on_the_principal_directions_of_the_scaled_rows(Estimator):
    rng = np.random.default_rng(0)
    # Standardised, the rows vary along two directions of ten, and a little along the rest.
    X = rng.standard_normal((300, 2)) @ rng.standard_normal((2, 10)) * np.arange(1.0, 11.0)
    X = (X + 0.05 * rng.standard_normal((300, 10)) + 3.0).astype(np.float32)
    y = (X[:, 0] > 3.0).astype(int)
    # One epoch at a rate too small to move the weights from where they started.
    model = Estimator(depth=2, projection_rank=2, learning_rate_init=1e-9, max_iter=1,
                      random_state=0).fit(X, y)
    first_layers = np.concatenate(
        (model.arrays_.leaf_hidden_weights.transpose(1, 0, 2).reshape(10, -1),
         model.arrays_.master_hidden_weights), axis=1,
    ) * model._preparation.scale_[:, None]  # as the standardised rows meet them
    scaled = (X - model._preparation.mean_) / model._preparation.scale_
    principal = PCA(2).fit(scaled).components_.T
    outside = first_layers - principal @ (principal.T @ first_layers)
    assert np.linalg.norm(outside) < 1e-3 * np.linalg.norm(first_layers)


def test_research_variants_plug_in_through_the_estimators_seams():
    """A network or a trainer of one's own, through an estimator subclass: no patching."""

    class CountingNetwork(FFFNetwork):
        built = 0

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            CountingNetwork.built += 1

    class CountingTrainer(Trainer):
        steps = 0

        def train_step(self, *args):
            CountingTrainer.steps += 1
            return super().train_step(*args)

    class Variant(FFFClassifier):
        _network_class = CountingNetwork
        _trainer_class = CountingTrainer

    X, y = make_classification(n_samples=200, n_features=6, random_state=0)
    model = Variant(depth=2, max_iter=3, batch_size=50, random_state=0).fit(X, y)
    assert CountingNetwork.built == 1
    assert CountingTrainer.steps == 3 * 4  # three epochs of four batches
    assert isinstance(model._trainer, CountingTrainer)
    assert model.score(X, y) > 0.5
