"""The training loop: mini-batch Adam with the FFF regularisers, in two phases.

Balancing: the straight-through forward (the loss of the hard-routed model) with the
load-balancing loss; every parameter trains. Hardening: the routing neurons are frozen and the
leaves train under the soft path-probability mixture, with the routing sharpened every few
epochs, so that the soft model the network is trained as converges to the hard one that
predicts.

The steps nest as in skorch: :meth:`Trainer.fit` runs epochs and calls the hooks around them
(:mod:`fffsklearn._phases`), :meth:`Trainer.run_epoch` runs an epoch's mini-batches, and
:meth:`Trainer.train_step` takes one optimizer step. Every number comes from the
:class:`~fffsklearn._recipe.Recipe`; the task is in the recipe's loss object. A research
variant is an estimator subclass whose ``_trainer_class`` is a :class:`Trainer` subclass (a
step, an epoch of its own) or whose ``_network_class`` is an ``FFFNetwork`` subclass (a
forward of its own, as ``benchmarks/bench_sparse_training.py`` does); nothing here is patched
from outside.
"""

from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch
from scipy.special import ndtri

from ._arrays import FFFArrays
from ._device import training_threads
from ._network import (
    FFFNetwork,
    _compiled,
    _training_kernel,
    leaf_parameters,
    projected_rank,
)
from ._optim import FusedAdam
from ._phases import BestEpoch, Epoch, Hardening, PhaseSwitch
from ._preparation import CHUNK_VALUES, dense_rows


class _CapturedStep:
    """A training step captured once as a CUDA graph, replayed on every next batch.

    Parameters
    ----------
    key : tuple
        What the step baked in besides the optimizer's moments; :meth:`replays` compares it.
    optimizer : FusedAdam
        Its moments must exist: a capture records kernels without running them, so moments
        created during it would be zeros created anew at every replay.
    batch : tuple of tensors
        The first batch's rows, targets and weights; the graph reads copies of them that
        every replay overwrites.
    step : callable
        ``step(X, y, weight)``: the operations to capture.
    """

    def __init__(self, key, optimizer, batch, step):
        self.key = key
        self.moments = optimizer.moment_tensors()
        self.inputs = [tensor.clone() for tensor in batch]
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            step(*self.inputs)

    def replays(self, key, optimizer):
        """Whether this graph runs the step that ``key`` and the optimizer's moments ask for."""
        moments = optimizer.moment_tensors()
        return key == self.key and len(moments) == len(self.moments) and all(
            a is b for a, b in zip(moments, self.moments)
        )

    def run(self, *batch):
        """The captured step on ``batch`` (tensors of the captured shapes)."""
        for tensor, value in zip(self.inputs, batch):
            tensor.copy_(value)
        self.graph.replay()


# The standard normal's quantiles at the middles of 65,536 equally likely bins, scaled to unit
# variance: the compiled input noise (Trainer._with_noise) reads them at 16 random bits.
_NORMAL_QUANTILES = ndtri((np.arange(2**16) + 0.5) / 2**16)
_NORMAL_QUANTILES = (_NORMAL_QUANTILES / _NORMAL_QUANTILES.std()).astype(np.float32)


def training_memory_bytes(n_features, n_outputs, depth, leaf_width, master_leaf_width,
                          batch_size, projection_rank=None):
    """Estimated peak memory of training such a network, in bytes (float32), beyond what the
    process held before.

    Every parameter is held with its gradient and Adam's two moments, plus two copies while
    an epoch's weights are exported; every row of a batch computes every leaf, with about
    four (rows x training width) temporaries and the path sums alive at once. An input
    projection of rank ``r`` makes the first layers ``r`` rows deep, adds its own
    ``n_features * r`` values, two (rows x ``r``) temporaries per batch, and the products
    that an export computes, two copies of the first layers at full depth.
    """
    n_leaves = 2**depth
    width = n_leaves * leaf_width
    first_layer_depth = n_features
    projection = batch_projection = exported_products = 0
    if projection_rank is not None:
        first_layer_depth = projected_rank(projection_rank, n_features, width + master_leaf_width)
        projection = n_features * first_layer_depth
        batch_projection = 2 * first_layer_depth
        exported_products = 2 * n_features * (width + master_leaf_width)
    leaf_parameters = width * (first_layer_depth + 1 + n_outputs) + n_leaves * n_outputs
    n_parameters = (
        (n_leaves - 1) * (n_features + 1) + leaf_parameters + projection
        + master_leaf_width * (first_layer_depth + 1 + n_outputs) + n_outputs
    )
    batch_temporaries = batch_size * (
        4 * width + 6 * n_leaves + 4 * master_leaf_width + batch_projection
    )
    return (4 * (6 * n_parameters + batch_temporaries + exported_products)
            + _TORCH_WORKING_MEMORY)


