"""The fitted model: a fast feedforward network as a set of NumPy arrays.

Every inference backend reads the arrays of one :class:`FFFArrays`; the torch module that
trained them exists only while training. Keeping the fitted state in plain NumPy is what lets
a model trained on a GPU load on a CPU-only machine, be saved by skops, and be read by the
compiled kernel without a copy.
"""

import numpy as np

from ._activations import ACTIVATIONS
from ._limits import MAX_ABS_WEIGHT, MAX_DEPTH

_ARRAY_FIELDS = (
    "node_weights",
    "node_biases",
    "leaf_hidden_weights",
    "leaf_hidden_biases",
    "leaf_output_weights",
    "leaf_output_biases",
    "master_hidden_weights",
    "master_hidden_biases",
    "master_output_weights",
    "master_output_biases",
)


class FFFArrays:
    """Weights of a fitted fast feedforward network, validated and read-only.

    Nodes are stored in heap order: the root is node 0 and the children of node ``c`` are
    ``2c + 1`` (left) and ``2c + 2`` (right). A row goes right at a node iff
    ``node_weights[c] @ x + node_biases[c] > 0``. The leaf index is the node index reached after
    ``depth`` steps minus ``2**depth - 1``. The output of a row is the output of its leaf MLP
    plus the output of the master MLP, which every row uses.

    Parameters
    ----------
    depth : int
        Depth of the routing tree; the tree has ``2**depth - 1`` nodes and ``2**depth`` leaves.
    activation : {"relu", "tanh", "logistic", "identity"}
        Activation of the hidden layer of the leaves and of the master leaf.
    node_weights : ndarray of shape (n_nodes, n_features)
    node_biases : ndarray of shape (n_nodes,)
    leaf_hidden_weights : ndarray of shape (n_leaves, n_features, leaf_width)
    leaf_hidden_biases : ndarray of shape (n_leaves, leaf_width)
    leaf_output_weights : ndarray of shape (n_leaves, leaf_width, n_outputs)
    leaf_output_biases : ndarray of shape (n_leaves, n_outputs)
    master_hidden_weights : ndarray of shape (n_features, master_leaf_width)
    master_hidden_biases : ndarray of shape (master_leaf_width,)
    master_output_weights : ndarray of shape (master_leaf_width, n_outputs)
    master_output_biases : ndarray of shape (n_outputs,)
        With ``master_leaf_width == 0`` the master leaf contributes only this bias.

    Raises
    ------
    ValueError
        If the depth, the activation, a shape, a dtype or a value is inconsistent, not finite,
        or of a magnitude beyond ``fffsklearn._limits.MAX_ABS_WEIGHT``.
    """

    __slots__ = ("depth", "activation", "__weakref__") + _ARRAY_FIELDS

    #: Names of the weight arrays, in the order of the parameters above.
    ARRAY_NAMES = _ARRAY_FIELDS

    def __init__(self, depth, activation, **arrays):
        missing = set(_ARRAY_FIELDS) - set(arrays)
        unexpected = set(arrays) - set(_ARRAY_FIELDS)
        if missing or unexpected:
            raise ValueError(
                f"FFFArrays needs exactly the arrays {list(_ARRAY_FIELDS)}; "
                f"missing {sorted(missing)}, unexpected {sorted(unexpected)}."
            )
        _check_depth(depth)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}.")
        object.__setattr__(self, "depth", int(depth))
        object.__setattr__(self, "activation", str(activation))
        for name in _ARRAY_FIELDS:
            object.__setattr__(self, name, _as_readonly_float32(name, arrays[name]))
        self._check_shapes()

    def __setattr__(self, name, value):
        raise AttributeError(
            "FFFArrays is read-only; build a new one with FFFArrays(...) instead."
        )

    def __getstate__(self):
        return {name: getattr(self, name) for name in ("depth", "activation") + _ARRAY_FIELDS}

    def __setstate__(self, state):
        # A pickle or skops file is untrusted input: rebuild through the validating constructor.
        if not isinstance(state, dict):
            raise ValueError("Corrupt FFFArrays state: expected a dict.")
        state = dict(state)
        try:
            depth = state.pop("depth")
            activation = state.pop("activation")
        except KeyError as exc:
            raise ValueError(f"Corrupt FFFArrays state: missing {exc}.") from None
        FFFArrays.__init__(self, depth, activation, **state)

    def __reduce__(self):
        return (_rebuild, (self.__getstate__(),))

    @property
    def n_features(self):
        """Number of input features."""
        return self.node_weights.shape[1]

    @property
    def n_outputs(self):
        """Number of raw outputs (classes for a classifier, targets for a regressor)."""
        return self.master_output_biases.shape[0]

    @property
    def n_leaves(self):
        """Number of leaves, ``2**depth``."""
        return 1 << self.depth

    @property
    def leaf_width(self):
        """Hidden units of each leaf MLP."""
        return self.leaf_hidden_biases.shape[1]

    @property
    def master_leaf_width(self):
        """Hidden units of the master leaf (0 if it is off)."""
        return self.master_hidden_biases.shape[0]

    def with_input_scaling(self, mean, scale):
        """The same network for raw inputs, from this one that takes ``(x - mean) / scale``.

        The scaling is folded into the first layer of every routing neuron, leaf and the
        master leaf: a weight ``w`` of input ``j`` becomes ``w / scale[j]`` and each bias loses
        the scaled weights' product with ``mean``. Prediction then costs what it cost before
        and every backend reads the result as any other model. Computed in float64.

        Parameters
        ----------
        mean, scale : ndarray of shape (n_features,)
            The statistics the network was trained with; ``scale`` > 0.

        Returns
        -------
        FFFArrays
        """
        return self._rescaled(np.asarray(mean, np.float64), 1.0 / np.asarray(scale, np.float64))

    def without_input_scaling(self, mean, scale):
        """The inverse of :meth:`with_input_scaling`: the network that takes
        ``(x - mean) / scale``, from this one that takes raw inputs."""
        mean, scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
        return self._rescaled(-mean / scale, scale)

    def with_output_scaling(self, mean, scale):
        """The network whose outputs are ``outputs * scale + mean`` of this one's.

        Every output layer (of the leaves and of the master leaf) is multiplied by ``scale``
        and the master leaf's output bias gains ``mean``: a regressor trained on standardised
        targets becomes a network of the targets in their own units. Computed in float64.

        Parameters
        ----------
        mean, scale : ndarray of shape (n_outputs,)

        Returns
        -------
        FFFArrays
        """
        mean, scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
        state = self.__getstate__()
        for name in ("leaf_output_weights", "leaf_output_biases", "master_output_weights"):
            state[name] = state[name].astype(np.float64) * scale
        state["master_output_biases"] = state["master_output_biases"] * scale + mean
        return FFFArrays(state.pop("depth"), state.pop("activation"), **state)

    def _rescaled(self, shift, factor):
        # Every first-layer weight of input j is multiplied by factor[j], and each bias loses
        # the new weights' product with shift: the network of inputs x becomes the network
        # of inputs (x - shift) * factor.
        state = self.__getstate__()
        node = state["node_weights"].astype(np.float64) * factor
        leaf = state["leaf_hidden_weights"].astype(np.float64) * factor[:, None]
        master = state["master_hidden_weights"].astype(np.float64) * factor[:, None]
        state["node_weights"] = node
        state["node_biases"] = state["node_biases"] - node @ shift
        state["leaf_hidden_weights"] = leaf
        state["leaf_hidden_biases"] = (
            state["leaf_hidden_biases"] - np.einsum("d,ndl->nl", shift, leaf)
        )
        state["master_hidden_weights"] = master
        state["master_hidden_biases"] = state["master_hidden_biases"] - shift @ master
        return FFFArrays(state.pop("depth"), state.pop("activation"), **state)

    def _check_shapes(self):
        d = self.node_weights.shape[1] if self.node_weights.ndim == 2 else -1
        o = self.master_output_biases.shape[0] if self.master_output_biases.ndim == 1 else -1
        l = self.leaf_hidden_biases.shape[1] if self.leaf_hidden_biases.ndim == 2 else -1
        m = self.master_hidden_biases.shape[0] if self.master_hidden_biases.ndim == 1 else -1
        n_nodes, n_leaves = (1 << self.depth) - 1, 1 << self.depth
        expected = {
            "node_weights": (n_nodes, d),
            "node_biases": (n_nodes,),
            "leaf_hidden_weights": (n_leaves, d, l),
            "leaf_hidden_biases": (n_leaves, l),
            "leaf_output_weights": (n_leaves, l, o),
            "leaf_output_biases": (n_leaves, o),
            "master_hidden_weights": (d, m),
            "master_hidden_biases": (m,),
            "master_output_weights": (m, o),
            "master_output_biases": (o,),
        }
        for name, shape in expected.items():
            actual = getattr(self, name).shape
            if actual != shape or min(shape) < 0:
                raise ValueError(
                    f"Inconsistent FFF model: {name} has shape {actual}, expected {shape} "
                    f"for depth={self.depth}."
                )
        if d < 1 or o < 1 or l < 1:
            raise ValueError(
                "Inconsistent FFF model: n_features, n_outputs and leaf_width must be >= 1, "
                f"got {d}, {o} and {l}."
            )


