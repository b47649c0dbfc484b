"""The torch side in the open: the public module, conversions both ways, and skorch."""

import doctest
import importlib
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits, make_friedman1
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from fffsklearn import FFFClassifier, FFFRegressor
from fffsklearn.nn import FFFNetwork, Hardening, load_balancing_loss

from .test_inference import assert_backends_agree


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X).astype(np.float32)
    return train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)


@pytest.mark.parametrize(
    "module", ["fffsklearn.nn", "fffsklearn._phases", "fffsklearn._classes", "fffsklearn.skorch"]
)
def test_docstring_examples_run(module):
    if module.endswith("skorch"):
        pytest.importorskip("skorch")
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted and not result.failed


def test_forward_returns_the_outputs_and_keeps_the_routing_of_the_same_pass():
    network = FFFNetwork(6, 3, depth=3, leaf_width=4, master_leaf_width=2, random_state=0)
    X = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    outputs = network(X)
    assert isinstance(outputs, torch.Tensor) and outputs.shape == (40, 3)
    assert network.routing.outputs is outputs
    reference = network.soft_forward(X, straight_through=True)
    torch.testing.assert_close(outputs, reference.outputs)
    # The loss of the routing reaches the routing neurons through the same pass.
    load_balancing_loss(network.routing).backward()
    assert network.node_weights.grad.abs().sum() > 0
    # A module that has run a forward still pickles: the routing is not part of the model.
    restored = pickle.loads(pickle.dumps(network))
    assert restored.routing is None
    torch.testing.assert_close(restored(X), outputs)


def test_the_same_seed_gives_the_same_network():
    first, second = (FFFNetwork(5, 2, depth=2, random_state=3) for _ in range(2))
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)


def test_hardening_freezes_the_routing_sharpens_on_schedule_and_stops():
    network = FFFNetwork(4, 2, depth=2, random_state=0)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    start = network.node_weights.detach().clone()
    hardening = Hardening(sharpen_every=2, learning_rate_factor=0.1)
    hardening.begin_epoch(network, optimizer)  # not started: nothing happens
    assert torch.equal(network.node_weights, start) and not hardening.active

    hardening.start(network, optimizer)
    assert not network.node_weights.requires_grad and not network.straight_through
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    X, y = torch.randn(30, 4), torch.randint(0, 2, (30,))
    for epoch in range(4):
        hardening.begin_epoch(network, optimizer)
        optimizer.zero_grad()
        F.cross_entropy(network(X), y).backward()
        optimizer.step()
        # Sharpened at the first epoch of the phase and every second one; otherwise frozen.
        torch.testing.assert_close(network.node_weights.detach(), start * 2 ** (epoch // 2 + 1))

    hardening.stop(network, optimizer)
    assert network.node_weights.requires_grad and network.straight_through
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2)
    assert not hardening.active


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_to_module_and_from_network_round_trip_a_classifier(digits):
    X_train, X_test, y_train, _ = digits
    labels = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven",
                       "eight", "nine"])[y_train]
    model = FFFClassifier(depth=3, max_iter=6, random_state=0)
    model.fit(X_train * 3.0 + 1.0, labels)  # unscaled: standardize folds into arrays_
    module = model.to_module()
    assert module.training and module.straight_through and module.region_leak == 0.0

    rebuilt = FFFClassifier.from_network(module, X_train * 3.0 + 1.0, model.classes_)
    X = X_test * 3.0 + 1.0
    np.testing.assert_array_equal(rebuilt.apply(X), model.apply(X))
    np.testing.assert_allclose(rebuilt.predict_proba(X), model.predict_proba(X), rtol=1e-5)
    np.testing.assert_array_equal(rebuilt.leaf_sample_counts_, model.leaf_sample_counts_)
    assert rebuilt.get_params()["depth"] == 3 and rebuilt.n_features_in_ == X.shape[1]
    # The estimator trains its first layers as the network does, should it warm-start.
    assert rebuilt.projection_rank is None and model.projection_rank == 32
    projected = FFFNetwork(X.shape[1], 10, depth=2, random_state=0, projection_rank=5)
    assert FFFClassifier.from_network(projected, X, model.classes_).projection_rank == 5

    # The module is a copy: training it leaves the estimator alone.
    with torch.no_grad():
        module.node_weights.neg_()
    np.testing.assert_array_equal(rebuilt.predict(X), model.predict(X))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_to_module_of_a_regressor_returns_the_targets_in_their_units():
    X, y = make_friedman1(n_samples=400, random_state=0)
    y = np.column_stack((100 * y + 1000, -y))
    model = FFFRegressor(depth=2, max_iter=5, random_state=0).fit(X, y)
    module = model.to_module().eval()
    with torch.no_grad():
        outputs = module(torch.from_numpy(X.astype(np.float32))).numpy()
    np.testing.assert_allclose(outputs, model.predict(X), rtol=1e-4, atol=1e-2)
    rebuilt = FFFRegressor.from_network(module, X)
    np.testing.assert_allclose(rebuilt.predict(X), model.predict(X), rtol=1e-4, atol=1e-2)
    assert rebuilt.predict(X).shape == (400, 2)
    one_target = FFFRegressor.from_network(FFFNetwork(10, 1, depth=1, random_state=0), X)
    assert one_target.predict(X).shape == (400,)