# What torch's own buffers and the autograd graph add whatever the network's size, with room
# to spare (tests/test_reliability.py checks a deep fit against the whole estimate).
_TORCH_WORKING_MEMORY = 64 * 2**20


@contextmanager
def denormals_flushed():
    """Within this context the calling thread flushes denormal floats to zero; its previous
    mode comes back on exit.

    Training drives values into the denormal range (below 1.2e-38 in float32): the weights
    and Adam moments of units that get no gradient decay geometrically, and hardening
    sharpens the routing until most path probabilities underflow. On x86 CPUs every
    operation that reads a denormal runs an order of magnitude slower. Flushed, they become
    zeros, which
    change no float32 sum they take part in. Threads that torch starts within the context
    inherit the mode; a thread pool started before it keeps its own. Without the compiled
    training kernel nothing changes.
    """
    if _training_kernel is None:
        yield
        return
    previous = _training_kernel.swap_denormal_mode(_training_kernel.FLUSH_DENORMALS)
    try:
        yield
    finally:
        _training_kernel.swap_denormal_mode(previous)


@dataclass(frozen=True)
class FitResult:
    """What one call of :meth:`Trainer.fit` produced.

    Attributes
    ----------
    arrays : FFFArrays
        The trained model, for raw input rows (the input scaling folded in); the trainer's
        network holds the same weights in its own input scaling.
    n_epochs : int
        Epochs completed in this call.
    loss_curve : list of float
        Mean training objective of each completed epoch.
    validation_scores : list of float or None
        Held-out score after each completed epoch, when a validation score was given.
    best_loss : float
        Lowest balancing-phase objective, earlier calls included.
    best_validation_score : float or None
        Best balancing-phase held-out score of this call.
    stop_reason : {"plateau", "max_iter", "interrupted", "callback"}
        Why balancing ended: no improvement, the epoch budget, a KeyboardInterrupt, or (at
        any epoch) a hook that asked to stop.
    """

    arrays: FFFArrays
    n_epochs: int
    loss_curve: list
    validation_scores: list
    best_loss: float
    best_validation_score: float
    stop_reason: str


