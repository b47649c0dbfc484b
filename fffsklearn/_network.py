"""The torch module of a fast feedforward network: what trains, never what predicts.

The soft forward mixes every leaf by the probability of the path that leads to it; it is
vectorised over leaves (one GEMM for all leaf hidden layers, one for all leaf output layers)
and loops only over the ``depth`` levels of the tree.
"""

import math
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._activations import ACTIVATIONS, torch_activation
from ._arrays import FFFArrays
from ._limits import MAX_DEPTH, TRAINING_MEMORY_FRACTION, physical_memory_bytes

try:
    from . import _training_kernel
except ImportError:  # pragma: no cover - the build failed; torch computes the same
    _training_kernel = None

class SoftForward:
    """What one forward pass of :class:`FFFNetwork` computed.

    Attributes
    ----------
    outputs : tensor of shape (n_samples, n_outputs)
        Raw outputs.
    right_probabilities : tensor of shape (n_samples, 2**depth - 1)
        Probability of going right at every node (no gradient).
    leaf_probabilities : tensor of shape (n_samples, 2**depth)
        Probability of each leaf's path (differentiable).
    hard_one_hot : tensor of shape (n_samples, 2**depth)
        One-hot matrix of each row's hard leaf (no gradient).
    """

    __slots__ = ("hard_one_hot", "leaf_probabilities", "outputs", "right_probabilities")

    def __init__(self, outputs, right_probabilities, leaf_probabilities, hard_one_hot):
        self.outputs = outputs
        self.right_probabilities = right_probabilities
        self.leaf_probabilities = leaf_probabilities
        self.hard_one_hot = hard_one_hot


def _soft_forward(X, parameters, swap, straight_through, activation):
    """The soft forward of :class:`FFFNetwork`, with what :func:`_soft_backward` needs.

    For float32 tensors on the CPU the C extension :mod:`fffsklearn._training_kernel`
    computes the routing (path probabilities, hard leaves) and, under straight-through
    routing, each row's outputs from its hard leaf's output layer alone; elsewhere torch
    operations compute the same (:func:`_torch_path_probabilities`, dense products over all
    leaves).

    Parameters
    ----------
    X : tensor of shape (n_samples, n_features)
    parameters : tuple of tensors
        The eleven parameters, in the order of :meth:`FFFNetwork.parameters_in_forward_order`
        (the last, the input projection, may be None).
    swap : bool tensor of shape (n_samples, n_nodes) or None
        Region-leak swaps.
    straight_through : bool
        Whether the outputs are the hard leaf's rather than the mixture's.
    activation : str

    Returns
    -------
    outputs, leaf_probabilities, right, hard_one_hot : tensors
        The outputs, the probability of every leaf's path, the probability of going right at
        every node and the one-hot matrix of the hard leaves.
    saved : tuple
        What the backward reads.
    """
    (node_weights, node_biases, leaf_hidden_weights, leaf_hidden_biases, leaf_output_weights,
     leaf_output_biases, master_hidden_weights, master_hidden_biases, master_output_weights,
     master_output_biases, input_projection) = parameters
    n, n_leaves = X.shape[0], leaf_output_biases.shape[0]
    # The leaves and the master leaf read the rows through the projection when there is one.
    leaf_input = X if input_projection is None else X @ input_projection
    # Computed transposed, (nodes, rows): a product with few output columns ran at half the
    # speed in the (rows, nodes) orientation with OpenBLAS.
    logits = torch.addmm(node_biases.unsqueeze(1), node_weights, X.T).T
    hard_leaves = None
    if _compiled(logits):
        leaf_probabilities, hard_one_hot, right, hard_leaves = _compiled_path_probabilities(
            logits, swap
        )
    else:
        leaf_probabilities, hard_one_hot, right = _torch_path_probabilities(logits, swap)

    _, activate_in_place, _ = torch_activation(activation)
    hidden = activate_in_place(torch.addmm(leaf_hidden_biases, leaf_input, leaf_hidden_weights))
    if straight_through and hard_leaves is not None:
        # Every leaf's hidden layer is still computed: the routing's straight-through
        # gradient needs each leaf's outputs (see _soft_backward).
        mixture = weighted = None
        outputs = _compiled_hard_leaf_outputs(hidden, hard_leaves, leaf_output_weights,
                                              leaf_output_biases)
    else:
        mixture = hard_one_hot if straight_through else leaf_probabilities
        weighted = (hidden.view(n, n_leaves, -1) * mixture.unsqueeze(2)).view(n, -1)
        outputs = torch.addmm(mixture @ leaf_output_biases, weighted, leaf_output_weights.T)
    master_hidden = None
    if master_hidden_weights.shape[1]:
        master_hidden = activate_in_place(
            torch.addmm(master_hidden_biases, leaf_input, master_hidden_weights)
        )
        outputs.addmm_(master_hidden, master_output_weights)
    outputs += master_output_biases
    saved = (
        X, leaf_input, right, leaf_probabilities, hidden, weighted, mixture, hard_leaves,
        master_hidden, leaf_output_weights, leaf_output_biases, master_output_weights,
        input_projection, leaf_hidden_weights, master_hidden_weights, node_weights,
    )
    return outputs, leaf_probabilities, right, hard_one_hot, saved