def _rebuild(state):
    arrays = FFFArrays.__new__(FFFArrays)
    arrays.__setstate__(state)
    return arrays


def _check_depth(depth):
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)):
        raise ValueError(f"depth must be an integer, got {type(depth).__name__}.")
    if not 0 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth must be in [0, {MAX_DEPTH}], got {depth}.")


# The compiled kernel reads a sparse row through one row of each layer's weights per stored
# value: aligned, a row of 16 float32 weights fills one cache line instead of straddling two.
_CACHE_LINE = 64


def _cache_aligned_float32(shape):
    """An empty C-ordered float32 array of ``shape`` that starts on a cache line."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * 4
    buffer = np.empty(nbytes + _CACHE_LINE, dtype=np.uint8)
    start = -buffer.ctypes.data % _CACHE_LINE
    return buffer[start : start + nbytes].view(np.float32).reshape(shape)


def _as_readonly_float32(name, value):
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{name} must be a NumPy array, got {type(value).__name__}.")
    if value.dtype.kind != "f":
        raise ValueError(f"{name} must hold floating point numbers, got dtype {value.dtype}.")
    array = _cache_aligned_float32(value.shape)
    array[...] = value
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinity.")
    if array.size and np.abs(array).max() > MAX_ABS_WEIGHT:
        raise ValueError(
            f"{name} has a weight of magnitude {np.abs(array).max():.3g}, beyond the "
            f"{MAX_ABS_WEIGHT:.0e} that a trained model stays far below."
        )
    array.setflags(write=False)
    return array