class Penalties:
    """The regularisers on the weights: the L2 penalty of every parameter group that takes
    weight decay, the group lasso on each input's routing weights, and the tying of the
    leaves to their subtrees.

    Parameters
    ----------
    network : FFFNetwork
    optimizer : FusedAdam
        Its groups' decay factors weigh the L2 penalty.
    alpha : float
    routing_lasso : ndarray of shape (n_features,) or None
        Each input's group-lasso strength, in units of ``alpha / n_samples``; None for none.
    leaf_tying : float
        Strength, in units of ``alpha / n_samples``, of the penalty ``0.5 * ||deviation||^2``
        on every node's deviation: the mean of each leaf parameter over the leaves below the
        node minus its mean over the leaves below the node's parent (see
        :func:`subtree_deviations`). Every deviation pays the same penalty, while the data
        behind it are the rows of the node's subtree: the penalty holds back most the
        deviations of the deepest nodes, which the fewest rows support.
    """

    def __init__(self, network, optimizer, alpha, routing_lasso, leaf_tying):
        self.network, self.optimizer, self.alpha = network, optimizer, alpha
        # A tree of depth 0 has one leaf and no subtree to tie it to.
        self.leaf_tying = leaf_tying if network.depth else 0.0
        self.routing_lasso = None if routing_lasso is None else torch.as_tensor(
            routing_lasso, dtype=torch.float32, device=network.node_biases.device
        )

    def add_lasso_gradient(self, decay):
        """Add to the routing weights' gradient the (sub)gradient of the group lasso
        ``decay * sum_j routing_lasso_j * ||node_weights[:, j]||``, 0 for a zero column."""
        if self.routing_lasso is None:
            return
        weights = self.network.node_weights.detach()
        norms = self._column_norms().clamp_min_(torch.finfo(weights.dtype).tiny)
        strength = self.routing_lasso.mul(decay).div_(norms)
        self.network.node_weights.grad.addcmul_(weights, strength)

    @torch.no_grad()
    def add_tying_gradient(self, decay):
        """Add to every leaf parameter's gradient that of the tying penalty ``decay *
        leaf_tying * 0.5 * sum ||deviation||^2`` (see the class parameters)."""
        if not self.leaf_tying:
            return
        strength = decay * self.leaf_tying
        for parameter, shape in leaf_parameters(self.network):
            if parameter.grad is None:
                continue
            if _compiled(parameter):
                # The torch operations below are some sixty per parameter at depth 6, and
                # each passes over the parameter: they cost as much as the rest of the step.
                rows = shape[0]
                _training_kernel.add_tying_gradient(
                    parameter.detach().view(rows, -1).numpy(),
                    parameter.grad.view(rows, -1).numpy(), self.network.n_leaves, strength,
                )
            else:
                deviations = subtree_deviations(parameter.detach().view(shape))
                parameter.grad.view(shape).add_(_tying_gradient(deviations), alpha=strength)

    @torch.no_grad()
    def _column_norms(self):
        # Summed down the columns: torch.linalg.vector_norm(dim=0) reduces across the
        # contiguous axis, slowly on the CPU.
        return self.network.node_weights.square().sum(dim=0).sqrt_()

    @torch.no_grad()
    def value(self, regulariser_weight, n_samples):
        """``0.5 * alpha * ||W||^2 / n_samples`` over the trained weights, each group's
        weighted by its decay factor, plus the routing group lasso while the routing trains
        (see :meth:`add_lasso_gradient`).

        Taken on the weights at the end of an epoch: the norms of every weight once per
        epoch rather than once per step, which cost as much as a tenth of a step.
        """
        squared = 0.0
        for decay_factor, weights in self.optimizer.decayed_groups():
            norms = torch.stack(torch._foreach_norm(weights))
            squared += decay_factor * norms.square().sum().item()
        if self.leaf_tying:
            squared += self.leaf_tying * sum(
                deviation.square().sum().item()
                for parameter, shape in leaf_parameters(self.network)
                for deviation in subtree_deviations(parameter.detach().view(shape))
            )
        lasso = 0.0
        if self.routing_lasso is not None and self.network.node_weights.requires_grad:
            lasso = torch.dot(self.routing_lasso, self._column_norms()).item()
        return regulariser_weight * self.alpha / n_samples * (0.5 * squared + lasso)


def subtree_deviations(leaves):
    """Each node's deviation, the root's children first: the mean of ``leaves`` over the
    leaves below the node minus their mean over the leaves below its parent.

    Parameters
    ----------
    leaves : tensor of shape (rows, 2**depth, columns)
        One slice of the middle axis per leaf, in leaf order (see
        :func:`~fffsklearn._network.leaf_parameters`).

    Returns
    -------
    list of ``depth`` tensors of shape (rows, 2**level, columns), level 1 to ``depth``
        The two deviations of a node's children are opposite, and a leaf is the root's mean
        plus the deviations of the nodes on its path.
    """
    means = [leaves]
    while means[-1].shape[1] > 1:
        finer = means[-1]
        means.append(finer.view(finer.shape[0], -1, 2, finer.shape[2]).mean(dim=2))
    means.reverse()
    return [child - _to_children(parent) for parent, child in pairwise(means)]


def _to_children(nodes):
    """Each node's slice given to both its children: (rows, n, columns) to (rows, 2n,
    columns)."""
    rows, n, columns = nodes.shape
    return nodes.unsqueeze(2).expand(rows, n, 2, columns).reshape(rows, 2 * n, columns)


def _tying_gradient(deviations):
    """The gradient, with respect to the leaves, of ``0.5 * sum ||deviation||^2`` over the
    :func:`subtree_deviations` ``deviations``: each leaf receives the deviation of each node
    on its path, divided by the number of leaves below the node (the two children's
    deviations cancel in their parent's mean)."""
    depth = len(deviations)
    gradient = None
    for level, deviation in enumerate(deviations, start=1):
        term = deviation * 2.0 ** (level - depth)
        gradient = term if gradient is None else _to_children(gradient).add_(term)
    return gradient