def _soft_backward(saved, swap, activation, grad_outputs, grad_probabilities, routing_trains,
                   input_trains=False):
    """Gradients of the eleven parameters and of the rows from those of the outputs and leaf
    probabilities.

    As in the forward, the C extension computes the routing's part and, under
    straight-through routing on the CPU, the leaves' gradients from each row's hard leaf
    alone; torch operations compute the same elsewhere (:func:`_torch_path_gradients`,
    dense products over all leaves). Under straight-through routing the rows' gradient
    through the routing neurons is the same surrogate as the routing neurons' own: the
    gradient of the hard mixture is given to the soft one.

    Parameters
    ----------
    saved : tuple
        What :func:`_soft_forward` returned as ``saved``.
    swap, activation
        As given to :func:`_soft_forward`.
    grad_outputs : tensor of shape (n_samples, n_outputs) or None
    grad_probabilities : tensor broadcastable to (n_samples, n_leaves), or None
    routing_trains, input_trains : bool
        Whether to compute the routing neurons' gradients, and the rows'.

    Returns
    -------
    grads, grad_X : list of 11 tensors or None, and a tensor or None
        The parameters' gradients in the order of
        :meth:`FFFNetwork.parameters_in_forward_order` and the rows' (None where none).
    """
    (X, leaf_input, right, leaf_probabilities, hidden, weighted, mixture, hard_leaves,
     master_hidden, leaf_output_weights, leaf_output_biases, master_output_weights,
     input_projection, leaf_hidden_weights, master_hidden_weights, node_weights) = saved
    _, _, activation_backward = torch_activation(activation)
    through_routing = routing_trains or input_trains
    grads = [None] * 11
    grad_X = None
    grad_mixture = grad_probabilities
    if grad_outputs is not None:
        projected = input_projection is not None
        # The gradient of the leaves' input rows, summed over the leaves and the master leaf.
        wants_leaf_input = projected or input_trains
        grad_leaf_input = None
        if master_hidden is not None:
            grads[6], grads[7], grads[8], grad_master = _master_leaf_gradients(
                leaf_input, master_hidden, grad_outputs, master_output_weights,
                activation_backward,
            )
            if wants_leaf_input:
                grad_leaf_input = grad_master @ master_hidden_weights.T
        grads[9] = grad_outputs.sum(dim=0)
        if weighted is None:  # the outputs were each row's hard leaf's, in C
            *leaf_grads, leaf_grad, grad_hidden = _compiled_hard_leaf_gradients(
                leaf_input, hidden, hard_leaves, grad_outputs, leaf_output_weights,
                leaf_output_biases, activation, through_routing, wants_leaf_input,
            )
            if wants_leaf_input:
                grad_leaf_input = _add(grad_leaf_input, _compiled_hard_leaf_input_gradient(
                    grad_hidden, hard_leaves, leaf_hidden_weights))
        else:
            *leaf_grads, leaf_grad, grad_hidden = _mixture_leaf_gradients(
                leaf_input, hidden, weighted, mixture, grad_outputs, leaf_output_weights,
                leaf_output_biases, activation_backward, through_routing,
            )
            if wants_leaf_input:
                grad_leaf_input = _add(grad_leaf_input, grad_hidden @ leaf_hidden_weights.T)
        grads[2:6] = leaf_grads
        if projected:
            grads[10] = X.T @ grad_leaf_input
        if input_trains and grad_leaf_input is not None:
            grad_X = grad_leaf_input @ input_projection.T if projected else grad_leaf_input
        if through_routing:
            grad_mixture = leaf_grad if grad_mixture is None else leaf_grad + grad_mixture
    if through_routing and grad_mixture is not None and right.shape[1]:
        path_gradients = _compiled_path_gradients if _compiled(right) else _torch_path_gradients
        grad_logits = path_gradients(grad_mixture, leaf_probabilities, right, swap)
        if routing_trains:
            grads[0], grads[1] = grad_logits.T @ X, grad_logits.sum(dim=0)
        if input_trains:
            grad_X = _add(grad_X, grad_logits @ node_weights)
    return grads, grad_X


def _master_leaf_gradients(leaf_input, master_hidden, grad_outputs, master_output_weights,
                           activation_backward):
    """The gradients of the master leaf's hidden weights and biases and output weights,
    then that of its hidden pre-activations."""
    grad_master = activation_backward(grad_outputs @ master_output_weights.T, master_hidden)
    return (leaf_input.T @ grad_master, grad_master.sum(dim=0),
            master_hidden.T @ grad_outputs, grad_master)


def _add(total, term):
    """``total + term``, where ``total`` may be None (nothing yet)."""
    return term if total is None else total.add_(term)


def _compiled_hard_leaf_input_gradient(grad_hidden, hard_leaves, leaf_hidden_weights):
    """The gradient of the leaves' input rows from that of each row's hard-leaf hidden
    pre-activations, (rows, leaf width): each row's block times its leaf's first layer,
    in C, where torch would gather a copy of each row's block."""
    grad_input = grad_hidden.new_empty(grad_hidden.shape[0], leaf_hidden_weights.shape[0])
    _training_kernel.hard_leaf_input_gradients(
        grad_hidden.numpy(), hard_leaves.numpy(), leaf_hidden_weights.detach().numpy(),
        grad_input.numpy(),
    )
    return grad_input