@pytest.mark.parametrize("magnitude", [1e30, 1e36])
def test_to_module_of_a_regressor_of_huge_targets_round_trips(magnitude):
    """Every model that fit makes converts: the module keeps the target scaling as fixed
    buffers instead of folding it into weights beyond the arrays' limit."""
    X, y = make_friedman1(n_samples=300, random_state=0)
    model = FFFRegressor(depth=2, max_iter=5, random_state=0).fit(X, y * magnitude)
    module = model.to_module().eval()
    with torch.no_grad():
        outputs = module(torch.from_numpy(X.astype(np.float32))).numpy()
    np.testing.assert_allclose(outputs[:, 0], model.predict(X), rtol=1e-4)
    rebuilt = FFFRegressor.from_network(module, X)
    np.testing.assert_allclose(rebuilt.predict(X), model.predict(X), rtol=1e-5)


def test_from_network_refuses_what_it_cannot_interpret(rng):
    X = rng.standard_normal((20, 5)).astype(np.float32)
    network = FFFNetwork(5, 3, depth=2, random_state=0)
    with pytest.raises(ValueError, match="3 outputs but 2 classes"):
        FFFClassifier.from_network(network, X, classes=[0, 1])
    with pytest.raises(ValueError, match="sorted as numpy.unique"):
        FFFClassifier.from_network(network, X, classes=[2, 1, 0])
    with pytest.raises(ValueError, match="X has 4 features, but the network takes 5"):
        FFFClassifier.from_network(network, X[:, :4], classes=[0, 1, 2])
    with pytest.raises(TypeError, match="FFFNetwork or an FFFArrays"):
        FFFRegressor.from_network(torch.nn.Linear(5, 1), X)
    with pytest.raises(ValueError, match="n_jobs"):
        FFFClassifier.from_network(network, X, classes=[0, 1, 2], n_jobs=0)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_plain_torch_loop_trains_a_model_that_every_backend_predicts_alike(digits):
    X_train, X_test, y_train, y_test = digits
    torch.manual_seed(0)
    network = FFFNetwork(X_train.shape[1], 10, depth=3, random_state=0)
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    hardening, n_epochs = Hardening(), 12
    X, y = torch.from_numpy(X_train), torch.from_numpy(y_train)
    for epoch in range(n_epochs):
        if epoch == n_epochs - 4:
            hardening.start(network, optimizer)
        hardening.begin_epoch(network, optimizer)
        for rows in torch.randperm(len(X)).split(100):
            optimizer.zero_grad()
            loss = F.cross_entropy(network(X[rows]), y[rows])
            (loss + load_balancing_loss(network.routing)).backward()
            optimizer.step()
    model = FFFClassifier.from_network(network, X_train, classes=np.arange(10))
    assert model.score(X_test, y_test) > 0.85
    assert np.count_nonzero(model.leaf_sample_counts_) == 8
    assert_backends_agree(model.arrays_, X_test)
    # The module in evaluation mode routes and predicts like the kernel.
    with torch.no_grad():
        outputs = network.eval()(torch.from_numpy(X_test)).numpy()
    np.testing.assert_array_equal(network.routing.hard_one_hot.argmax(1).numpy(),
                                  model.apply(X_test))
    np.testing.assert_array_equal(outputs.argmax(1), model.predict(X_test))
    # It continues training like any fitted estimator.
    model.set_params(warm_start=True, max_iter=2).fit(X_train, y_train)
    assert model.n_iter_ == 2


