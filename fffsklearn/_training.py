"""The training loop: mini-batch AdamW with the FFF regularisers, in two phases.

Balancing: the straight-through forward (the loss of the hard-routed model) with the
load-balancing loss; every parameter trains. Hardening: the routing neurons are frozen and the
leaves train under the soft path-probability mixture, with the routing sharpened every few
epochs, so that the soft model the network is trained as converges to the hard one that
predicts.
"""

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import ndtri

from ._arrays import FFFArrays
from ._device import training_threads
from ._network import FFFNetwork, _compiled, _training_kernel, projected_rank
from ._preparation import CHUNK_VALUES


class FusedAdam:
    """Adam with L2 weight decay per parameter group: one fused kernel per group and step.

    The update is that of ``torch.optim.Adam(fused=True)``, whose kernel it calls. The weight
    decay is Adam's (coupled) one, which adds ``weight_decay * w`` to the gradient: the
    gradient of the penalty ``0.5 * weight_decay * ||w||^2``, as in scikit-learn's MLP.
    What it leaves out is torch.optim's per-step machinery (hooks, grouping tensors by device
    and dtype, capturable and differentiable modes), which took about 70 us per step on a
    CPU, a tenth of a training step (docs/model_quality.rst, "Training speed").

    As torch's optimizers, it has ``param_groups`` (dicts with ``params``, ``lr`` and
    ``weight_decay``) and ``state`` (cleared, it restarts the moment estimates), which is
    all :class:`Hardening` reads. A parameter whose ``grad`` is None is skipped.

    Parameters
    ----------
    param_groups : list of dict
        Each with ``params`` (tensors) and ``weight_decay``.
    lr : float
    betas : (float, float), default=(0.9, 0.999)
    eps : float, default=1e-8
    """

    def __init__(self, param_groups, lr, betas=(0.9, 0.999), eps=1e-8):
        self.param_groups = [
            {"lr": lr, **group, "params": list(group["params"])} for group in param_groups
        ]
        self.betas, self.eps = betas, eps
        self.state = {}

    @torch.no_grad()
    def step(self, groups=None):
        """Update every parameter that has a gradient, in ``groups`` (by default all)."""
        beta1, beta2 = self.betas
        for group in self.param_groups if groups is None else groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = self.advance(params)
            torch._fused_adam_(
                params, [p.grad for p in params], [state["exp_avg"] for state in states],
                [state["exp_avg_sq"] for state in states], [],
                [state["step"] for state in states], lr=group["lr"], beta1=beta1, beta2=beta2,
                weight_decay=group["weight_decay"], eps=self.eps, amsgrad=False, maximize=False,
            )

    def advance(self, params):
        """The moment states of ``params`` for the step about to be taken: created (zero)
        where missing, their step counts incremented. For updates computed elsewhere."""
        fresh = [p for p in params if p not in self.state]
        if fresh:
            # Parameters whose moments start together share one step count, so that a
            # step increments one tensor, not one per parameter.
            count = torch.zeros((), device=fresh[0].device)
            for p in fresh:
                self.state[p] = {
                    "step": count, "exp_avg": torch.zeros_like(p),
                    "exp_avg_sq": torch.zeros_like(p),
                }
        states = [self.state[p] for p in params]
        for count in {id(state["step"]): state["step"] for state in states}.values():
            count += 1
        return states


def _optimizer_ready(optimizer):
    """Whether every parameter that trains has its moments in ``optimizer.state``."""
    return all(p in optimizer.state for group in optimizer.param_groups
               for p in group["params"] if p.requires_grad)


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
        self.moments = _moment_tensors(optimizer)
        self.inputs = [tensor.clone() for tensor in batch]
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            step(*self.inputs)

    def replays(self, key, optimizer):
        """Whether this graph runs the step that ``key`` and the optimizer's moments ask for."""
        moments = _moment_tensors(optimizer)
        return key == self.key and len(moments) == len(self.moments) and all(
            a is b for a, b in zip(moments, self.moments)
        )

    def run(self, *batch):
        """The captured step on ``batch`` (tensors of the captured shapes)."""
        for tensor, value in zip(self.inputs, batch):
            tensor.copy_(value)
        self.graph.replay()


def _moment_tensors(optimizer):
    return [tensor for state in optimizer.state.values() for tensor in state.values()]


# The standard normal's quantiles at the middles of 65,536 equally likely bins, scaled to unit
# variance: the compiled input noise (Trainer._with_noise) reads them at 16 random bits.
_NORMAL_QUANTILES = ndtri((np.arange(2**16) + 0.5) / 2**16)
_NORMAL_QUANTILES = (_NORMAL_QUANTILES / _NORMAL_QUANTILES.std()).astype(np.float32)