def _mixture_leaf_gradients(X, hidden, weighted, mixture, grad_outputs, leaf_output_weights,
                            leaf_output_biases, activation_backward, routing_trains):
    """The gradients of the leaf hidden and output weights and biases when the outputs are
    the ``mixture`` of every leaf's, then, if ``routing_trains``, every leaf's gradient per
    row as a weight of the mixture (else None), then the gradient of the hidden
    pre-activations, (rows, training width)."""
    n, n_leaves = mixture.shape
    grad_weighted = (grad_outputs @ leaf_output_weights).view(n, n_leaves, -1)
    leaf_grad = None
    if routing_trains:
        # Straight-through: the hard mixture's gradient is given to the soft one.
        leaf_grad = (grad_weighted * hidden.view(n, n_leaves, -1)).sum(dim=2)
        leaf_grad.addmm_(grad_outputs, leaf_output_biases.T)
    grad_hidden = activation_backward(
        grad_weighted.mul_(mixture.unsqueeze(2)).view(n, -1), hidden
    )
    return (X.T @ grad_hidden, grad_hidden.sum(dim=0), grad_outputs.T @ weighted,
            mixture.T @ grad_outputs, leaf_grad, grad_hidden)


def _compiled(tensor):
    """Whether the C extension (:mod:`fffsklearn._training_kernel`) computes with this tensor."""
    return (_training_kernel is not None and tensor.device.type == "cpu"
            and tensor.dtype == torch.float32)


def _compiled_path_probabilities(logits, swap):
    n, n_nodes = logits.shape
    leaf_probabilities = logits.new_empty(n, n_nodes + 1)
    hard_one_hot = logits.new_empty(n, n_nodes + 1)
    right = logits.new_empty(n, n_nodes)
    hard_leaves = torch.empty(n, dtype=torch.int64)
    _training_kernel.path_probabilities(
        logits.numpy(), None if swap is None else swap.numpy(), leaf_probabilities.numpy(),
        hard_one_hot.numpy(), right.numpy(), hard_leaves.numpy(),
    )
    return leaf_probabilities, hard_one_hot, right, hard_leaves


def _compiled_hard_leaf_outputs(hidden, hard_leaves, leaf_output_weights, leaf_output_biases):
    """Each row's outputs from its hard leaf's output layer (without the master leaf)."""
    outputs = hidden.new_empty(hidden.shape[0], leaf_output_biases.shape[1])
    _training_kernel.hard_leaf_outputs(
        hidden.numpy(), hard_leaves.numpy(), leaf_output_weights.detach().numpy(),
        leaf_output_biases.detach().numpy(), outputs.numpy(),
    )
    return outputs


