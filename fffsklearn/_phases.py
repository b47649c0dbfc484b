"""What happens around the epochs of a fit: the hardening phase and the hooks of the loop.

:class:`Hardening` is the phase that ends FFF training, usable from any training loop
(:mod:`fffsklearn.nn`). The trainer's loop (:meth:`Trainer.fit`) calls hooks around each
epoch, each a small object with two methods, in the manner of skorch's callbacks:

- ``on_epoch_begin(trainer)`` before the epoch's steps;
- ``on_epoch_end(trainer, epoch)`` after them, with the :class:`Epoch` just completed; a hook
  ends the fit after this epoch with ``epoch.stop()``, and the hooks after it are not called.

:class:`BestEpoch` tracks the best balancing epoch and the epochs without improvement,
:class:`PhaseSwitch` ends balancing and runs the hardening phase, and the estimators add
their report (verbose lines and scikit-learn's callbacks, :mod:`fffsklearn._progress`)
between the two.
"""

from numbers import Integral, Real

import numpy as np
import torch


class Epoch:
    """An epoch just completed, as the hooks see it.

    Attributes
    ----------
    index : int
        Its index within this call of ``fit``, from 0.
    loss : float
        Its mean training objective.
    leaf_counts : ndarray of shape (2**depth,)
        Rows that hard routing sent to each leaf during the epoch.
    score : float or None
        Its held-out score, once :class:`BestEpoch` has taken it (early stopping).
    stopped : bool
        Whether a hook ended the fit after this epoch.
    """

    def __init__(self, trainer, index, loss):
        self.index, self.loss = index, loss
        self.leaf_counts = trainer.last_leaf_counts
        self.score = None
        self.stopped = False
        self._trainer = trainer
        self._arrays = None

    def arrays(self):
        """The epoch's model as FFFArrays for raw input rows, exported once when asked."""
        if self._arrays is None:
            self._arrays = self._trainer.deployed(self._trainer.network.to_arrays())
        return self._arrays

    def stop(self):
        """End the fit after this epoch."""
        self.stopped = True


class BestEpoch:
    """Hook: the best balancing epoch so far, and whether balancing has reached a plateau.

    With ``validation_score`` it scores each epoch's model on the held-out rows and keeps a
    copy of the parameters of the best; otherwise it follows the training objective.
    Balancing reaches a plateau once more than ``n_iter_no_change`` epochs in a row did not
    improve on the best by ``tol``.

    Parameters
    ----------
    validation_score : callable or None
        ``validation_score(arrays) -> float``, higher is better.
    best_loss : float
        Lowest objective of earlier calls (a warm start continues their plateau count).
    tol : float
    n_iter_no_change : int
    """

    def __init__(self, validation_score, best_loss, tol, n_iter_no_change):
        self.validation_score = validation_score
        self.best_loss, self.best_score = best_loss, -np.inf
        self.best_state = None
        self.tol, self.n_iter_no_change = tol, n_iter_no_change
        self.no_improvement, self.plateau = 0, False
        self.scores = []

    def on_epoch_begin(self, trainer):
        pass

    def on_epoch_end(self, trainer, epoch):
        if self.validation_score is not None:
            epoch.score = self.validation_score(epoch.arrays())
            self.scores.append(epoch.score)
        if trainer.hardening:
            return
        if self.validation_score is not None:
            improved = epoch.score > self.best_score + self.tol
            # A score that is NaN never improves, but the first epoch is kept.
            if self.best_state is None or epoch.score > self.best_score:
                self.best_score = epoch.score
                self.best_state = trainer.parameter_copy()
        else:
            improved = epoch.loss < self.best_loss - self.tol
            self.best_loss = min(self.best_loss, epoch.loss)
        self.no_improvement = 0 if improved else self.no_improvement + 1
        self.plateau = self.no_improvement > self.n_iter_no_change

    def kept_state(self, trainer):
        """The parameters that a fit ending now keeps: the best balancing epoch's under
        early stopping, else the network's own (a copy)."""
        if self.validation_score is not None and not trainer.hardening:
            return self.best_state
        return trainer.parameter_copy()


class PhaseSwitch:
    """Hook: balance until a plateau or until only the hardening phase is left of the
    budget, then harden for ``hardening_epochs`` (from the best epoch's parameters under
    early stopping), sharpening the routing as the phase asks.

    Parameters
    ----------
    best : BestEpoch
    hardening_epochs : int
    max_epochs : int
    """

    def __init__(self, best, hardening_epochs, max_epochs):
        self.best = best
        self.hardening_epochs, self.max_epochs = hardening_epochs, max_epochs

    def on_epoch_begin(self, trainer):
        trainer.hardening_phase.begin_epoch(trainer.network, trainer.optimizer)

    def on_epoch_end(self, trainer, epoch):
        if trainer.hardening:
            if trainer.hardening_phase.epochs_done == self.hardening_epochs:
                epoch.stop()
            return
        if self.best.plateau or epoch.index + 1 >= self.max_epochs - self.hardening_epochs:
            trainer.stop_reason = "plateau" if self.best.plateau else "max_iter"
            if not self.hardening_epochs:
                epoch.stop()
                return
            if self.best.validation_score is not None:
                trainer.load_parameters(self.best.best_state)
            trainer.start_hardening()


