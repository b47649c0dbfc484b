"""Train an FFF with skorch's own loop, then predict with fffsklearn's compiled kernel.

Needs the optional extra ``fffsklearn[skorch]``. Give skorch the module
:class:`fffsklearn.nn.FFFNetwork` and the two callbacks of FFF training:

- :class:`LoadBalancing`, the load-balancing penalty that keeps every leaf in use;
- :class:`Hardening`, the phase that ends training by sharpening the soft routing into the
  hard routing that prediction uses.

:func:`to_estimator` turns the trained net into a fitted :class:`~fffsklearn.FFFClassifier`
or :class:`~fffsklearn.FFFRegressor`, which predicts through the compiled kernel, pickles,
exports to ONNX and joins a Pipeline like any other.

Examples
--------
>>> import numpy as np
>>> from torch import nn
>>> from skorch import NeuralNetClassifier
>>> from fffsklearn.nn import FFFNetwork
>>> from fffsklearn.skorch import Hardening, LoadBalancing, to_estimator
>>> rng = np.random.default_rng(0)
>>> X = rng.standard_normal((200, 5)).astype(np.float32)
>>> y = (X[:, 0] > 0).astype(np.int64)
>>> net = NeuralNetClassifier(
...     FFFNetwork, module__n_features=5, module__n_outputs=2, module__depth=2,
...     criterion=nn.CrossEntropyLoss, optimizer=__import__("torch").optim.Adam, lr=3e-3,
...     max_epochs=8, train_split=None, verbose=0,
...     callbacks=[LoadBalancing(), Hardening(epochs=2)],
... ).fit(X, y)
>>> model = to_estimator(net, X)
>>> bool((model.predict(X) == net.predict(X)).all())
True
"""

import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.exceptions import NotFittedError

try:
    from skorch import NeuralNetBinaryClassifier, NeuralNetClassifier
    from skorch.callbacks import Callback
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError(
        "fffsklearn.skorch needs skorch: pip install 'fffsklearn[skorch]'."
    ) from error

from . import nn as fff_nn
from ._arrays import FFFArrays
from ._classes import FFFClassifier, FFFRegressor

__all__ = ["Hardening", "LoadBalancing", "to_estimator"]


def _fff_module(net):
    module = net.module_
    if hasattr(module, "_orig_mod"):  # torch.compile's wrapper
        raise TypeError(
            f"{type(net).__name__} was built with compile=True: the fffsklearn callbacks and "
            "to_estimator need the fffsklearn.nn.FFFNetwork itself. Set compile=False."
        )
    if not isinstance(module, fff_nn.FFFNetwork):
        raise TypeError(
            f"{type(net).__name__}.module_ is a {type(module).__name__}; the fffsklearn "
            "callbacks train an fffsklearn.nn.FFFNetwork."
        )
    return module


class _PenaltyGradient(torch.autograd.Function):
    """Passes ``outputs`` through and gives ``penalty`` the gradient 1 in the backward pass,
    so that backpropagating any loss of the outputs also backpropagates the penalty."""

    @staticmethod
    def forward(ctx, outputs, penalty):
        return outputs.clone()

    @staticmethod
    def backward(ctx, grad_outputs):
        return grad_outputs, torch.ones((), dtype=grad_outputs.dtype,
                                        device=grad_outputs.device)