# ------------------------------------------------------------------------------------- skorch
def _path_margins(arrays, X, leaves):
    """Smallest |logit| of each row over the nodes of its path to ``leaves``, in float64."""
    logits = X.astype(np.float64) @ arrays.node_weights.T.astype(np.float64)
    logits += arrays.node_biases
    margins = np.full(len(X), np.inf)
    for level in range(arrays.depth):
        nodes = ((leaves + arrays.n_leaves) >> (arrays.depth - level)) - 1
        margins = np.minimum(margins, np.abs(logits[np.arange(len(X)), nodes]))
    return margins


def _skorch_classifier(n_features, max_epochs, callbacks, **params):
    skorch = pytest.importorskip("skorch")
    return skorch.NeuralNetClassifier(
        FFFNetwork, module__n_features=n_features, module__n_outputs=10, module__depth=3,
        module__random_state=0, criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam, lr=3e-3, batch_size=100, max_epochs=max_epochs,
        train_split=None, verbose=0, callbacks=callbacks, **params,
    )


def test_the_load_balancing_callback_trains_the_loss_plus_the_penalty(digits):
    pytest.importorskip("skorch")
    from fffsklearn.skorch import LoadBalancing

    X_train, _, y_train, _ = digits
    X, y = X_train[:100], y_train[:100]
    net = _skorch_classifier(X.shape[1], 1, [LoadBalancing(weight=0.5)]).initialize()
    callback = dict(net.callbacks_)["LoadBalancing"]
    callback.on_train_begin(net)
    net.module_.train()
    loss = net.get_loss(net.infer(torch.from_numpy(X)), torch.from_numpy(y), training=True)
    loss.backward()
    with_callback = [p.grad.clone() for p in net.module_.parameters()]
    callback.on_train_end(net)

    net.module_.zero_grad()
    outputs = net.module_(torch.from_numpy(X))
    explicit = F.cross_entropy(outputs, torch.from_numpy(y))
    (explicit + 0.5 * load_balancing_loss(net.module_.routing)).backward()
    torch.testing.assert_close(loss, explicit)  # the recorded loss is the criterion's
    for got, expected in zip(with_callback, (p.grad for p in net.module_.parameters())):
        torch.testing.assert_close(got, expected)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_skorch_trains_an_fff_that_converts_without_changing_a_leaf(digits):
    pytest.importorskip("skorch")
    from fffsklearn.skorch import Hardening as HardeningCallback
    from fffsklearn.skorch import LoadBalancing, to_estimator

    X_train, X_test, y_train, y_test = digits
    hardening = HardeningCallback(epochs=4)
    net = _skorch_classifier(X_train.shape[1], 12, [LoadBalancing(), hardening])
    net.fit(X_train, y_train)
    assert "load_balancing" in net.history[-1, "batches", 0]
    # Back to balancing after training, with the learning rate restored.
    assert net.module_.straight_through and net.module_.node_weights.requires_grad
    assert net.optimizer_.param_groups[0]["lr"] == pytest.approx(3e-3)

    model = to_estimator(net, X_train)
    assert model.score(X_test, y_test) > 0.85
    np.testing.assert_array_equal(model.predict(X_test), net.predict(X_test))
    np.testing.assert_allclose(model.predict_proba(X_test), net.predict_proba(X_test),
                               rtol=1e-4, atol=1e-6)
    # Rows away from every routing boundary: skorch's forward and the kernel pick one leaf.
    net.module_.eval()
    with torch.no_grad():
        net.module_(torch.from_numpy(X_test))
    skorch_leaves = net.module_.routing.hard_one_hot.argmax(1).numpy()
    away = _path_margins(model.arrays_, X_test, model.apply(X_test)) > 1e-4
    assert away.mean() > 0.95
    np.testing.assert_array_equal(skorch_leaves[away], model.apply(X_test)[away])
    assert_backends_agree(model.arrays_, X_test)

    for restored_net, restored_model in [pickle.loads(pickle.dumps((net, model)))]:
        np.testing.assert_array_equal(restored_net.predict(X_test), net.predict(X_test))
        np.testing.assert_array_equal(restored_model.predict(X_test), model.predict(X_test))