def training_memory_bytes(n_features, n_outputs, depth, leaf_width, master_leaf_width,
                          batch_size, leaf_hierarchy=False, projection_rank=None):
    """Estimated peak memory of training such a network, in bytes (float32), beyond what the
    process held before.

    Every parameter is held with its gradient and Adam's two moments, plus two copies while
    an epoch's weights are exported; every row of a batch computes every leaf, with about
    four (rows x training width) temporaries and the path sums alive at once. A
    :class:`LeafHierarchy` adds its node terms, about twice the leaves' parameters, with two
    moments and, where torch steps them (CUDA, float64), a gradient, and the leaves'
    gradients while they are gathered; the gradient is counted everywhere. An input
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
    hierarchy = 9 * leaf_parameters if leaf_hierarchy and depth else 0
    batch_temporaries = batch_size * (
        4 * width + 6 * n_leaves + 4 * master_leaf_width + batch_projection
    )
    return (4 * (6 * n_parameters + hierarchy + batch_temporaries + exported_products)
            + _TORCH_WORKING_MEMORY)


# What torch's own buffers and the autograd graph add whatever the network's size (measured
# about 32 MiB for depth 10 on 30 features).
_TORCH_WORKING_MEMORY = 64 * 2**20


@dataclass(frozen=True)
class Schedule:
    """How one call of :meth:`Trainer.fit` trains.

    Parameters
    ----------
    max_epochs : int
        Epochs at most, the hardening phase included.
    batch_size : int
        Rows per mini-batch.
    hardening_epochs : int
        Length of the hardening phase; 0 skips it.
    n_iter_no_change : int
        Epochs without an improvement of at least ``tol`` that end the balancing phase.
    tol : float
        Smallest improvement that counts.
    """

    max_epochs: int
    batch_size: int
    hardening_epochs: int
    n_iter_no_change: int
    tol: float


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
    best_epoch : int or None
        Index in this call of the balancing epoch that scored best (None if no epoch of
        this call improved on an earlier call's best loss).
    stop_reason : {"plateau", "max_iter", "interrupted", "callback"}
        Why balancing ended: no improvement, the epoch budget, a KeyboardInterrupt, or (at
        any epoch) a callback of ``report`` that asked to stop.
    """

    arrays: FFFArrays
    n_epochs: int
    loss_curve: list
    validation_scores: list
    best_loss: float
    best_validation_score: float
    best_epoch: int
    stop_reason: str


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