class BatchFeed:
    """The rows of an epoch's mini-batches, on the training device.

    They are copied from the host a chunk of whole batches at a time (one gather and one
    transfer per chunk, and a memmap is never loaded whole) or, within :meth:`resident`,
    gathered from a copy on the CUDA device; standardised by ``input_scaling``; and, with
    ``input_noise``, given fresh Gaussian noise.

    Parameters
    ----------
    device : torch.device
    input_scaling : tuple of ndarray or None
        ``(mean, scale)`` that standardise the raw rows into the network's inputs.
    input_noise : ndarray of shape (n_features,) or None
        Standard deviation of the noise on each network input; None adds none.
    seed : int
        Seeds the noise.
    """

    def __init__(self, device, input_scaling, input_noise, seed):
        self.device = device
        # The standardisation as device tensors, made once for every batch of the fit.
        self.scaling = None if input_scaling is None else [
            torch.as_tensor(s, dtype=torch.float32, device=device) for s in input_scaling
        ]
        self.input_noise = None if input_noise is None else torch.as_tensor(
            input_noise, dtype=torch.float32, device=device
        )
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self._resident_rows = None

    def batches(self, X, order, batch_size):
        """``(start, rows)`` of each mini-batch of the epoch, in ``order``, on the device,
        standardised and with the training noise."""
        for start, X_batch in self._rows(X, order, batch_size):
            yield start, X_batch if self.input_noise is None else self._with_noise(X_batch)

    def _rows(self, X, order, batch_size):
        n = X.shape[0]
        resident = self._resident_rows
        if resident is not None and resident[0] is X:
            order = torch.from_numpy(order).to(self.device)
            for start in range(0, n, batch_size):
                yield start, resident[1].index_select(0, order[start : start + batch_size])
            return
        # X is copied a chunk of whole batches at a time: one gather and one transfer per
        # chunk rather than per batch, and a memmap is never loaded whole.
        chunk_rows = batch_size * max(1, CHUNK_VALUES // (batch_size * max(1, X.shape[1])))
        for chunk_start in range(0, n, chunk_rows):
            X_chunk = torch.from_numpy(
                dense_rows(X, order[chunk_start : chunk_start + chunk_rows])
            )
            X_chunk = X_chunk.to(self.device)
            if self.scaling is not None:
                X_chunk.sub_(self.scaling[0]).div_(self.scaling[1])
            for start in range(0, X_chunk.shape[0], batch_size):
                yield chunk_start + start, X_chunk[start : start + batch_size]

    @contextmanager
    def resident(self, X):
        """Within this context, batches of ``X`` are gathered from a copy of it on the CUDA
        device, scaled once, instead of copied from the host batch by batch.

        The copy is made when ``X`` takes at most a quarter of the device's free memory
        (else batches come from the host as outside the context), some 4 MiB at a time, so
        a memmap is never loaded whole into host memory. It is freed on exit.
        """
        dense_bytes = 4 * X.shape[0] * X.shape[1]  # float32 on the device, even from sparse X
        free_bytes = torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else 0
        if dense_bytes <= free_bytes / 4:
            rows = torch.empty(X.shape, dtype=torch.float32, device=self.device)
            step = max(1, CHUNK_VALUES // max(1, X.shape[1]))
            for start in range(0, X.shape[0], step):
                rows[start : start + step] = torch.tensor(dense_rows(X, slice(start, start + step)))
            if self.scaling is not None:
                rows.sub_(self.scaling[0]).div_(self.scaling[1])
            self._resident_rows = (X, rows)
        try:
            yield
        finally:
            self._resident_rows = None

    def _with_noise(self, X_batch):
        """``X_batch`` plus Gaussian noise of ``input_noise``'s standard deviations.

        Drawn outside the step, so that a step replayed as a CUDA graph reads fresh noise
        with its rows. On the CPU in float32 the C extension adds it in place (``X_batch`` is
        a copy of the rows made for this epoch), drawn from a table of 65,536 normal
        quantiles.
        """
        if _compiled(X_batch):
            seed = torch.randint(2**62, (), generator=self.generator, device=self.device)
            _training_kernel.add_normal_noise(
                X_batch.numpy(), self.input_noise.numpy(), _NORMAL_QUANTILES, int(seed)
            )
            return X_batch
        noise = torch.randn(X_batch.shape, generator=self.generator, device=self.device,
                            dtype=X_batch.dtype)
        return noise.mul_(self.input_noise).add_(X_batch)


class Trainer:
    """A network, its optimizer and the random streams of one training run.

    Parameters
    ----------
    network : FFFNetwork
    recipe : Recipe
        Every number the training uses, and its loss.
    seed : int
        Seeds the batch order and the input noise.
    input_scaling : tuple of ndarray or None
        ``(mean, scale)`` that standardise the raw rows into the network's inputs.
    input_noise : ndarray of shape (n_features,) or None
        Standard deviation, per network input, of the Gaussian noise added to every
        training batch in both phases; None adds none.
    routing_feature_penalties : ndarray of shape (n_features,) or None
        Each network input's share of the group lasso on the routing weights (see
        :func:`~fffsklearn._preparation.routing_feature_penalties`); None applies none.
    """

    def __init__(self, network, recipe, *, seed, input_scaling=None, input_noise=None,
                 routing_feature_penalties=None):
        self.network = network
        self.recipe = recipe
        self.device = network.node_biases.device
        self.input_scaling = input_scaling
        self.feed = BatchFeed(self.device, input_scaling, input_noise, seed)
        self.optimizer = _optimizer_for(network, recipe)
        routing_lasso = None
        if routing_feature_penalties is not None and network.depth:
            routing_lasso = recipe.routing_group_lasso * routing_feature_penalties
        self.penalties = Penalties(network, self.optimizer, recipe.alpha, routing_lasso,
                                   recipe.leaf_tying)
        self.hardening_phase = Hardening(
            sharpen_every=recipe.sharpen_every,
            learning_rate_factor=recipe.hardening_learning_rate_factor,
        )
        self.batch_order = np.random.RandomState(seed)
        self.last_leaf_counts = None
        self.stop_reason = None
        self._sums = None
        self._captured_step = None

    @classmethod
    def create(cls, n_features, n_outputs, recipe, device, seed, *, input_scaling=None,
               input_noise=None, routing_feature_penalties=None, projection_directions=None,
               network_class=None):
        """A trainer of a fresh network of the recipe's shape, initialised from ``seed``, its
        input projection started on ``projection_directions`` (see :class:`FFFNetwork`):
        an ``FFFNetwork``, or the subclass ``network_class`` (a research variant)."""
        network_class = FFFNetwork if network_class is None else network_class
        # The projection's SVD may start torch's threads: under the mode that fit sets, so
        # that they inherit it (see denormals_flushed).
        with denormals_flushed():
            network = network_class(
                n_features, n_outputs, recipe.depth, recipe.leaf_width,
                recipe.master_leaf_width, recipe.activation, random_state=seed,
                projection_rank=recipe.projection_rank,
                projection_directions=projection_directions,
            ).to(device)
        return cls(network, recipe, seed=seed + 1, input_scaling=input_scaling,
                   input_noise=input_noise, routing_feature_penalties=routing_feature_penalties)

    def deployed(self, arrays):
        """The arrays of the network's weights ``arrays`` for raw input rows."""
        return arrays if self.input_scaling is None else arrays.with_input_scaling(
            *self.input_scaling
        )

    def load_deployed(self, arrays):
        """Load arrays that take raw rows (a fitted estimator's) into the network."""
        if self.input_scaling is not None:
            arrays = arrays.without_input_scaling(*self.input_scaling)
        self.network.load_arrays(arrays)

    @torch.no_grad()
    def parameter_copy(self):
        """A copy of the network's parameters, for :meth:`load_parameters`."""
        return [parameter.detach().clone() for parameter in self.network.parameters()]

    @torch.no_grad()
    def load_parameters(self, copy):
        """Set the network's parameters to those of a :meth:`parameter_copy`."""
        for parameter, saved in zip(self.network.parameters(), copy):
            parameter.copy_(saved)

    @property
    def hardening(self):
        """Whether the hardening phase is on, i.e. the routing neurons are frozen."""
        return self.hardening_phase.active

    def start_hardening(self):
        """Enter the hardening phase (see :class:`Hardening`). The routing is frozen rather
        than trained on the soft loss, which left a gap between the soft and hard models."""
        self.hardening_phase.start(self.network, self.optimizer)

    def start_balancing(self):
        """Return to the balancing phase (``partial_fit`` after ``fit``): everything trains."""
        self.hardening_phase.stop(self.network, self.optimizer)

    def fit(self, X, y, weight, schedule, *, validation_score=None, best_loss=np.inf,
            hooks=()):
        """Train for up to ``schedule.max_epochs`` epochs: balance, then harden.

        Balancing runs until the objective (or, with ``validation_score``, the held-out
        score) has not improved by ``schedule.tol`` for more than
        ``schedule.n_iter_no_change`` epochs, or until only the hardening phase is left of
        ``max_epochs``. Hardening then runs its fixed ``schedule.hardening_epochs``, from the
        best balancing epoch's parameters when ``validation_score`` is given. An interrupt
        (KeyboardInterrupt) after the first completed epoch ends training with that epoch's
        state; one before it propagates.

        Parameters
        ----------
        X, y, weight : ndarray
            Training rows, encoded targets and row weights, as :meth:`run_epoch` takes them.
        schedule : Schedule
        validation_score : callable or None
            ``validation_score(arrays) -> float``: the held-out score of a model (arrays
            that take raw rows), higher is better. None selects on the training objective.
        best_loss : float
            Lowest objective of earlier calls (a warm start continues their plateau count).
        hooks : sequence
            Hooks of the caller (see :mod:`fffsklearn._phases`), called after the best epoch
            is taken and before the phase switch.

        Returns
        -------
        FitResult
        """
        best = BestEpoch(validation_score, best_loss, schedule.tol, schedule.n_iter_no_change)
        hardening_epochs = schedule.hardening_epochs if self.network.depth else 0
        hooks = [best, *hooks, PhaseSwitch(best, hardening_epochs, schedule.max_epochs)]
        losses, completed = [], None
        self.stop_reason = "max_iter"
        step_multiply_adds = (
            min(schedule.batch_size, X.shape[0]) * X.shape[1]
            * self.network.leaf_hidden_weights.shape[1]
        )
        with (self.rows_on_device(X), training_threads(self.device, step_multiply_adds),
              denormals_flushed()):
            try:
                for index in range(schedule.max_epochs):
                    epoch = self._epoch(index, X, y, weight, schedule.batch_size, hooks, best)
                    losses.append(epoch.loss)
                    # Stored in one assignment, so that an interrupt never sees half of it.
                    completed = (index + 1, best.kept_state(self), best.best_loss,
                                 best.best_score)
                    if self._end_epoch(epoch, hooks[1:]):
                        break
            except KeyboardInterrupt:
                if completed is None:
                    raise  # nothing completed: the caller keeps what it had
                self.stop_reason = "interrupted"
        n_epochs, state, best_loss, best_score = completed
        self.load_parameters(state)
        validating = validation_score is not None
        return FitResult(
            arrays=self.deployed(self.network.to_arrays()),
            n_epochs=n_epochs,
            loss_curve=losses[:n_epochs],
            validation_scores=best.scores[:n_epochs] if validating else None,
            best_loss=best_loss,
            best_validation_score=best_score if validating else None,
            stop_reason=self.stop_reason,
        )

    def _epoch(self, index, X, y, weight, batch_size, hooks, best):
        """Epoch ``index``: the hooks' beginnings, the steps, and the best epoch's update."""
        for hook in hooks:
            hook.on_epoch_begin(self)
        epoch = Epoch(self, index, self.run_epoch(X, y, weight, batch_size))
        best.on_epoch_end(self, epoch)
        return epoch

    def _end_epoch(self, epoch, hooks):
        """The other hooks' ends of ``epoch``, until one stops the fit; whether one did."""
        for hook in hooks:
            hook.on_epoch_end(self, epoch)
            if epoch.stopped:
                return True
        return False

    def train_step(self, X, y, weight, n_samples_total, leaf_counts):
        """One optimizer step on a mini-batch.

        Returns its objective without the L2 penalty (a 0-d tensor) and the factor that
        weighted its regularisers (the loss's ``regulariser_weight``); ``run_epoch`` adds
        the penalty once per epoch.

        ``weight`` holds the rows' weights relative to the mean weight of all training rows,
        so that a batch's data loss is its weighted sum over its number of rows: every batch,
        even one whose weights are all zero, has a well-defined loss, and an epoch weighs each
        row by its weight.

        The losses are differentiated by hand, and the network's backward takes their
        gradients (:meth:`FFFNetwork.training_pass`).
        """
        # Straight-through routing trains the loss of the hard-routed model that predict runs;
        # gradients still reach the routing neurons through the soft path probabilities.
        # The soft mixture (hardening phase) lets neighbouring leaves share rows near a
        # boundary, which the sharpening then makes rare.
        routing, backward = self.network.training_pass(X, straight_through=not self.hardening)
        n = X.shape[0]
        counts = routing.hard_one_hot.sum(dim=0)
        leaf_counts += counts
        recipe = self.recipe
        loss, grad_outputs = recipe.loss(routing.outputs, y, weight / n, self.hardening)
        regulariser_weight = recipe.loss.regulariser_weight(loss, y)
        grad_probabilities = None
        # With the routing frozen the load-balancing loss has no gradient.
        if self.network.depth and recipe.load_balancing and not self.hardening:
            # n_leaves * sum_j f_j * P_j with f_j = counts_j / n (constant) and P_j the batch
            # mean of the leaf probabilities: its gradient is the same for every row.
            factor = regulariser_weight * recipe.load_balancing * self.network.n_leaves / n**2
            grad_probabilities = counts.mul_(factor)
            loss = loss + torch.dot(grad_probabilities, routing.leaf_probabilities.sum(dim=0))
        # The L2 penalty 0.5 * alpha * ||W||^2 / n_samples is applied as Adam's (coupled)
        # weight decay, whose gradient it is; frozen routing weights (hardening) are left out.
        decay = regulariser_weight * recipe.alpha / n_samples_total
        self.optimizer.set_weight_decay(decay)
        backward(grad_outputs, grad_probabilities)
        if not self.hardening:
            self.penalties.add_lasso_gradient(decay)
        self.penalties.add_tying_gradient(decay)
        self.optimizer.step()
        return loss, regulariser_weight

    def run_epoch(self, X, y, weight, batch_size):
        """One pass over the data in shuffled mini-batches; returns the mean objective.

        The phase (see ``start_hardening``) chooses the forward and the loss.

        ``X``, ``y`` and ``weight`` are NumPy arrays (``X`` float32, possibly a read-only
        memmap): ``X`` is copied and moved to the device some 4 MiB at a time, so a memmap
        larger than memory trains without being loaded whole; within :meth:`rows_on_device`
        the batches are gathered from a copy of ``X`` on the device. Also records in
        ``last_leaf_counts`` how many rows each leaf received under hard routing during the
        epoch.

        Raises
        ------
        FloatingPointError
            If the objective becomes NaN or infinite.
        """
        self.network.train()
        n = X.shape[0]
        order = self.batch_order.permutation(n)
        for start in range(0, n, batch_size):
            # Sorted, the rows of a batch are read from a memmap in file order.
            order[start : start + batch_size].sort()
        # Targets and weights are small: shuffled once per epoch, then sliced per batch.
        y = torch.from_numpy(y[order]).to(self.device)
        weight = torch.from_numpy(weight[order] / weight.mean(dtype=np.float64)).to(
            self.device, torch.float32
        )
        total, leaf_counts = self._epoch_sums()
        regulariser_total = 0.0
        for start, X_batch in self.feed.batches(X, order, batch_size):
            batch = slice(start, start + X_batch.shape[0])
            regulariser_total += X_batch.shape[0] * self._accumulated_step(
                X_batch, y[batch], weight[batch], n, batch_size
            )
        self.network.eval()
        self.last_leaf_counts = leaf_counts.to(torch.int64).cpu().numpy()
        mean = total.item() / n + self.penalties.value(regulariser_total / n, n)
        if not np.isfinite(mean):
            raise FloatingPointError(_divergence_message(self.recipe, n))
        return mean

    def _epoch_sums(self):
        """The epoch's objective total and hard leaf counts, zeroed: the same two tensors
        every epoch, which a captured step (``_accumulated_step``) adds to."""
        if self._sums is None:
            self._sums = (torch.zeros((), device=self.device),
                          torch.zeros(self.network.n_leaves, device=self.device))
        for tensor in self._sums:
            tensor.zero_()
        return self._sums

    @contextmanager
    def rows_on_device(self, X):
        """Within this context, epochs on ``X`` gather their batches from a copy of it on
        the CUDA device (see :meth:`BatchFeed.resident`). The copy is freed on exit, with the
        step that ``_accumulated_step`` captured: both are worth their memory only within a
        fit."""
        with self.feed.resident(X):
            try:
                yield
            finally:
                self._captured_step = None

    # CUDA graphs replay the steps of full batches (see _accumulated_step); a test turns
    # them off to compare with the steps run one operation at a time.
    use_cuda_graphs = True

    def _accumulated_step(self, X, y, weight, n_samples_total, batch_size):
        """:meth:`train_step` on a batch, its objective added to the epoch's total; returns
        the factor that weighted the regularisers.

        On a CUDA device, a full batch whose loss weighs the regularisers alike in every step
        (the classifier's) replays the step captured as a CUDA graph: the step is some
        seventy small kernels, whose launches from Python cost more than their work. The
        graph is captured again whenever what it baked in changes: the phase, the learning
        rates, the rows per epoch, or the optimizer's moments (cleared by the hardening
        phase).
        """
        total, leaf_counts = self._sums
        rows = X.shape[0]
        if not self._can_capture(rows, batch_size):
            loss, regulariser_weight = self.train_step(X, y, weight, n_samples_total,
                                                       leaf_counts)
            total.add_(loss, alpha=rows)
            return regulariser_weight
        key = (n_samples_total, self.hardening, self.optimizer.learning_rates())
        captured = self._captured_step
        if captured is None or not captured.replays(key, self.optimizer):
            if not self.optimizer.has_moments():
                # The moments are created by a first step, which a capture would not run.
                loss, regulariser_weight = self.train_step(X, y, weight, n_samples_total,
                                                           leaf_counts)
                total.add_(loss, alpha=rows)
                return regulariser_weight
            self._captured_step = None  # frees the old graph's memory first
            captured = self._captured_step = _CapturedStep(
                key, self.optimizer, (X, y, weight),
                lambda X, y, weight: total.add_(
                    self.train_step(X, y, weight, n_samples_total, leaf_counts)[0], alpha=rows
                ),
            )
        captured.run(X, y, weight)
        return self.recipe.loss.regulariser_weight(None, y)

    def _can_capture(self, rows, batch_size):
        return (
            self.use_cuda_graphs and self.device.type == "cuda" and rows == batch_size
            and self.recipe.loss.regulariser_weight_is_constant
        )


def _optimizer_for(network, recipe):
    """FusedAdam over every parameter that trains, in groups whose ``decay_factor``
    scales the L2 weight decay that :meth:`train_step` sets: 1 for the other weights, 0
    for the biases, the recipe's factors for the routing weights and the leaves' weights."""
    routing = network.node_weights
    leaves = [network.leaf_hidden_weights, network.leaf_output_weights]
    weights = list(network.weight_matrices())
    biases = [p for p in network.parameters() if all(p is not w for w in weights)]
    others = [w for w in weights if all(w is not special for special in (routing, *leaves))]
    groups = [{"params": others, "decay_factor": 1.0},
              {"params": leaves, "decay_factor": recipe.leaf_decay_factor},
              {"params": biases, "decay_factor": 0.0},
              {"params": [routing], "decay_factor": recipe.routing_decay_factor}]
    return FusedAdam(groups, lr=recipe.learning_rate)


# Above this weight decay per row, the L2 penalty itself overflows float32 arithmetic.
_OVERFLOWING_DECAY = 1e20


# Settings beyond any that trains (input noise in standard deviations of each input, a
# learning rate of Adam's normalised steps): a divergence with one of them is theirs.
_OVERFLOWING_INPUT_NOISE = 1e3
_OVERFLOWING_LEARNING_RATE = 1e3


def _divergence_message(recipe, n_samples):
    """What a fit whose loss became NaN or infinite tells the user to change: the setting
    that no float32 training survives, where one is, else the usual remedies."""
    message = "The training loss became NaN or infinite. "
    culprits = [
        (recipe.alpha / n_samples > _OVERFLOWING_DECAY, f"alpha={recipe.alpha:g}"),
        (recipe.input_noise > _OVERFLOWING_INPUT_NOISE, f"input_noise={recipe.input_noise:g}"),
        (recipe.learning_rate > _OVERFLOWING_LEARNING_RATE,
         f"learning_rate_init={recipe.learning_rate:g}"),
    ]
    named = [setting for too_large, setting in culprits if too_large]
    if named:
        return message + (
            f"{' and '.join(named)} {'is' if len(named) == 1 else 'are'} too large for "
            f"float32 arithmetic: lower {'it' if len(named) == 1 else 'them'}."
        )
    return message + (
        "Scale the inputs (for example with StandardScaler), lower learning_rate_init, "
        "or raise alpha."
    )