def test_the_fff_callbacks_refuse_another_module():
    skorch = pytest.importorskip("skorch")
    from fffsklearn.skorch import LoadBalancing

    net = skorch.NeuralNetClassifier(
        torch.nn.Linear, module__in_features=3, module__out_features=2,
        criterion=torch.nn.CrossEntropyLoss, max_epochs=1, train_split=None, verbose=0,
        callbacks=[LoadBalancing()],
    )
    X = np.zeros((4, 3), np.float32)
    with pytest.raises(TypeError, match="train an fffsklearn.nn.FFFNetwork"):
        net.fit(X, np.array([0, 1, 0, 1]))


def test_cloning_and_cross_validating_a_fitted_skorch_net_with_the_callbacks(digits):
    """skorch reads a callback's attributes that do not end in "_" as parameters."""
    pytest.importorskip("skorch")
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_score

    from fffsklearn.skorch import Hardening as HardeningCallback
    from fffsklearn.skorch import LoadBalancing

    X_train, _, y_train, _ = digits
    net = _skorch_classifier(X_train.shape[1], 2, [LoadBalancing(), HardeningCallback(epochs=1)])
    net.fit(X_train, y_train)
    fresh = clone(net)
    assert [type(c).__name__ for c in fresh.callbacks] == ["LoadBalancing", "Hardening"]
    assert fresh.callbacks[1].epochs == 1
    scores = cross_val_score(net, X_train, y_train, cv=2)
    assert np.isfinite(scores).all()