def _compiled_hard_leaf_gradients(X, hidden, hard_leaves, grad_outputs, leaf_output_weights,
                                  leaf_output_biases, activation, routing_trains,
                                  pre_activation_gradients=False):
    """The gradients of the leaf hidden and output weights and biases when each row's
    outputs are its hard leaf's; then, if ``routing_trains``, every leaf's straight-through
    gradient per row (else None); then, if ``pre_activation_gradients``, the gradient of each
    row's hard-leaf hidden pre-activations, (rows, leaf width) (else None).

    Only the hard leaf's columns of a row's hidden layer get a gradient, so the weights'
    gradients sum one leaf's block per row; the dense products of the soft mixture would
    multiply the other ``n_leaves - 1`` blocks' zeros. The leaves' straight-through
    gradients need every leaf's outputs; they are computed row by row with them.
    """
    n, n_leaves = hidden.shape[0], leaf_output_biases.shape[0]
    grads = (
        hidden.new_empty(X.shape[1], hidden.shape[1]), hidden.new_empty(hidden.shape[1]),
        torch.empty_like(leaf_output_weights), torch.empty_like(leaf_output_biases),
    )
    leaf_grad = hidden.new_empty(n, n_leaves) if routing_trains else None
    grad_hidden = (hidden.new_empty(n, hidden.shape[1] // n_leaves)
                   if pre_activation_gradients else None)
    _training_kernel.hard_leaf_gradients(
        X.detach().numpy(), hidden.numpy(), hard_leaves.numpy(), grad_outputs.numpy(),
        leaf_output_weights.detach().numpy(), ACTIVATIONS.index(activation),
        *(g.numpy() for g in grads), None if leaf_grad is None else leaf_grad.numpy(),
        None if grad_hidden is None else grad_hidden.numpy(),
    )
    if leaf_grad is not None:
        leaf_grad.addmm_(grad_outputs, leaf_output_biases.T)
    return (*grads, leaf_grad, grad_hidden)


def _torch_path_probabilities(logits, swap):
    """Leaf path probabilities, hard one-hot and right probabilities from the logits.

    A leaf's log-probability is the sum over its path of ``log sigmoid(z)`` where the path
    goes right at a node of logit ``z`` and ``log sigmoid(-z)`` where it goes left, built
    level by level from the root, one addition per level. The same sums over the 0/1
    agreements of each step with the sign of its logit count, for each path, the decisions
    it shares with hard routing; the hard leaf is the one path where all ``depth`` agree.
    """
    n, n_nodes = logits.shape
    depth = n_nodes.bit_length()
    went_right = (logits > 0).to(logits.dtype)
    if swap is not None:
        # A swap exchanges the two probabilities of a node: sigmoid(-z) = 1 - sigmoid(z).
        logits = torch.where(swap, -logits, logits)
    log_right = F.logsigmoid(logits)
    # (2, rows, nodes, 2): log-probabilities and 0/1 decisions of the (left, right) steps;
    # log sigmoid(-z) = log sigmoid(z) - z.
    steps = torch.stack((
        torch.stack((log_right - logits, log_right), dim=2),
        torch.stack((1 - went_right, went_right), dim=2),
    ))
    sums = steps.new_zeros(2, n, 1)
    for level in range(depth):
        first = 2**level - 1
        # Children of local node j at the next level are 2j (left) and 2j + 1 (right).
        sums = (sums.unsqueeze(3) + steps[:, :, first : 2 * first + 1]).flatten(2)
    return sums[0].exp_(), (sums[1] == depth).to(logits.dtype), log_right.exp_()


def _compiled_path_gradients(grad_probabilities, leaf_probabilities, right, swap):
    grad_logits = right.new_empty(right.shape)
    _training_kernel.path_gradients(
        grad_probabilities.expand_as(leaf_probabilities).numpy(), leaf_probabilities.numpy(),
        right.numpy(), None if swap is None else swap.numpy(), grad_logits.numpy(),
    )
    return grad_logits


def _torch_path_gradients(grad_probabilities, leaf_probabilities, right, swap):
    """The gradient of the routing logits from that of the leaf path probabilities.

    From the leaves up: the gradient of a step's log-probability is the sum of
    grad * probability over the leaves below that step, summed pairwise. Nothing is
    divided by a probability, and no path's steps are gathered: each level is one
    operation on contiguous tensors.
    """
    n, n_leaves = leaf_probabilities.shape
    below = grad_probabilities * leaf_probabilities
    grad_steps = below.new_empty(n, n_leaves - 1, 2)
    for level in reversed(range((n_leaves - 1).bit_length())):
        first = 2**level - 1
        pairs = below.view(n, -1, 2)
        grad_steps[:, first : 2 * first + 1] = pairs
        below = pairs.sum(dim=2)
    grad_left, grad_right = grad_steps.unbind(2)
    # d log sigmoid(z)/dz = 1 - sigmoid(z) and d log sigmoid(-z)/dz = -sigmoid(z).
    grad_logits = grad_right - right * (grad_left + grad_right)
    if swap is not None:
        grad_logits = torch.where(swap, -grad_logits, grad_logits)
    return grad_logits


class _SoftForwardFunction(torch.autograd.Function):
    """:func:`_soft_forward` as one autograd node, with :func:`_soft_backward` as its backward.

    Autograd of the plain expression records about fifty small operations per training step
    and allocates seven (rows x training width) temporaries; on a CPU their bookkeeping cost
    more than the matrix products themselves. Here the forward keeps three such temporaries
    and the backward reuses them.

    Inputs are the rows, the ten parameters in the order of
    :meth:`FFFNetwork.parameters_in_forward_order`, ``swap`` (a boolean (rows, nodes) mask of
    region-leak swaps, or None), whether the outputs are the hard leaf's (straight-through)
    and the activation's name.
    Returns the outputs, the leaf probabilities (differentiable), the probabilities of going
    right at every node and the one-hot matrix of the hard leaves (neither differentiable).
    """

    @staticmethod
    def forward(ctx, X, *inputs):
        ctx.set_materialize_grads(False)
        *parameters, swap, straight_through, activation = inputs
        outputs, leaf_probabilities, right, hard_one_hot, saved = _soft_forward(
            X, parameters, swap, straight_through, activation
        )
        ctx.save_for_backward(*saved)
        ctx.swap, ctx.activation = swap, activation
        ctx.mark_non_differentiable(right, hard_one_hot)
        return outputs, leaf_probabilities, right, hard_one_hot

    @staticmethod
    def backward(ctx, grad_outputs, grad_probabilities, _right, _hard):
        routing_trains = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        grads, grad_X = _soft_backward(
            ctx.saved_tensors, ctx.swap, ctx.activation, grad_outputs, grad_probabilities,
            routing_trains, input_trains=ctx.needs_input_grad[0],
        )
        return (grad_X, *grads, None, None, None)


def _check_network_arguments(n_features, n_outputs, depth, leaf_width, master_leaf_width,
                             activation, region_leak, projection_rank):
    """Refuse what no network can be built from, as the estimators' parameter validation
    does, and a network whose parameters alone would not fit in this machine's memory."""

    def check_int(name, value, low, high=None):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < low or (
            high is not None and value > high
        ):
            bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise ValueError(f"{name} must be an int {bounds}, got {value!r}.")

    check_int("n_features", n_features, 1)
    check_int("n_outputs", n_outputs, 1)
    check_int("depth", depth, 0, MAX_DEPTH)
    check_int("leaf_width", leaf_width, 1)
    check_int("master_leaf_width", master_leaf_width, 0)
    if projection_rank is not None:
        check_int("projection_rank", projection_rank, 1)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}.")
    if isinstance(region_leak, bool) or not isinstance(region_leak, Real) or not (
        0.0 <= region_leak <= 0.5
    ):
        raise ValueError(f"region_leak must be a number in [0, 0.5], got {region_leak!r}.")
    n_leaves = 2**depth
    width = n_leaves * leaf_width + master_leaf_width
    values = ((n_leaves - 1) * (n_features + 1) + width * (n_features + 1 + n_outputs)
              + n_leaves * n_outputs)
    available = physical_memory_bytes()
    if available is not None and 4 * values > TRAINING_MEMORY_FRACTION * available:
        raise ValueError(
            f"A network of depth={depth}, leaf_width={leaf_width} on {n_features} features "
            f"holds {4 * values / 2**30:.1f} GiB of parameters, more than "
            f"{TRAINING_MEMORY_FRACTION:.0%} of this machine's {available / 2**30:.1f} GiB: "
            "lower depth or leaf_width."
        )