class Hardening:
    """The hardening phase that ends FFF training, as an object any training loop can drive.

    Started, it freezes the routing neurons, switches the network to the soft mixture of
    every leaf by path probability (``straight_through=False``) and scales the learning rate
    by ``learning_rate_factor``; then, at the start of every ``sharpen_every``-th epoch of
    the phase (the first included), it doubles every routing logit and forgets the
    optimizer's moments. Frozen, the routing cannot drift while the mixture sharpens, so the
    leaves learn the partition that hard routing, and therefore ``predict``, will use.

    Parameters
    ----------
    sharpen_every : int, default=1
        Epochs between two sharpenings.
    learning_rate_factor : float, default=0.1
        Factor on the learning rate of every parameter group during the phase.

    Examples
    --------
    >>> import torch
    >>> from fffsklearn.nn import FFFNetwork, Hardening
    >>> network = FFFNetwork(n_features=4, n_outputs=2, depth=2, random_state=0)
    >>> optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    >>> hardening, n_epochs, hardening_epochs = Hardening(), 10, 4
    >>> for epoch in range(n_epochs):
    ...     if epoch == n_epochs - hardening_epochs:
    ...         hardening.start(network, optimizer)
    ...     hardening.begin_epoch(network, optimizer)
    ...     # ... one epoch of mini-batch steps ...
    >>> hardening.active, network.straight_through, network.node_weights.requires_grad
    (True, False, False)
    """

    def __init__(self, sharpen_every=1, learning_rate_factor=0.1):
        if isinstance(sharpen_every, bool) or not isinstance(sharpen_every, Integral) or (
            sharpen_every < 1
        ):
            raise ValueError(f"sharpen_every must be an int >= 1, got {sharpen_every!r}.")
        if isinstance(learning_rate_factor, bool) or not isinstance(learning_rate_factor, Real) or (
            not 0 < learning_rate_factor < np.inf
        ):
            raise ValueError(
                f"learning_rate_factor must be a finite number > 0, got {learning_rate_factor!r}."
            )
        self.sharpen_every = sharpen_every
        self.learning_rate_factor = learning_rate_factor
        self.epochs_done = None

    @property
    def active(self):
        """Whether the phase has started (and not been stopped)."""
        return self.epochs_done is not None

    def start(self, network, optimizer):
        """Enter the phase: freeze the routing, train the soft mixture at the lower rate."""
        if self.active:
            return
        _set_routing_trainable(network, False)
        network.straight_through = False
        _scale_learning_rate(optimizer, self.learning_rate_factor)
        self.epochs_done = 0

    def begin_epoch(self, network, optimizer):
        """Call at the start of every epoch; sharpens the routing when one is due."""
        if not self.active:
            return
        if self.epochs_done % self.sharpen_every == 0:
            sharpen_routing(network)
            # The loss the moment estimates were taken on has changed.
            optimizer.state.clear()
        self.epochs_done += 1

    def stop(self, network, optimizer):
        """Leave the phase (to balance again): everything trains, straight-through."""
        if not self.active:
            return
        _set_routing_trainable(network, True)
        network.straight_through = True
        _scale_learning_rate(optimizer, 1.0 / self.learning_rate_factor)
        self.epochs_done = None


def _set_routing_trainable(network, trainable):
    for parameter in (network.node_weights, network.node_biases):
        parameter.requires_grad_(trainable)
        parameter.grad = None  # an optimizer skips a parameter without a gradient


def _scale_learning_rate(optimizer, factor):
    for group in optimizer.param_groups:
        group["lr"] *= factor
    optimizer.state.clear()


# Each sharpening doubles every routing logit; the cap keeps repeated warm-started fits far
# from float32 overflow (hard routing only reads the logits' signs).
_SHARPEN_CAP = 1e4


@torch.no_grad()
def sharpen_routing(network):
    """Halve the routing temperature of ``network``: double every node's weights and bias.

    Hard routing is unchanged; the soft path probabilities move towards 0 and 1. Does nothing
    once the largest routing weight has reached 10,000.
    """
    if network.depth and network.node_weights.abs().max() < _SHARPEN_CAP:
        network.node_weights.mul_(2.0)
        network.node_biases.mul_(2.0)