def test_the_hardening_and_load_balancing_settings_are_checked_when_made():
    pytest.importorskip("skorch")
    from fffsklearn.skorch import Hardening as HardeningCallback
    from fffsklearn.skorch import LoadBalancing

    for bad in ({"sharpen_every": 0}, {"sharpen_every": 2.0}, {"learning_rate_factor": 0},
                {"learning_rate_factor": float("inf")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Hardening(**bad)
        with pytest.raises(ValueError, match=next(iter(bad))):
            HardeningCallback(**bad)
    with pytest.raises(ValueError, match="epochs must be an int >= 0"):
        HardeningCallback(epochs=-1)
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        LoadBalancing(weight=-1)


def test_converting_an_unfitted_or_compiled_skorch_net_says_what_is_wrong(digits):
    pytest.importorskip("skorch")
    from sklearn.exceptions import NotFittedError

    from fffsklearn.skorch import to_estimator

    X_train = digits[0]
    with pytest.raises(NotFittedError, match="fit it before to_estimator"):
        to_estimator(_skorch_classifier(X_train.shape[1], 1, []), X_train)
    compiled = _skorch_classifier(X_train.shape[1], 1, [], compile=True).initialize()
    with pytest.raises(TypeError, match="compile=True"):
        to_estimator(compiled, X_train)


def test_converting_a_binary_skorch_classifier_gives_a_classifier_that_predicts_as_it_does():
    skorch = pytest.importorskip("skorch")
    from fffsklearn.skorch import Hardening, LoadBalancing, to_estimator

    X, y = _scaled_breast_cancer()
    net = skorch.NeuralNetBinaryClassifier(
        FFFNetwork, module__n_features=X.shape[1], module__n_outputs=1, module__depth=2,
        module__random_state=0, optimizer=torch.optim.Adam, lr=3e-3, max_epochs=10,
        train_split=None, verbose=0, callbacks=[LoadBalancing(), Hardening(epochs=2)],
    ).fit(X, y)
    model = to_estimator(net, X)
    assert isinstance(model, FFFClassifier)
    np.testing.assert_array_equal(model.classes_, [0, 1])
    np.testing.assert_array_equal(model.predict(X), net.predict(X))
    np.testing.assert_allclose(model.predict_proba(X), net.predict_proba(X), atol=1e-5)
    assert model.score(X, y) > 0.9
    net.set_params(threshold=0.3)
    with pytest.raises(ValueError, match="threshold=0.3"):
        to_estimator(net, X)


def _scaled_breast_cancer():
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    return StandardScaler().fit_transform(X).astype(np.float32), y.astype(np.float32)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"depth": -1}, "depth must be an int in"),
        ({"depth": 2.0}, "depth must be an int in"),
        ({"depth": 25}, "depth must be an int in"),
        ({"leaf_width": 0}, "leaf_width must be an int >= 1"),
        ({"master_leaf_width": -1}, "master_leaf_width must be an int >= 0"),
        ({"activation": "gelu"}, "activation must be one of"),
        ({"projection_rank": 0}, "projection_rank must be an int >= 1"),
        ({"region_leak": 0.9}, "region_leak must be a number in"),
        ({"n_features": 784, "depth": 20}, "GiB of parameters"),
    ],
)
def test_building_a_network_of_impossible_arguments_raises_before_allocating(arguments, message):
    arguments = {"n_features": 8, "n_outputs": 3, **arguments}
    with pytest.raises(ValueError, match=message):
        FFFNetwork(**arguments)