def _check_scaling(name, scaling, size):
    """A fixed scaling's mean and scale as float64 tensors (None, None without it)."""
    if scaling is None:
        return None, None
    try:
        mean, scale = (np.asarray(a, dtype=np.float64) for a in scaling)
    except (TypeError, ValueError):
        mean = scale = None
    if mean is None or mean.shape != (size,) or scale.shape != (size,) or not (
        np.isfinite(mean).all() and np.isfinite(scale).all() and (scale > 0).all()
    ):
        raise ValueError(
            f"{name} must be (mean, scale), two finite arrays of shape ({size},) with a "
            "positive scale."
        )
    # float64, so that rows far from zero lose no more to the centring than to their dtype.
    return torch.from_numpy(mean), torch.from_numpy(scale)


def _as_arrays(mean, scale):
    if mean is None:
        return None
    return tuple(t.detach().to("cpu", torch.float64).numpy() for t in (mean, scale))


class FFFNetwork(nn.Module):
    """A fast feedforward network as a torch module: a depth-``depth`` tree of routing neurons
    over ``2**depth`` leaf MLPs, plus a master MLP that every row uses.

    ``forward`` returns the raw outputs (logits of a classifier, targets of a regressor) as
    any training loop expects, and keeps the routing of the same pass in :attr:`routing`, so
    that :func:`load_balancing_loss` needs no second forward. In evaluation mode, and in
    training mode with ``straight_through=True``, the outputs are those of the hard-routed
    model that fffsklearn's estimators predict with.

    The rows get a gradient as well as the parameters, so the network can follow an encoder
    or give saliency maps; under hard routing the part of it that passes through the routing
    neurons is the same straight-through surrogate that trains them. Under
    :func:`torch.autocast` the network computes in its parameters' dtype, as autocast does
    for the operations it keeps in float32, and returns outputs of that dtype.

    Parameters
    ----------
    n_features, n_outputs : int
        Sizes of the input rows and of the outputs.
    depth : int, default=4
        Depth of the routing tree.
    leaf_width : int, default=16
        Hidden units of each leaf MLP.
    master_leaf_width : int, default=16
        Hidden units of the master leaf; 0 turns it off.
    activation : {"relu", "tanh", "logistic", "identity"}, default="relu"
        Activation of the hidden layers.
    straight_through : bool, default=True
        In training mode, whether the outputs are each row's hard leaf's (the balancing
        phase: gradients reach the routing neurons through the soft path probabilities) or
        the mixture of all leaves by path probability (the hardening phase, see
        :class:`~fffsklearn.nn.Hardening`).
    region_leak : float, default=0.0
        In training mode, probability per node and row of swapping the node's two branches.
    random_state : int or None, default=None
        Seeds the initial weights; None draws them from torch's global generator.
    projection_rank : int or None, default=None
        If given, the leaves and the master leaf read the rows through one shared projection
        of this many columns (at most ``n_features``): their first layers are trained as
        ``input_projection @ leaf_hidden_weights`` and ``input_projection @
        master_hidden_weights``. :meth:`to_arrays` exports the products, so the exported
        model is a plain FFF.
    projection_directions : ndarray of shape (n_features, k) or None, default=None
        Orthonormal columns, by decreasing importance, that the projection starts on: the
        first layers are drawn as without a projection, then projected onto the span of
        the first ``rank`` columns and rescaled to their drawn norm before being factorised
        (the estimators pass the principal directions of the training rows, see
        :func:`~fffsklearn._preparation.principal_directions`). None factorises the drawn
        first layers as they are. Ignored without ``projection_rank``.
    input_scaling : tuple of two array-likes of shape (n_features,), or None, default=None
        ``(mean, scale > 0)``: the network first standardises its rows as ``(X - mean) /
        scale`` (in float64), both held fixed (buffers), so that training from raw rows is
        as well conditioned as from standardised ones. :meth:`to_arrays` folds them in.
    output_scaling : tuple of two array-likes of shape (n_outputs,), or None, default=None
        ``(mean, scale > 0)``: the outputs are the tree's times ``scale`` plus ``mean``,
        both held fixed, so that a regressor's targets keep their units while its weights
        keep the size they trained at. :meth:`to_arrays` folds them in unless told not to.

    Attributes
    ----------
    routing : SoftForward or None
        What the last forward pass computed besides the outputs.
    input_mean, input_scale : tensor of shape (n_features,) or None
        The fixed standardisation of ``input_scaling``; None without it.
    output_mean, output_scale : tensor of shape (n_outputs,) or None
        The fixed scaling of ``output_scaling``; None without it.
    input_projection : Parameter of shape (n_features, rank) or None
        The shared projection, started as the balanced factor of the best rank-``rank``
        approximation (SVD) of the first layers drawn as without it, or of their projection
        onto ``projection_directions``, rescaled to their norm.
    """

    def __init__(
        self, n_features, n_outputs, depth=4, leaf_width=16, master_leaf_width=16,
        activation="relu", *, straight_through=True, region_leak=0.0, random_state=None,
        projection_rank=None, projection_directions=None, input_scaling=None,
        output_scaling=None,
    ):
        super().__init__()
        _check_network_arguments(n_features, n_outputs, depth, leaf_width, master_leaf_width,
                                 activation, region_leak, projection_rank)
        # Buffers, not parameters: they move with .to() and pickle with the module, and no
        # optimizer given .parameters() changes them.
        for name, scaling, size in (("input", input_scaling, n_features),
                                    ("output", output_scaling, n_outputs)):
            mean, scale = _check_scaling(f"{name}_scaling", scaling, size)
            self.register_buffer(f"{name}_mean", mean)
            self.register_buffer(f"{name}_scale", scale)
        self.depth = depth
        self.activation = activation
        self.straight_through = straight_through
        self.region_leak = region_leak
        self.routing = None
        n_nodes, n_leaves = 2**depth - 1, 2**depth
        d, l, m, o = n_features, leaf_width, master_leaf_width, n_outputs
        generator = None if random_state is None else torch.Generator().manual_seed(random_state)

        def uniform(fan_in, *shape):
            # PyTorch's nn.Linear initialisation, drawn from our own generator.
            bound = 1.0 / math.sqrt(fan_in)
            return nn.Parameter((torch.rand(*shape, generator=generator) * 2 - 1) * bound)

        self.node_weights = uniform(d, n_nodes, d)
        self.node_biases = uniform(d, n_nodes)
        # Leaf hidden weights are stored as one (d, n_leaves * l) matrix so that all leaves'
        # hidden layers are a single GEMM.
        self.leaf_hidden_weights = uniform(d, d, n_leaves * l)
        self.leaf_hidden_biases = uniform(d, n_leaves * l)
        # Stored as (outputs, leaves * leaf_width), nn.Linear's layout: the products of the
        # training step then run with contiguous operands.
        self.leaf_output_weights = nn.Parameter(uniform(l, n_leaves * l, o).T.contiguous())
        self.leaf_output_biases = uniform(l, n_leaves, o)
        self.master_hidden_weights = uniform(d, d, m)
        self.master_hidden_biases = uniform(d, m)
        self.master_output_weights = uniform(max(m, 1), m, o)
        # Without a master leaf the leaf output biases already carry the constant term.
        self.master_output_biases = (
            uniform(m, o) if m else nn.Parameter(torch.zeros(o), requires_grad=False)
        )
        self.input_projection = None
        if projection_rank is not None:
            rank = projected_rank(projection_rank, d, n_leaves * l + m)
            first_layers = self._first_layers()
            if projection_directions is not None:
                first_layers = _within_span(first_layers, projection_directions[:, :rank])
            projection, first_layers = _factorise(first_layers, rank, keep_norm=True)
            self.input_projection = nn.Parameter(projection.float().contiguous())
            self.leaf_hidden_weights = nn.Parameter(
                first_layers[:, : n_leaves * l].float().contiguous()
            )
            self.master_hidden_weights = nn.Parameter(
                first_layers[:, n_leaves * l :].float().contiguous()
            )

    def _first_layers(self):
        """The first layers of the leaves and the master leaf side by side, (n_features,
        training width + master leaf width), as the rows meet them."""
        with torch.no_grad():
            stacked = torch.cat((self.leaf_hidden_weights, self.master_hidden_weights), dim=1)
            return stacked if self.input_projection is None else self.input_projection @ stacked

    @classmethod
    def from_arrays(cls, arrays, *, input_scaling=None, output_scaling=None):
        """A module holding the weights of ``arrays`` (an :class:`FFFArrays`), in evaluation
        mode: its ``forward`` computes what the estimators predict.

        ``input_scaling`` and ``output_scaling`` (see the class parameters) are put around
        the tree of ``arrays``: its rows are standardised first and its outputs scaled.

        ``soft_forward(X, straight_through=False)`` gives the path-probability mixture that
        the published FFF code reports; comparing it with hard routing measures how
        decisive the trained routing is.
        """
        network = cls(
            arrays.n_features, arrays.n_outputs, arrays.depth, arrays.leaf_width,
            arrays.master_leaf_width, arrays.activation, random_state=0,
            input_scaling=input_scaling, output_scaling=output_scaling,
        )
        network.load_arrays(arrays)
        return network.eval()

    @property
    def n_leaves(self):
        return 2**self.depth

    def __getstate__(self):
        state = dict(self.__dict__)
        # The last pass's tensors (and their graph, which cannot be pickled) are not part of
        # the model.
        state["routing"] = None
        return state

    def parameters_in_forward_order(self):
        """Every parameter, in the order :class:`_SoftForwardFunction` takes them."""
        return (
            self.node_weights, self.node_biases,
            self.leaf_hidden_weights, self.leaf_hidden_biases,
            self.leaf_output_weights, self.leaf_output_biases,
            self.master_hidden_weights, self.master_hidden_biases,
            self.master_output_weights, self.master_output_biases,
            self.input_projection,
        )

    def weight_matrices(self):
        """The parameters that the L2 penalty ``alpha`` applies to (no biases)."""
        weights = (
            self.node_weights,
            self.leaf_hidden_weights,
            self.leaf_output_weights,
            self.master_hidden_weights,
            self.master_output_weights,
        )
        return weights if self.input_projection is None else (*weights, self.input_projection)

    def forward(self, X, generator=None):
        """The raw outputs of the rows ``X``; their routing is kept in :attr:`routing`.

        Parameters
        ----------
        X : tensor of shape (n_samples, n_features)
        generator : torch.Generator or None
            Source of the region-leak draws; None uses torch's global generator.

        Returns
        -------
        outputs : tensor of shape (n_samples, n_outputs)
        """
        self.routing = self.soft_forward(
            X,
            straight_through=self.straight_through or not self.training,
            region_leak=self.region_leak,
            generator=generator,
        )
        return self.routing.outputs

    def soft_forward(self, X, *, straight_through, region_leak=0.0, generator=None):
        """One forward pass, with every routing quantity the losses need.

        Parameters
        ----------
        X : tensor of shape (n_samples, n_features)
        straight_through : bool
            If True, the outputs are those of each row's hard leaf, while gradients reach the
            routing neurons through the soft path probabilities; if False, the mixture of
            every leaf weighted by the probability of its path.
        region_leak : float
            Probability, per node and sample, of swapping the node's left and right
            probabilities. Only applied when the module is in training mode.
        generator : torch.Generator or None
            Source of the region-leak draws.

        Returns
        -------
        SoftForward
        """
        if torch.is_autocast_enabled(X.device.type):
            # The routing's hard decisions and the C kernels need one dtype throughout: like
            # the operations autocast keeps in float32, the network computes in its own.
            with torch.autocast(X.device.type, enabled=False):
                return self.soft_forward(
                    X.to(self.node_weights.dtype), straight_through=straight_through,
                    region_leak=region_leak, generator=generator,
                )
        X = self._standardised(X)
        swap = self._region_leak_swaps(X, region_leak, generator)
        outputs, leaf_probabilities, right, hard_one_hot = _SoftForwardFunction.apply(
            X, *self.parameters_in_forward_order(), swap, straight_through, self.activation
        )
        if self.output_mean is not None:
            outputs = (outputs * self.output_scale + self.output_mean).to(X.dtype)
        return SoftForward(outputs, right, leaf_probabilities, hard_one_hot)

    def training_pass(self, X, *, straight_through):
        """What :meth:`soft_forward` computes, outside autograd, and the backward of it.

        A training step that differentiates its own loss by hand skips autograd's
        bookkeeping, which on a CPU costs more than the small operations it records (the
        estimators' trainer does so).

        Parameters
        ----------
        X, straight_through
            As for :meth:`soft_forward` (without region leak: the estimators' trainer does
            not swap branches).

        Returns
        -------
        routing : SoftForward
            Its tensors carry no autograd graph.
        backward : callable
            ``backward(grad_outputs, grad_leaf_probabilities)`` sets (not accumulates) the
            ``.grad`` of every parameter that requires one, from the gradients of a loss with
            respect to ``routing.outputs`` and ``routing.leaf_probabilities``; either may be
            None, and the second may be any tensor broadcastable to (n_samples, n_leaves).
        """
        swap = None
        parameters = self.parameters_in_forward_order()
        with torch.no_grad():
            X = self._standardised(X)
            outputs, leaf_probabilities, right, hard_one_hot, saved = _soft_forward(
                X, parameters, swap, straight_through, self.activation
            )

        if self.output_mean is not None:
            outputs = (outputs * self.output_scale + self.output_mean).to(X.dtype)

        def backward(grad_outputs, grad_leaf_probabilities):
            if grad_outputs is not None and self.output_mean is not None:
                grad_outputs = (grad_outputs * self.output_scale).to(X.dtype)
            with torch.no_grad():
                grads, _ = _soft_backward(
                    saved, swap, self.activation, grad_outputs, grad_leaf_probabilities,
                    routing_trains=self.node_weights.requires_grad,
                )
            for parameter, grad in zip(parameters, grads):
                if parameter is not None and parameter.requires_grad:
                    parameter.grad = grad

        return SoftForward(outputs, right, leaf_probabilities, hard_one_hot), backward

    def _standardised(self, X):
        """The rows as the tree reads them: through the fixed input standardisation, if any."""
        if self.input_mean is None:
            return X
        # float64 rows far from zero are centred before they meet the float32 weights.
        return ((X - self.input_mean) / self.input_scale).to(self.node_weights.dtype)

    def _region_leak_swaps(self, X, region_leak, generator):
        """Where each row swaps a node's two branches (region leak), or None."""
        if not (self.training and region_leak > 0 and self.depth > 0):
            return None
        return torch.rand(
            (X.shape[0], self.n_leaves - 1), generator=generator, device=X.device
        ) < region_leak

    def to_arrays(self, *, output_scaling=True):
        """Export the weights as the validated NumPy arrays that every inference backend reads.

        The arrays take raw rows (the fixed input standardisation, if any, is folded into
        the first layers). With ``output_scaling=False`` they give the tree's own outputs,
        before the fixed output scaling; otherwise the outputs of :meth:`forward`.
        """
        arrays = _tree_arrays(self)
        if self.input_mean is not None:
            arrays = arrays.with_input_scaling(*self.input_scaling)
        if output_scaling and self.output_mean is not None:
            arrays = arrays.with_output_scaling(*self.output_scaling)
        return arrays

    @property
    def input_scaling(self):
        """The fixed input standardisation, ``(mean, scale)`` as float64 arrays, or None."""
        return _as_arrays(self.input_mean, self.input_scale)

    @property
    def output_scaling(self):
        """The fixed output scaling, ``(mean, scale)`` as float64 arrays, or None."""
        return _as_arrays(self.output_mean, self.output_scale)

    def load_arrays(self, arrays):
        """Copy the weights of ``arrays`` (an :class:`FFFArrays`) into this module.

        The arrays are the tree's own: they take the rows after the fixed input
        standardisation and give the outputs before the fixed output scaling (without
        either, what :meth:`to_arrays` returns).
        """
        _load_tree_arrays(self, arrays)