class LeafHierarchy:
    """The leaves' parameters as sums of one term per tree node, trained in place of them.

    Leaf ``j``'s weights and biases are the sum, over the nodes of its path from the root, of
    one term per node: the root's term is shared by every leaf, a node's by the leaves
    below it. A leaf sees about ``1 / 2**depth`` of the rows and, trained on its own,
    overfits them; with the terms below the root under an L2 penalty ``shrinkage`` times
    as strong as the root's (see :meth:`gather_gradients`), a node departs from its parent
    only as far as the rows it receives ask, and what the upper nodes learn comes from many
    leaves' rows. The network's leaf parameters always hold the sums, so the forward, the
    backward and the exported arrays are those of the plain network.

    For float32 on the CPU the C extension composes the sums, and takes a training step
    (gather, update, compose), in one pass each; torch operations, two per tree level,
    compute the same elsewhere.

    Parameters
    ----------
    network : FFFNetwork
        Its leaf parameters are decomposed into node terms now, and recomposed by
        :meth:`compose`.
    shrinkage : float
        Factor on the weight decay of the weight terms below the root.

    Attributes
    ----------
    views : list of (parameter, view_shape)
        :meth:`FFFNetwork.leaf_parameter_views`: each leaf parameter as
        ``(outer, 2**depth, inner)``.
    terms : list of tensors
        For each leaf parameter, the node terms as ``(outer, 2**(depth + 1) - 1, inner)``,
        nodes in heap order along the middle axis (node ``n``'s children are ``2n + 1``
        and ``2n + 2``; leaf ``j`` is node ``2**depth - 1 + j``).
    """

    def __init__(self, network, shrinkage):
        self.depth = network.depth
        self.shrinkage = shrinkage
        self.views = network.leaf_parameter_views()
        # Biases take no weight decay, as everywhere in the trainer.
        self.is_weight = [any(parameter is w for w in network.weight_matrices())
                          for parameter, _ in self.views]
        n_terms = 2 ** (self.depth + 1) - 1
        # Trained by the optimizer, never through autograd; requires_grad marks them as
        # trained, as for the network's parameters.
        self.terms = [
            torch.zeros((outer, n_terms, inner), device=parameter.device, requires_grad=True)
            for parameter, (outer, _, inner) in self.views
        ]
        self.decompose()

    def _level(self, tensor, level):
        """The nodes of ``level`` (2**level of them) along the middle axis of ``tensor``."""
        return tensor[:, 2**level - 1 : 2 ** (level + 1) - 1]

    @torch.no_grad()
    def start_shared(self):
        """Start every leaf from the first leaf's parameters: the root's term from them,
        every other term from zero.

        For a fresh network: decomposed as they are, independently drawn leaves would put
        their whole initial spread in the terms below the root, which the penalty then
        spends the training pulling back (measured worse, docs/model_quality.rst).
        """
        for (parameter, shape), terms in zip(self.views, self.terms):
            terms.zero_()
            terms[:, 0].copy_(parameter.view(shape)[:, 0])
        self.compose()

    @torch.no_grad()
    def decompose(self):
        """Set the node terms from the network's leaf parameters.

        The root's term is the mean over all leaves, a node's the mean over the leaves
        below it minus its parent's mean: the decomposition whose terms below the root are
        smallest, so the L2 penalty on them starts as low as the leaves allow.
        """
        for (parameter, shape), terms in zip(self.views, self.terms):
            leaves = parameter.view(shape)
            parent_mean = None
            for level in range(self.depth + 1):
                mean = leaves.unflatten(1, (2**level, -1)).mean(dim=2)
                self._level(terms, level).copy_(
                    mean if parent_mean is None else mean - parent_mean.repeat_interleave(2, 1)
                )
                parent_mean = mean

    @torch.no_grad()
    def compose(self):
        """Write into the network's leaf parameters the sums of their node terms."""
        for (parameter, shape), terms in zip(self.views, self.terms):
            if _compiled(terms):
                _training_kernel.hierarchy_compose(
                    terms.view(shape[0], -1).numpy(), parameter.view(shape[0], -1).numpy(),
                    shape[2],
                )
                continue
            total = self._level(terms, 0)
            for level in range(1, self.depth + 1):
                total = total.repeat_interleave(2, dim=1).add_(self._level(terms, level))
            parameter.view(shape).copy_(total)

    def _decays(self, is_weight, decay):
        """The L2 weight decay of a parameter's root term and of its terms below the root."""
        return (decay, decay * self.shrinkage) if is_weight else (0.0, 0.0)

    @torch.no_grad()
    def step(self, optimizer, group, decay):
        """One step of ``optimizer`` on the node terms (its ``group``) from the leaves'
        gradients, which are cleared, with the weight decay of :meth:`gather_gradients`;
        then :meth:`compose`.

        For float32 on the CPU one pass of the C extension per parameter, on torch's threads,
        gathers, updates (the update of ``FusedAdam``) and composes, where the three steps
        took three passes over the terms and a buffer for their gradients.
        """
        if not all(_compiled(terms) for terms in self.terms):
            self.gather_gradients(decay)
            optimizer.step([group])
            self.compose()
            return
        trained = [(view, terms, is_weight, view[0].grad)
                   for view, terms, is_weight in zip(self.views, self.terms, self.is_weight)
                   if view[0].grad is not None]
        states = optimizer.advance([terms for _, terms, _, _ in trained])
        beta1, beta2 = optimizer.betas
        for ((parameter, shape), terms, is_weight, grad), state in zip(trained, states):
            parameter.grad = None
            outer = shape[0]
            _training_kernel.hierarchy_adam_step(
                grad.view(outer, -1).numpy(), terms.view(outer, -1).numpy(),
                state["exp_avg"].view(outer, -1).numpy(),
                state["exp_avg_sq"].view(outer, -1).numpy(),
                parameter.view(outer, -1).numpy(), shape[2], *self._decays(is_weight, decay),
                group["lr"], beta1, beta2, optimizer.eps, float(state["step"]),
                torch.get_num_threads(),
            )

    @torch.no_grad()
    def gather_gradients(self, decay):
        """Set every node term's gradient from the leaf parameters' (which are cleared).

        A node's gradient is the sum of those of the leaves below it, plus the L2 weight
        decay times the term for weights: ``decay`` at the root, ``shrinkage * decay``
        below it. Torch operations, two per tree level: what :meth:`step` computes where
        the C extension does not.
        """
        for (parameter, shape), terms, is_weight in zip(self.views, self.terms, self.is_weight):
            root_decay, node_decay = self._decays(is_weight, decay)
            grad = parameter.grad
            parameter.grad = None
            if grad is None:
                terms.grad = None
                continue
            # The buffer of the last step's gradients is reused: a fresh one of this size
            # cost more in page faults than the sums written into it.
            grad_terms = terms.grad
            if grad_terms is None:
                grad_terms = torch.empty_like(terms)
            self._level(grad_terms, self.depth).copy_(grad.view(shape))
            for level in range(self.depth - 1, -1, -1):
                torch.sum(self._level(grad_terms, level + 1).unflatten(1, (-1, 2)), dim=2,
                          out=self._level(grad_terms, level))
            grad_terms[:, :1].add_(terms[:, :1], alpha=root_decay)
            grad_terms[:, 1:].add_(terms[:, 1:], alpha=node_decay)
            terms.grad = grad_terms

    @torch.no_grad()
    def squared_norm(self):
        """``||root||^2 + shrinkage * ||terms below the root||^2`` over the weight terms: the
        L2 penalty's share of the hierarchy, as :meth:`gather_gradients` decays them."""
        total = 0.0
        for terms, is_weight in zip(self.terms, self.is_weight):
            if is_weight:
                total += terms[:, 0].square().sum().item()
                total += self.shrinkage * terms[:, 1:].square().sum().item()
        return total