class LoadBalancing(Callback):
    """The load-balancing penalty of FFF training, for skorch.

    While the net trains, every training forward of the
    :class:`~fffsklearn.nn.FFFNetwork` adds the gradient of
    ``weight * load_balancing_loss(module.routing)`` to the backward pass of skorch's loss,
    as an optimizer's weight decay adds the gradient of an L2 penalty: training is that of
    the loss plus the penalty, whatever the criterion, and the predicted outputs and the
    recorded ``train_loss`` stay those of the criterion. The penalty of each training batch
    is recorded in the history as ``load_balancing``.

    Parameters
    ----------
    weight : float, default=1.0
        Weight of the penalty, as ``load_balancing`` of the estimators.
    """

    def __init__(self, weight=1.0):
        if isinstance(weight, bool) or not isinstance(weight, Real) or not 0 <= weight < np.inf:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}.")
        self.weight = weight

    # The hook and the last penalty end with "_": skorch reads every other attribute of a
    # callback as a parameter (get_params, and so clone).
    def initialize(self):
        self.handle_ = None
        self.last_penalty_ = None
        return self

    def on_train_begin(self, net, **kwargs):
        self._remove_hook()
        self.handle_ = _fff_module(net).register_forward_hook(self._add_penalty)

    def on_train_end(self, net, **kwargs):
        self._remove_hook()

    def on_batch_end(self, net, batch=None, training=False, **kwargs):
        if training and self.last_penalty_ is not None:
            net.history.record_batch("load_balancing", float(self.last_penalty_))
        self.last_penalty_ = None

    def _add_penalty(self, module, args, outputs):
        if not (module.training and module.depth and self.weight and torch.is_grad_enabled()):
            return None
        penalty = self.weight * fff_nn.load_balancing_loss(module.routing)
        self.last_penalty_ = penalty.detach()
        return _PenaltyGradient.apply(outputs, penalty)

    def _remove_hook(self):
        if getattr(self, "handle_", None) is not None:
            self.handle_.remove()
        self.handle_ = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["handle_"] = state["last_penalty_"] = None  # live only while training
        return state


class Hardening(Callback):
    """The hardening phase of FFF training, over the last ``epochs`` of ``max_epochs``.

    Drives a :class:`fffsklearn.nn.Hardening`: from epoch ``max_epochs - epochs`` of each
    call of ``fit`` or ``partial_fit`` on, the routing is frozen, the leaves train under the
    soft mixture at ``learning_rate_factor`` times the learning rate, and the routing is
    sharpened every ``sharpen_every`` epochs, so the soft model the net trains converges to
    the hard one that predicts. When training ends the net returns to the balancing phase
    (routing trainable, straight-through, the learning rate restored) for the next call.
    A training stopped early (``EarlyStopping``) before the phase leaves the
    straight-through model, which already is the hard-routed one. An LR scheduler that sets
    the learning rate itself overrides ``learning_rate_factor``; pass 1.0 then.

    skorch does not tell callbacks the ``epochs`` of ``partial_fit(X, y, epochs=n)``, so the
    phase still starts at epoch ``max_epochs - epochs`` of the call: a call that ends before
    it, without early stopping, warns that it ran no hardening.

    Parameters
    ----------
    epochs : int, default=16
        Length of the phase; at most ``max_epochs``.
    sharpen_every : int, default=1
        Epochs between two sharpenings.
    learning_rate_factor : float, default=0.1
        Factor on the learning rate during the phase.
    """

    def __init__(self, epochs=16, sharpen_every=1, learning_rate_factor=0.1):
        if isinstance(epochs, bool) or not isinstance(epochs, Integral) or epochs < 0:
            raise ValueError(f"epochs must be an int >= 0, got {epochs!r}.")
        fff_nn.Hardening(sharpen_every, learning_rate_factor)  # validates them
        self.epochs = epochs
        self.sharpen_every = sharpen_every
        self.learning_rate_factor = learning_rate_factor

    def initialize(self):
        self.phase_ = fff_nn.Hardening(self.sharpen_every, self.learning_rate_factor)
        self.epochs_before_ = 0
        return self

    def on_train_begin(self, net, **kwargs):
        _fff_module(net)
        self.epochs_before_ = len(net.history)

    def on_epoch_begin(self, net, **kwargs):
        epoch = len(net.history) - self.epochs_before_ - 1  # this call's, from 0
        if epoch == max(0, net.max_epochs - self.epochs):
            self.phase_.start(net.module_, net.optimizer_)
        self.phase_.begin_epoch(net.module_, net.optimizer_)

    def on_train_end(self, net, **kwargs):
        ran = len(net.history) - self.epochs_before_
        start = max(0, net.max_epochs - self.epochs)
        if self.epochs and not self.phase_.active and not _stopped_early(net):
            warnings.warn(
                f"Hardening did not run: this call trained {ran} epochs and the phase starts "
                f"at epoch {start} of a call (max_epochs={net.max_epochs} minus "
                f"epochs={self.epochs}); skorch does not tell callbacks the epochs of "
                "partial_fit. The net keeps its straight-through (hard-routed) model. Call "
                "partial_fit with at least max_epochs epochs, or set max_epochs to the "
                "epochs of your calls.",
                UserWarning,
                stacklevel=2,
            )
        self.phase_.stop(net.module_, net.optimizer_)