def leaf_parameters(network):
    """``(parameter, shape)`` of each leaf parameter of ``network``, where ``shape`` views it
    as ``(rows, n_leaves, columns)``: one slice of the middle axis per leaf, in leaf order
    (the children of the leaf-level node ``j`` one level deeper are ``2j`` and ``2j + 1``)."""
    n_leaves = network.n_leaves
    return (
        (network.leaf_hidden_weights, (network.leaf_hidden_weights.shape[0], n_leaves, -1)),
        (network.leaf_hidden_biases, (1, n_leaves, -1)),
        (network.leaf_output_weights, (network.leaf_output_weights.shape[0], n_leaves, -1)),
        (network.leaf_output_biases, (1, n_leaves, -1)),
    )


def _tree_arrays(network):
    """The arrays of the tree's own parameters (the first layers multiplied out of a
    projection), before any fixed scaling of the rows or outputs."""
    n_leaves, depth = network.n_leaves, network.depth

    def numpy(t):
        return t.detach().to("cpu", torch.float32).numpy()

    d = network.node_weights.shape[1]
    o = network.master_output_biases.shape[0]
    first_layers = network._first_layers()
    training_width = network.leaf_hidden_biases.shape[0]
    return FFFArrays(
        depth,
        network.activation,
        node_weights=numpy(network.node_weights),
        node_biases=numpy(network.node_biases),
        leaf_hidden_weights=numpy(first_layers[:, :training_width])
        .reshape(d, n_leaves, -1)
        .transpose(1, 0, 2),
        leaf_hidden_biases=numpy(network.leaf_hidden_biases).reshape(n_leaves, -1),
        leaf_output_weights=numpy(network.leaf_output_weights).T.reshape(n_leaves, -1, o),
        leaf_output_biases=numpy(network.leaf_output_biases),
        master_hidden_weights=numpy(first_layers[:, training_width:]),
        master_hidden_biases=numpy(network.master_hidden_biases),
        master_output_weights=numpy(network.master_output_weights),
        master_output_biases=numpy(network.master_output_biases),
    )