def test_a_network_after_an_encoder_trains_the_encoder_and_gives_input_gradients():
    torch.manual_seed(0)
    X = torch.randn(256, 5)
    y = (X[:, 0] + X[:, 1] > 0).long() + (X[:, 2] > 1).long()
    encoder = torch.nn.Linear(5, 8)
    model = torch.nn.Sequential(encoder, FFFNetwork(8, 3, depth=2, random_state=0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first_weights = encoder.weight.detach().clone()
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert not torch.equal(encoder.weight, first_weights)
    assert losses[-1] < losses[0]
    # A saliency map: the gradient of a class score with respect to the rows.
    rows = X[:10].clone().requires_grad_()
    model(rows)[:, 1].sum().backward()
    assert rows.grad is not None and rows.grad.shape == rows.shape
    assert rows.grad.abs().sum() > 0


@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity"])
@pytest.mark.parametrize("region_leak", [0.0, 0.3])
@pytest.mark.parametrize("projection_rank", [None, 2])
def test_the_mixture_of_the_leaves_passes_gradcheck_against_its_input(
    activation, region_leak, projection_rank
):
    """The hardening phase's outputs (every leaf by path probability) are smooth in the rows:
    the analytic input gradient must be their derivative. (Hard routing is piecewise
    constant; its straight-through surrogate is checked against the formulas in
    ``tests/test_network.py``.)"""
    network = FFFNetwork(4, 2, depth=2, leaf_width=3, master_leaf_width=2,
                         activation=activation, straight_through=False,
                         region_leak=region_leak, random_state=0,
                         projection_rank=projection_rank).double().train()
    X = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    X.requires_grad_()

    def outputs(rows):
        # The same region-leak draws at every evaluation of the finite differences.
        return network(rows, generator=torch.Generator().manual_seed(2))

    assert torch.autograd.gradcheck(outputs, (X,))


def test_a_network_runs_under_cpu_autocast_in_its_own_dtype():
    torch.manual_seed(0)
    X = torch.randn(64, 5)
    y = (X[:, 0] > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), FFFNetwork(8, 2, depth=2, random_state=0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        encoded = model[0](X)
        outputs = model(X)
        loss = F.cross_entropy(outputs, y)
    loss.backward()
    assert encoded.dtype == torch.bfloat16 and outputs.dtype == torch.float32
    # The encoder ran in bfloat16, the network in float32 from its rounded outputs.
    torch.testing.assert_close(outputs, model[1](encoded.float()))
    assert model[0].weight.grad is not None and torch.isfinite(model[0].weight.grad).all()
    assert model[1].node_weights.grad is not None


def test_fine_tuning_to_module_on_raw_rows_far_from_zero_keeps_the_accuracy(digits):
    """The module standardises its rows itself, with the fitted statistics held fixed, so
    Adam at its usual rate fine-tunes it as well as it trained (with the standardisation
    folded into the first layers, the same loop dropped the accuracy to chance)."""
    X_train, X_test, y_train, y_test = (part + 1000.0 if i < 2 else part
                                        for i, part in enumerate(digits))
    model = FFFClassifier(depth=3, random_state=0, max_iter=30).fit(X_train, y_train)
    module = model.to_module()
    assert {name for name, _ in module.named_buffers()} == {"input_mean", "input_scale"}
    # Converted back untouched, it is the same model.
    untouched = FFFClassifier.from_network(module.eval(), X_train, model.classes_)
    np.testing.assert_array_equal(untouched.predict(X_test), model.predict(X_test))
    optimizer = torch.optim.Adam(module.train().parameters(), lr=1e-3)
    rows, labels = torch.as_tensor(X_train, dtype=torch.float32), torch.as_tensor(y_train)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for batch in torch.randperm(len(rows), generator=generator).split(64):
            optimizer.zero_grad()
            outputs = module(rows[batch])
            loss = F.cross_entropy(outputs, labels[batch])
            (loss + 0.1 * load_balancing_loss(module.routing)).backward()
            optimizer.step()
    tuned = FFFClassifier.from_network(module.eval(), X_train, model.classes_)
    assert tuned.score(X_test, y_test) >= model.score(X_test, y_test) - 0.02
    np.testing.assert_array_equal(tuned.predict(X_test), module(
        torch.as_tensor(X_test, dtype=torch.float32)).argmax(1).numpy())


def test_a_network_refuses_an_input_scaling_it_cannot_use():
    for scaling in [(np.zeros(3), np.ones(4)), (np.zeros(4), np.zeros(4)),
                    (np.full(4, np.nan), np.ones(4)), "mean"]:
        with pytest.raises(ValueError, match="input_scaling must be"):
            FFFNetwork(4, 2, depth=1, input_scaling=scaling)


def test_a_skorch_partial_fit_shorter_than_the_hardening_start_says_it_ran_none(digits):
    pytest.importorskip("skorch")
    import warnings

    from skorch.callbacks import EarlyStopping

    from fffsklearn.skorch import Hardening, LoadBalancing

    X_train, _, y_train, _ = digits
    net = _skorch_classifier(X_train.shape[1], 6, [LoadBalancing(), Hardening(epochs=2)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.fit(X_train, y_train)  # the phase runs: nothing to say
    with pytest.warns(UserWarning, match="Hardening did not run: this call trained 3 epochs"):
        net.partial_fit(X_train, y_train, epochs=3)
    assert net.module_.straight_through and net.module_.node_weights.requires_grad
    # Early stopping before the phase leaves the hard-routed model on purpose: no warning.
    stopping = _skorch_classifier(
        X_train.shape[1], 30, [LoadBalancing(), Hardening(epochs=2),
                               EarlyStopping(monitor="train_loss", patience=1, threshold=10.0)],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stopping.fit(X_train, y_train)
    assert len(stopping.history) < 28