@contextmanager
def denormals_flushed():
    """Within this context the calling thread flushes denormal floats to zero; its previous
    mode comes back on exit.

    Training drives values into the denormal range (below 1.2e-38 in float32): the weights
    and Adam moments of units that get no gradient decay geometrically, and hardening
    sharpens the routing until most path probabilities underflow. On x86 CPUs every
    operation that reads a denormal runs 10 to 100 times slower; a depth-6 fit took 13 times
    as long (docs/model_quality.rst, "Training speed"). Flushed, they become zeros, which
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


class Trainer:
    """A network, its optimizer and the random streams of one training run.

    Parameters
    ----------
    network : FFFNetwork
    task : {"classification", "regression"}
    learning_rate, alpha, load_balancing, region_leak, leaf_shrinkage : float
        As the estimator parameters of the same name; ``leaf_shrinkage=0`` trains every
        leaf's parameters on their own, otherwise a :class:`LeafHierarchy` trains them.
    seed : int
        Seeds the batch order, the region-leak draws and the input noise.
    input_scaling : tuple of ndarray or None
        ``(mean, scale)`` that standardise the raw rows into the network's inputs.
    input_noise : ndarray of shape (n_features,) or None
        Standard deviation, per network input, of the Gaussian noise added to every
        training batch in both phases; None adds none.
    label_smoothing : float
        Classification, balancing phase: the share of each row's target spread evenly over
        the classes.
    routing_feature_penalties : ndarray of shape (n_features,) or None
        Each network input's share of the group lasso on the routing weights (see
        :func:`routing_feature_penalties`); None applies none.
    """

    def __init__(
        self, network, task, *, learning_rate, alpha, load_balancing, region_leak, seed,
        leaf_shrinkage=0.0, input_scaling=None, input_noise=None, label_smoothing=0.0,
        routing_feature_penalties=None,
    ):
        self.network = network
        self.routing_lasso = None
        if routing_feature_penalties is not None and network.depth:
            self.routing_lasso = torch.as_tensor(
                self._ROUTING_GROUP_LASSO * routing_feature_penalties, dtype=torch.float32,
                device=network.node_biases.device,
            )
        self.label_smoothing = label_smoothing
        self.input_scaling = input_scaling
        self.input_noise = None if input_noise is None else torch.as_tensor(
            input_noise, dtype=torch.float32, device=network.node_biases.device
        )
        self.task = task
        self.alpha = alpha
        self.load_balancing = load_balancing
        self.region_leak = region_leak
        self.device = network.node_biases.device
        self.learning_rate = learning_rate
        self.leaf_shrinkage = leaf_shrinkage
        self.leaf_hierarchy = (
            LeafHierarchy(network, leaf_shrinkage) if leaf_shrinkage and network.depth else None
        )
        self.optimizer = self._new_optimizer()
        # Doubling every epoch rather than every 2 brought the soft mixture to the hard model
        # without costing accuracy (docs/model_quality.rst, "Training recipe: measurements").
        self.hardening_phase = Hardening(
            sharpen_every=1, learning_rate_factor=self._HARDENING_LEARNING_RATE_FACTOR
        )
        self.batch_order = np.random.RandomState(seed)
        self.last_leaf_counts = None
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._sums = None
        self._resident_rows = None
        self._captured_step = None

    @classmethod
    def create(cls, n_features, n_outputs, params, task, device, seed, input_scaling=None,
               input_noise=None, routing_feature_penalties=None, projection_directions=None):
        """A fresh network initialised from ``seed``, with the hyper-parameters in ``params``,
        its input projection started on ``projection_directions`` (see :class:`FFFNetwork`);
        under a leaf hierarchy every leaf starts from the same parameters."""
        # The projection's SVD may start torch's threads: under the mode that fit sets, so
        # that they inherit it (see denormals_flushed).
        with denormals_flushed():
            network = FFFNetwork(
                n_features,
                n_outputs,
                params["depth"],
                params["leaf_width"],
                params["master_leaf_width"],
                params["activation"],
                random_state=seed,
                projection_rank=params["projection_rank"],
                projection_directions=projection_directions,
            ).to(device)
        trainer = cls(
            network,
            task,
            learning_rate=params["learning_rate_init"],
            alpha=params["alpha"],
            load_balancing=params["load_balancing"],
            region_leak=params["region_leak"],
            leaf_shrinkage=params["leaf_shrinkage"],
            seed=seed + 1,
            input_scaling=input_scaling,
            input_noise=input_noise,
            label_smoothing=params.get("label_smoothing", 0.0),
            routing_feature_penalties=routing_feature_penalties,
        )
        if trainer.leaf_hierarchy is not None:
            trainer.leaf_hierarchy.start_shared()
        return trainer

    def deployed(self, arrays):
        """The arrays of the network's weights ``arrays`` for raw input rows."""
        return arrays if self.input_scaling is None else arrays.with_input_scaling(
            *self.input_scaling
        )

    def load_deployed(self, arrays):
        """Load arrays that take raw rows (a fitted estimator's) into the network."""
        if self.input_scaling is not None:
            arrays = arrays.without_input_scaling(*self.input_scaling)
        self._load(arrays)

    def _load(self, arrays):
        """Load ``arrays`` (for the network's own inputs) into the network and, when the
        leaves train as a hierarchy, into its node terms."""
        self.network.load_arrays(arrays)
        if self.leaf_hierarchy is not None:
            self.leaf_hierarchy.decompose()

    # The hardening phase fine-tunes the leaves at a tenth of the learning rate, measured
    # better than the full rate (docs/model_quality.rst, "Training recipe: measurements").
    _HARDENING_LEARNING_RATE_FACTOR = 0.1

    # Under a LeafHierarchy each leaf moves by the sum of depth + 1 Adam steps, one per node
    # of its path; their rate is this fraction of the others', measured best of 1 / (depth
    # + 1), 0.2 and 0.3 (docs/model_quality.rst, "Training recipe: measurements").
    _LEAF_HIERARCHY_LEARNING_RATE_FACTOR = 0.2

    # The classifier's routing neurons take three times ``alpha``'s L2 penalty: a deep node
    # reads every feature but trains on the few rows that reach it, and where many features
    # are noise its split followed them. 5 and more cost MNIST-1D; the regressor's leaves
    # balanced less with 3 (docs/model_quality.rst, "Training recipe: measurements").
    _ROUTING_DECAY_FACTOR = {"classification": 3.0, "regression": 1.0}

    # The group lasso on each input's routing weights (a column of ``node_weights``), in
    # units of the L2 penalty's ``alpha / n_samples``, times the input's share: where most
    # features are noise, deep splits still followed them under the L2 penalty alone, and
    # depth 6 lost to depth 4. The same penalty on every feature cost MNIST-1D, whose
    # features all carry signal (docs/model_quality.rst, "Training recipe: measurements").
    _ROUTING_GROUP_LASSO = 20.0

    def _new_optimizer(self):
        """FusedAdam over every parameter that trains, in groups whose ``decay_factor``
        scales the L2 weight decay that ``_step`` sets (0 for biases, more for the routing
        neurons of a classifier). A leaf hierarchy's terms, the last group, take their decay
        with their gradients and are stepped by :meth:`LeafHierarchy.step`."""
        routing = self.network.node_weights
        weights = list(self.network.weight_matrices())
        hierarchy = self.leaf_hierarchy
        trained_elsewhere = [] if hierarchy is None else [p for p, _ in hierarchy.views]
        biases = [p for p in self.network.parameters()
                  if all(p is not w for w in weights + trained_elsewhere)]
        weights = [w for w in weights if all(w is not p for p in trained_elsewhere + [routing])]
        groups = [{"params": weights, "decay_factor": 1.0},
                  {"params": biases, "decay_factor": 0.0},
                  {"params": [routing], "decay_factor": self._ROUTING_DECAY_FACTOR[self.task]}]
        if hierarchy is not None:
            groups.append({
                "params": hierarchy.terms, "decay_factor": 0.0,
                "lr": self.learning_rate * self._LEAF_HIERARCHY_LEARNING_RATE_FACTOR,
            })
        return FusedAdam([{**group, "weight_decay": 0.0} for group in groups],
                         lr=self.learning_rate)

    @property
    def hardening(self):
        """Whether the hardening phase is on, i.e. the routing neurons are frozen."""
        return self.hardening_phase.active

    def start_hardening(self):
        """Enter the hardening phase (see :class:`Hardening`).

        Letting the routing train on the soft loss instead of freezing it left a
        soft-minus-hard gap of up to 4 points on friedman1 (see docs/model_quality.rst).
        """
        self.hardening_phase.start(self.network, self.optimizer)

    def start_balancing(self):
        """Return to the balancing phase (``partial_fit`` after ``fit``): everything trains."""
        self.hardening_phase.stop(self.network, self.optimizer)

    def _step(self, X, y, weight, n_samples_total, leaf_counts):
        """One optimizer step on a mini-batch.

        Returns its objective without the L2 penalty (a 0-d tensor) and the factor that
        weighted its regularisers (see ``_regulariser_weight``); ``run_epoch`` adds the
        penalty once per epoch.

        ``weight`` holds the rows' weights relative to the mean weight of all training rows,
        so that a batch's data loss is its weighted sum over its number of rows: every batch,
        even one whose weights are all zero, has a well-defined loss, and an epoch weighs each
        row by its weight.

        The losses are differentiated here by hand, and the network's backward takes their
        gradients (:meth:`FFFNetwork.training_pass`): autograd's bookkeeping of the dozen
        small operations of the losses cost more than computing them.
        """
        # Straight-through routing trains the loss of the hard-routed model that predict runs;
        # gradients still reach the routing neurons through the soft path probabilities.
        # The soft mixture (hardening phase) lets neighbouring leaves share rows near a
        # boundary, which the sharpening then makes rare.
        routing, backward = self.network.training_pass(
            X, straight_through=not self.hardening, region_leak=self.region_leak,
            generator=self.generator,
        )
        n = X.shape[0]
        counts = routing.hard_one_hot.sum(dim=0)
        leaf_counts += counts
        loss, grad_outputs = self._data_loss(routing.outputs, y, weight / n)
        regulariser_weight = self._regulariser_weight(loss, y)
        grad_probabilities = None
        # With the routing frozen the load-balancing loss has no gradient.
        if self.network.depth and self.load_balancing and not self.hardening:
            # n_leaves * sum_j f_j * P_j with f_j = counts_j / n (constant) and P_j the batch
            # mean of the leaf probabilities: its gradient is the same for every row.
            factor = regulariser_weight * self.load_balancing * self.network.n_leaves / n**2
            grad_probabilities = counts.mul_(factor)
            loss = loss + torch.dot(grad_probabilities, routing.leaf_probabilities.sum(dim=0))
        # The L2 penalty 0.5 * alpha * ||W||^2 / n_samples is applied as Adam's (coupled)
        # weight decay, whose gradient it is; frozen routing weights (hardening) are left out.
        decay = regulariser_weight * self.alpha / n_samples_total
        for group in self.optimizer.param_groups:
            group["weight_decay"] = decay * group["decay_factor"]
        backward(grad_outputs, grad_probabilities)
        if self.routing_lasso is not None and not self.hardening:
            self._add_routing_lasso_gradient(decay)
        if self.leaf_hierarchy is None:
            self.optimizer.step()
        else:
            # The hierarchy's terms are the last group (see _new_optimizer).
            *groups, terms_group = self.optimizer.param_groups
            self.optimizer.step(groups)
            self.leaf_hierarchy.step(self.optimizer, terms_group, decay)
        return loss, regulariser_weight

    def _add_routing_lasso_gradient(self, decay):
        """Add to the routing weights' gradient the (sub)gradient of the group lasso
        ``decay * sum_j routing_lasso_j * ||node_weights[:, j]||``, 0 for a zero column."""
        weights = self.network.node_weights.detach()
        norms = self._routing_column_norms().clamp_min_(torch.finfo(weights.dtype).tiny)
        strength = self.routing_lasso.mul(decay).div_(norms)
        self.network.node_weights.grad.addcmul_(weights, strength)

    @torch.no_grad()
    def _routing_column_norms(self):
        # Summed down the columns: torch.linalg.vector_norm(dim=0) took 7 times as long on
        # the CPU (150 against 21 us at 784 features and depth 6), a tenth of a step.
        return self.network.node_weights.square().sum(dim=0).sqrt_()

    def _data_loss(self, outputs, y, row_weight):
        """The weighted data loss ``sum_i row_weight_i * loss_i`` and its gradient.

        Cross-entropy of the logits for classification, against targets smoothed by
        ``label_smoothing`` while balancing (one call of the C extension for float32 on the
        CPU, where the torch operations below cost more than their arithmetic), half the
        squared error summed over the outputs for regression.
        """
        if self.task == "classification":
            # Hardening fits the plain log-loss: smoothing throughout left predict_proba
            # under-confident (docs/model_quality.rst, "Training recipe: measurements").
            smoothing = 0.0 if self.hardening else self.label_smoothing
            if _compiled(outputs):
                grad = torch.empty_like(outputs)
                loss = _training_kernel.cross_entropy(
                    outputs.numpy(), y.numpy(), row_weight.numpy(), grad.numpy(), smoothing
                )
                return torch.tensor(loss, dtype=outputs.dtype), grad
            log_probabilities = torch.log_softmax(outputs, dim=1)
            targets = y.unsqueeze(1)
            # The target of a row: 1 - smoothing on its class, plus smoothing / n_classes on
            # every class.
            spread = smoothing / outputs.shape[1]
            loss = -(1.0 - smoothing) * torch.dot(
                log_probabilities.gather(1, targets).squeeze(1), row_weight
            )
            if smoothing:
                loss = loss - spread * torch.dot(log_probabilities.sum(dim=1), row_weight)
            # d/d logits of that cross-entropy = softmax - target, for each row.
            grad = log_probabilities.exp_().sub_(spread).mul_(row_weight.unsqueeze(1))
            grad.scatter_add_(1, targets, row_weight.mul(smoothing - 1.0).unsqueeze(1))
            return loss, grad
        residual = outputs.sub_(y)
        loss = 0.5 * torch.dot(residual.square().sum(dim=1), row_weight)
        return loss, residual.mul_(row_weight.unsqueeze(1))

    # Regression regularisers fade once the mean squared residual of the standardised
    # targets falls below this (a training R^2 above 0.8). See _regulariser_weight.
    _REGULARISER_FADE_MSE = 0.2

    def _regulariser_weight(self, data_loss, y):
        """The factor on the L2 and load-balancing terms: 1, or less for a close regression fit.

        ``alpha`` and ``load_balancing`` are weighted for noisy targets. On targets that are
        nearly a function of the inputs, fixed-weight regularisers outweigh a squared error
        that keeps shrinking, and hold the fit back. Weighting them by the residual is what a
        Gaussian likelihood does when its noise variance is estimated from the current fit
        (measured in docs/model_quality.rst, "Training recipe: measurements").
        """
        if self.task != "regression":
            return 1.0
        mean_squared_residual = 2.0 * float(data_loss.detach()) / y.shape[1]
        return min(1.0, mean_squared_residual / self._REGULARISER_FADE_MSE)

    def fit(self, X, y, weight, schedule, *, validation_score=None, best_loss=np.inf,
            report=None):
        """Train for up to ``schedule.max_epochs`` epochs: balance, then harden.

        Balancing runs until the objective (or, with ``validation_score``, the held-out
        score) has not improved by ``schedule.tol`` for more than
        ``schedule.n_iter_no_change`` epochs, or until only the hardening phase is left of
        ``max_epochs``. Hardening then runs its fixed ``schedule.hardening_epochs``, from the
        best balancing epoch's weights when ``validation_score`` is given, and sharpens the
        routing every epoch. An interrupt (KeyboardInterrupt) after the first completed
        epoch ends training with that epoch's state; one before it propagates.

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
        report : object or None
            ``report.epoch_begin()`` is called before each epoch and
            ``report.epoch_end(epoch, loss, score, leaf_counts, arrays)`` after it, ``epoch``
            counted from 1 within this call and ``arrays()`` giving that epoch's model for raw
            rows; a true return of ``epoch_end`` ends training after that epoch.

        Returns
        -------
        FitResult
        """
        losses, scores = [], []
        best_score, best_arrays, best_epoch = -np.inf, None, None
        no_improvement, plateau = 0, False
        hardening_epochs = schedule.hardening_epochs if self.network.depth else 0
        stop_reason = "max_iter"
        # The state after the last completed epoch, stored in one assignment so that an
        # interrupt never sees half of it.
        completed = None
        # The arrays exported from the network as it is now, if nothing changed it since: the
        # network then need not be reloaded at the end (a reload re-factorises a projection,
        # a truncated SVD that cost 0.16 s at 784 features and depth 6).
        in_network = None
        step_multiply_adds = (
            min(schedule.batch_size, X.shape[0]) * X.shape[1]
            * self.network.leaf_hidden_weights.shape[1]
        )
        with (self.rows_on_device(X), training_threads(self.device, step_multiply_adds),
              denormals_flushed()):
            try:
                for epoch in range(schedule.max_epochs):
                    in_network = None
                    self.hardening_phase.begin_epoch(self.network, self.optimizer)
                    if report is not None:
                        report.epoch_begin()
                    loss = self.run_epoch(X, y, weight, schedule.batch_size)
                    losses.append(loss)
                    arrays = in_network = self.network.to_arrays()
                    score = None
                    if validation_score is not None:
                        score = validation_score(self.deployed(arrays))
                        scores.append(score)
                    if not self.hardening:
                        if validation_score is not None:
                            improved = score > best_score + schedule.tol
                            # A score that is NaN never improves, but the first epoch is kept.
                            if best_arrays is None or score > best_score:
                                best_score, best_arrays, best_epoch = score, arrays, epoch
                        else:
                            improved = loss < best_loss - schedule.tol
                            if loss < best_loss:
                                best_epoch = epoch
                            best_loss = min(best_loss, loss)
                        no_improvement = 0 if improved else no_improvement + 1
                        plateau = no_improvement > schedule.n_iter_no_change
                        kept = best_arrays if validation_score is not None else arrays
                    else:
                        kept = arrays
                    completed = (epoch + 1, kept, best_loss, best_score, best_epoch)
                    if report is not None and report.epoch_end(
                        epoch + 1, loss, score, self.last_leaf_counts,
                        lambda arrays=arrays: self.deployed(arrays),
                    ):
                        stop_reason = "callback"
                        break
                    if not self.hardening and (
                        plateau or epoch + 1 >= schedule.max_epochs - hardening_epochs
                    ):
                        stop_reason = "plateau" if plateau else "max_iter"
                        if not hardening_epochs:
                            break
                        if validation_score is not None:  # otherwise the network holds kept
                            self._load(kept)
                        self.start_hardening()
                        in_network = None
                    elif self.hardening_phase.epochs_done == hardening_epochs:
                        break
            except KeyboardInterrupt:
                if completed is None:
                    raise  # nothing completed: the caller keeps what it had
                stop_reason = "interrupted"
        n_epochs, arrays, best_loss, best_score, best_epoch = completed
        if arrays is not in_network:
            self._load(arrays)
        return FitResult(
            arrays=self.deployed(arrays),
            n_epochs=n_epochs,
            loss_curve=losses[:n_epochs],
            validation_scores=scores[:n_epochs] if validation_score is not None else None,
            best_loss=best_loss,
            best_validation_score=best_score if validation_score is not None else None,
            best_epoch=best_epoch,
            stop_reason=stop_reason,
        )


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
        for start, X_batch in self._batches(X, order, batch_size):
            if self.input_noise is not None:
                X_batch = self._with_noise(X_batch)
            batch = slice(start, start + X_batch.shape[0])
            regulariser_total += X_batch.shape[0] * self._accumulated_step(
                X_batch, y[batch], weight[batch], n, batch_size
            )
        self.network.eval()
        self.last_leaf_counts = leaf_counts.to(torch.int64).cpu().numpy()
        mean = total.item() / n + self._weight_penalty(regulariser_total / n, n)
        if not np.isfinite(mean):
            raise FloatingPointError(self._divergence_message(n))
        return mean

    def _with_noise(self, X_batch):
        """``X_batch`` plus Gaussian noise of ``input_noise``'s standard deviations.

        Drawn outside the step, so that a step replayed as a CUDA graph reads fresh noise
        with its rows; in both phases, which measured better on classification than the
        balancing phase alone (docs/model_quality.rst, "Training recipe: measurements").
        On the CPU in float32 the C extension adds it in place (``X_batch`` is a copy of the
        rows made for this epoch), drawn from a table of 65,536 normal quantiles.
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

    def _epoch_sums(self):
        """The epoch's objective total and hard leaf counts, zeroed: the same two tensors
        every epoch, which a captured step (``_accumulated_step``) adds to."""
        if self._sums is None:
            self._sums = (torch.zeros((), device=self.device),
                          torch.zeros(self.network.n_leaves, device=self.device))
        for tensor in self._sums:
            tensor.zero_()
        return self._sums

    def _batches(self, X, order, batch_size):
        """``(start, rows)`` of each mini-batch of the epoch, in ``order``, on the device."""
        n = X.shape[0]
        resident = self._resident_rows
        if resident is not None and resident[0] is X:
            order = torch.from_numpy(order).to(self.device)
            for start in range(0, n, batch_size):
                yield start, resident[1].index_select(0, order[start : start + batch_size])
            return
        scaling = None
        if self.input_scaling is not None:
            scaling = [torch.as_tensor(s, dtype=torch.float32, device=self.device)
                       for s in self.input_scaling]
        # X is copied a chunk of whole batches at a time: one gather and one transfer per
        # chunk rather than per batch, and a memmap is never loaded whole.
        chunk_rows = batch_size * max(1, CHUNK_VALUES // (batch_size * max(1, X.shape[1])))
        for chunk_start in range(0, n, chunk_rows):
            X_chunk = torch.from_numpy(X[order[chunk_start : chunk_start + chunk_rows]])
            X_chunk = X_chunk.to(self.device)
            if scaling is not None:
                X_chunk.sub_(scaling[0]).div_(scaling[1])
            for start in range(0, X_chunk.shape[0], batch_size):
                yield chunk_start + start, X_chunk[start : start + batch_size]

    @contextmanager
    def rows_on_device(self, X):
        """Within this context, epochs on ``X`` gather their batches from a copy of it on
        the CUDA device, scaled once, instead of copying every batch from the host.

        The copy is made when ``X`` takes at most a quarter of the device's free memory
        (else batches come from the host as outside the context), some 4 MiB at a time, so
        a memmap is never loaded whole into host memory. It is freed on exit, with the
        step that ``_accumulated_step`` captured: both are worth their memory only within
        a fit.
        """
        if self.device.type == "cuda" and X.nbytes <= torch.cuda.mem_get_info(self.device)[0] / 4:
            rows = torch.empty(X.shape, dtype=torch.float32, device=self.device)
            step = max(1, CHUNK_VALUES // max(1, X.shape[1]))
            for start in range(0, X.shape[0], step):
                rows[start : start + step] = torch.tensor(X[start : start + step])
            if self.input_scaling is not None:
                mean, scale = (torch.as_tensor(s, dtype=torch.float32, device=self.device)
                               for s in self.input_scaling)
                rows.sub_(mean).div_(scale)
            self._resident_rows = (X, rows)
        try:
            yield
        finally:
            self._resident_rows = self._captured_step = None

    # CUDA graphs replay the steps of full batches (see _accumulated_step); a test turns
    # them off to compare with the steps run one operation at a time.
    use_cuda_graphs = True

    def _accumulated_step(self, X, y, weight, n_samples_total, batch_size):
        """``_step`` on a batch, its objective added to the epoch's total; returns the
        factor that weighted the regularisers.

        On a CUDA device, a full batch of a classifier without region leak replays the
        step captured as a CUDA graph: the step is some seventy small kernels, and launching
        them one by one from Python took longer than running them. The graph is captured
        again whenever what it baked in changes: the phase, the learning rates, the rows
        per epoch, or the optimizer's moments (cleared by the hardening phase).
        """
        total, leaf_counts = self._sums
        rows = X.shape[0]
        if not self._can_capture(rows, batch_size):
            loss, regulariser_weight = self._step(X, y, weight, n_samples_total, leaf_counts)
            total.add_(loss, alpha=rows)
            return regulariser_weight
        key = (n_samples_total, self.hardening,
               tuple(group["lr"] for group in self.optimizer.param_groups))
        captured = self._captured_step
        if captured is None or not captured.replays(key, self.optimizer):
            if not _optimizer_ready(self.optimizer):
                # The moments are created by a first step, which a capture would not run.
                loss, regulariser_weight = self._step(X, y, weight, n_samples_total,
                                                      leaf_counts)
                total.add_(loss, alpha=rows)
                return regulariser_weight
            self._captured_step = None  # frees the old graph's memory first
            captured = self._captured_step = _CapturedStep(
                key, self.optimizer, (X, y, weight),
                lambda X, y, weight: total.add_(
                    self._step(X, y, weight, n_samples_total, leaf_counts)[0], alpha=rows
                ),
            )
        captured.run(X, y, weight)
        # Only classifiers are captured: their regularisers' weight needs no loss.
        return self._regulariser_weight(None, y)

    def _can_capture(self, rows, batch_size):
        return (
            self.use_cuda_graphs and self.device.type == "cuda" and rows == batch_size
            # The regression regularisers' weight is read from each step's loss on the host,
            # and region leak draws random numbers: neither is captured.
            and self.task == "classification"
            and not (self.region_leak > 0 and self.network.depth)
        )

    @torch.no_grad()
    def _weight_penalty(self, regulariser_weight, n_samples):
        """``0.5 * alpha * ||W||^2 / n_samples`` over the trained weights, weighted (a
        leaf hierarchy's node terms below the root by ``leaf_shrinkage``), plus the routing
        group lasso while the routing trains (see ``_add_routing_lasso_gradient``).

        Taken on the weights at the end of an epoch: the norms of every weight once per
        epoch rather than once per step, which cost as much as a tenth of a step.
        """
        squared = 0.0
        for group in self.optimizer.param_groups:
            weights = [w for w in group["params"] if w.requires_grad]
            if group["decay_factor"] and weights:
                norms = torch.stack(torch._foreach_norm(weights))
                squared += group["decay_factor"] * norms.square().sum().item()
        if self.leaf_hierarchy is not None:
            squared += self.leaf_hierarchy.squared_norm()
        lasso = 0.0
        if self.routing_lasso is not None and self.network.node_weights.requires_grad:
            lasso = torch.dot(self.routing_lasso, self._routing_column_norms()).item()
        return regulariser_weight * self.alpha / n_samples * (0.5 * squared + lasso)

    # Above this weight decay per row, the L2 penalty itself overflows float32 arithmetic.
    _OVERFLOWING_DECAY = 1e20

    def _divergence_message(self, n_samples):
        message = "The training loss became NaN or infinite. "
        if self.alpha / n_samples > self._OVERFLOWING_DECAY:
            return message + (
                f"alpha={self.alpha:g} is too large for float32 arithmetic: lower it."
            )
        return message + (
            "Scale the inputs (for example with StandardScaler), lower learning_rate_init, "
            "or raise alpha."
        )