def _stopped_early(net):
    """Whether one of ``net``'s callbacks ended the training early (skorch's
    EarlyStopping counts its misses in ``misses_``)."""
    return any(
        getattr(callback, "misses_", 0) >= getattr(callback, "patience", float("inf"))
        for _, callback in net.callbacks_
    )


def to_estimator(net, X, **params):
    """The fitted fffsklearn estimator of a skorch net that trained an FFFNetwork.

    Parameters
    ----------
    net : skorch.NeuralNetClassifier, NeuralNetBinaryClassifier or NeuralNetRegressor
        A trained net whose ``module_`` is an :class:`fffsklearn.nn.FFFNetwork`. A
        classifier's module returns one logit per class of ``net.classes_``; a binary
        classifier's, one logit (of class 1, with the default ``threshold=0.5``).
    X : array-like of shape (n_samples, n_features)
        The rows it was trained on (see ``FFFClassifier.from_network``).
    **params
        Parameters of the estimator, for example ``n_jobs``, or ``classes`` (the labels of
        the outputs, when they are not ``net.classes_``).

    Returns
    -------
    estimator : FFFClassifier or FFFRegressor
        A classifier for either kind of skorch classifier: it predicts the classes and
        probabilities that the net predicts.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        If the net has not been initialised (trained).
    ValueError
        If a binary classifier's module has more than one output, or its ``threshold`` is
        not 0.5 (an FFFClassifier predicts the most probable class).
    """
    if not getattr(net, "initialized_", False):
        raise NotFittedError(
            f"This {type(net).__name__} is not initialized yet: fit it before to_estimator."
        )
    module = _fff_module(net)
    if isinstance(net, NeuralNetBinaryClassifier):
        network, classes = _two_class_logits(net, module), [0, 1]
    elif isinstance(net, NeuralNetClassifier):
        network, classes = module, net.classes_
    else:
        return FFFRegressor.from_network(module, X, **params)
    classes = params.pop("classes", classes)
    return FFFClassifier.from_network(network, X, np.asarray(classes), **params)


def _two_class_logits(net, module):
    """The arrays of a binary net's one-logit module with a logit of 0 put before it: the
    softmax of ``(0, z)`` is ``(1 - sigmoid(z), sigmoid(z))``, the net's probabilities, and
    its most probable class is the net's prediction at ``threshold=0.5``."""
    if net.threshold != 0.5:
        raise ValueError(
            f"{type(net).__name__} has threshold={net.threshold}; an FFFClassifier predicts "
            "the most probable class, which is the net's prediction only at threshold=0.5."
        )
    arrays = module.to_arrays()
    if arrays.n_outputs != 1:
        raise ValueError(
            f"A {type(net).__name__}'s module returns one logit; this FFFNetwork has "
            f"{arrays.n_outputs} outputs."
        )
    state = arrays.__getstate__()
    for name in ("leaf_output_weights", "leaf_output_biases", "master_output_weights",
                 "master_output_biases"):
        state[name] = np.concatenate((np.zeros_like(state[name]), state[name]), axis=-1)
    return FFFArrays(**state)