@torch.no_grad()
def _load_tree_arrays(network, arrays):
    """Copy ``arrays``, those of the tree's own parameters, into ``network``."""
    n_leaves = network.n_leaves
    d = arrays.n_features

    def copy(param, value):
        param.copy_(torch.as_tensor(np.array(value)).reshape(param.shape))

    copy(network.node_weights, arrays.node_weights)
    copy(network.node_biases, arrays.node_biases)
    leaf_first_layers = arrays.leaf_hidden_weights.transpose(1, 0, 2).reshape(d, -1)
    if network.input_projection is None:
        copy(network.leaf_hidden_weights, leaf_first_layers)
        copy(network.master_hidden_weights, arrays.master_hidden_weights)
    else:
        # Exact for arrays exported from a projection of this rank: their first layers
        # have at most this rank.
        projection, first_layers = _factorise(
            torch.as_tensor(np.concatenate(
                (leaf_first_layers, np.asarray(arrays.master_hidden_weights)), axis=1
            )),
            network.input_projection.shape[1], keep_norm=False,
        )
        first_layers = first_layers.numpy()
        copy(network.input_projection, projection.numpy())
        copy(network.leaf_hidden_weights, first_layers[:, : leaf_first_layers.shape[1]])
        copy(network.master_hidden_weights, first_layers[:, leaf_first_layers.shape[1] :])
    copy(network.leaf_hidden_biases, arrays.leaf_hidden_biases)
    copy(network.leaf_output_weights,
         arrays.leaf_output_weights.reshape(n_leaves * arrays.leaf_width, -1).T)
    copy(network.leaf_output_biases, arrays.leaf_output_biases)
    copy(network.master_hidden_biases, arrays.master_hidden_biases)
    copy(network.master_output_weights, arrays.master_output_weights)
    copy(network.master_output_biases, arrays.master_output_biases)


def projected_rank(projection_rank, n_features, n_first_layer_columns):
    """The rank of the input projection that ``projection_rank`` asks for: at most the
    number of features and of the first layers' columns (leaves' and master leaf's)."""
    return min(projection_rank, n_features, n_first_layer_columns)


def _within_span(matrix, basis):
    """``matrix``'s columns projected onto the span of ``basis``'s orthonormal columns,
    float64 on the CPU, rescaled to the Frobenius norm of ``matrix``."""
    matrix = matrix.detach().to("cpu", torch.float64)
    basis = torch.as_tensor(basis, dtype=torch.float64)
    projected = basis @ (basis.T @ matrix)
    norm = projected.norm()
    return projected * (matrix.norm() / norm) if norm > 0 else projected


def _factorise(matrix, rank, *, keep_norm):
    """``(left, right)`` of shapes ``(rows, rank)`` and ``(rank, columns)``, float64 on the
    CPU, whose product is the best rank-``rank`` approximation of ``matrix`` (its truncated
    SVD), with the singular values split evenly between the two; ``keep_norm`` rescales the
    product to the Frobenius norm of ``matrix``."""
    matrix = matrix.detach().to("cpu", torch.float64)
    u, singular_values, vh = torch.linalg.svd(matrix, full_matrices=False)
    kept = singular_values[:rank]
    if keep_norm and kept.norm() > 0:
        kept = kept * (matrix.norm() / kept.norm())
    root = kept.sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def load_balancing_loss(routing):
    """Switch-Transformer balance loss ``n_leaves * sum_j f_j * P_j``; 1 when leaves are even.

    ``f_j`` is the fraction of the batch whose hard leaf is ``j`` (no gradient), ``P_j`` the
    batch mean of the soft probability of reaching leaf ``j``. Its minimum, 1, is reached
    when every leaf receives as many rows as it is expected to.

    Parameters
    ----------
    routing : SoftForward
        The routing of a forward pass, such as :attr:`FFFNetwork.routing`.

    Returns
    -------
    loss : 0-d tensor
    """
    leaf_probabilities = routing.leaf_probabilities
    n_leaves = leaf_probabilities.shape[1]
    return n_leaves * torch.dot(
        routing.hard_one_hot.mean(dim=0), leaf_probabilities.mean(dim=0)
    )
