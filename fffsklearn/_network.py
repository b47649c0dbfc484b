"""The torch module of a fast feedforward network, used only while training.

The soft forward mixes every leaf by the probability of the path that leads to it; it is
vectorised over leaves (one GEMM for all leaf hidden layers, one for all leaf output layers)
and loops only over the ``depth`` levels of the tree.
"""

import math

import numpy as np
import torch
from torch import nn

from ._arrays import FFFArrays

_TORCH_ACTIVATIONS = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "logistic": torch.sigmoid,
    "identity": lambda t: t,
}


class SoftForward:
    """What one soft forward pass computed: outputs and the routing quantities of the losses."""

    __slots__ = ("outputs", "right_probabilities", "leaf_probabilities", "hard_leaves")

    def __init__(self, outputs, right_probabilities, leaf_probabilities, hard_leaves):
        self.outputs = outputs
        self.right_probabilities = right_probabilities
        self.leaf_probabilities = leaf_probabilities
        self.hard_leaves = hard_leaves


class FFFNetwork(nn.Module):
    """A depth-``depth`` tree of routing neurons over ``2**depth`` leaf MLPs, plus a master MLP.

    Parameters
    ----------
    n_features, n_outputs, depth, leaf_width, master_leaf_width : int
        Sizes of the network; ``master_leaf_width=0`` turns the master leaf off.
    activation : str
        One of ``fffsklearn._arrays.ACTIVATIONS``.
    generator : torch.Generator
        Source of the initial weights.
    """

    def __init__(
        self, n_features, n_outputs, depth, leaf_width, master_leaf_width, activation, generator
    ):
        super().__init__()
        self.depth = depth
        self.activation = activation
        self._activate = _TORCH_ACTIVATIONS[activation]
        n_nodes, n_leaves = 2**depth - 1, 2**depth
        d, l, m, o = n_features, leaf_width, master_leaf_width, n_outputs

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
        self.leaf_output_weights = uniform(l, n_leaves * l, o)
        self.leaf_output_biases = uniform(l, n_leaves, o)
        self.master_hidden_weights = uniform(d, d, m)
        self.master_hidden_biases = uniform(d, m)
        self.master_output_weights = uniform(max(m, 1), m, o)
        # Without a master leaf the leaf output biases already carry the constant term.
        self.master_output_biases = (
            uniform(m, o) if m else nn.Parameter(torch.zeros(o), requires_grad=False)
        )

    @classmethod
    def from_arrays(cls, arrays):
        """A module holding the weights of a fitted model's :class:`FFFArrays`.

        Its soft forward (``straight_through=False``) is the path-probability mixture that
        the published FFF code reports; comparing it with hard routing measures how
        decisive the trained routing is.
        """
        network = cls(
            arrays.n_features, arrays.n_outputs, arrays.depth, arrays.leaf_width,
            arrays.master_leaf_width, arrays.activation, torch.Generator().manual_seed(0),
        )
        network.load_arrays(arrays)
        return network.eval()

    @property
    def n_leaves(self):
        return 2**self.depth

    def weight_matrices(self):
        """The parameters that the L2 penalty ``alpha`` applies to (no biases)."""
        return (
            self.node_weights,
            self.leaf_hidden_weights,
            self.leaf_output_weights,
            self.master_hidden_weights,
            self.master_output_weights,
        )

    def forward(self, X, region_leak=0.0, generator=None, straight_through=False):
        """Soft forward pass.

        Parameters
        ----------
        X : tensor of shape (n_samples, n_features)
        region_leak : float
            Probability, per node and sample, of swapping the node's left and right
            probabilities. Only applied when the module is in training mode.
        generator : torch.Generator or None
            Source of the region-leak draws.

        Returns
        -------
        SoftForward
        """
        n = X.shape[0]
        logits = X @ self.node_weights.T + self.node_biases
        right = torch.sigmoid(logits)
        if self.training and region_leak > 0 and self.depth > 0:
            swap = torch.rand(right.shape, generator=generator, device=X.device) < region_leak
            right = torch.where(swap, 1 - right, right)

        leaf_probabilities = X.new_ones(n, 1)
        hard_leaves = torch.zeros(n, dtype=torch.long, device=X.device)
        rows = torch.arange(n, device=X.device)
        for level in range(self.depth):
            first = 2**level - 1
            level_right = right[:, first : 2 * first + 1]
            # Children of local node j at the next level are 2j (left) and 2j + 1 (right).
            leaf_probabilities = torch.stack(
                (leaf_probabilities * (1 - level_right), leaf_probabilities * level_right), dim=2
            ).reshape(n, -1)
            went_right = logits[rows, first + hard_leaves] > 0
            hard_leaves = 2 * hard_leaves + went_right.long()

        mixture = leaf_probabilities
        if straight_through:
            # Forward through the hard leaf, backward through the soft path probabilities.
            hard = torch.nn.functional.one_hot(hard_leaves, self.n_leaves).to(X.dtype)
            mixture = hard + leaf_probabilities - leaf_probabilities.detach()
        hidden = self._activate(X @ self.leaf_hidden_weights + self.leaf_hidden_biases)
        weighted_hidden = hidden.view(n, self.n_leaves, -1) * mixture.unsqueeze(2)
        outputs = (
            weighted_hidden.view(n, -1) @ self.leaf_output_weights
            + mixture @ self.leaf_output_biases
        )
        if self.master_hidden_weights.shape[1]:
            master_hidden = self._activate(X @ self.master_hidden_weights + self.master_hidden_biases)
            outputs = outputs + master_hidden @ self.master_output_weights
        outputs = outputs + self.master_output_biases
        return SoftForward(outputs, right, leaf_probabilities, hard_leaves)

    def to_arrays(self):
        """Export the weights as the validated NumPy arrays that every inference backend reads."""
        n_leaves, depth = self.n_leaves, self.depth

        def numpy(t):
            return t.detach().to("cpu", torch.float32).numpy()

        d = self.node_weights.shape[1]
        o = self.master_output_biases.shape[0]
        return FFFArrays(
            depth,
            self.activation,
            node_weights=numpy(self.node_weights),
            node_biases=numpy(self.node_biases),
            leaf_hidden_weights=numpy(self.leaf_hidden_weights)
            .reshape(d, n_leaves, -1)
            .transpose(1, 0, 2),
            leaf_hidden_biases=numpy(self.leaf_hidden_biases).reshape(n_leaves, -1),
            leaf_output_weights=numpy(self.leaf_output_weights).reshape(n_leaves, -1, o),
            leaf_output_biases=numpy(self.leaf_output_biases),
            master_hidden_weights=numpy(self.master_hidden_weights),
            master_hidden_biases=numpy(self.master_hidden_biases),
            master_output_weights=numpy(self.master_output_weights),
            master_output_biases=numpy(self.master_output_biases),
        )

    @torch.no_grad()
    def load_arrays(self, arrays):
        """Copy the weights of ``arrays`` (an :class:`FFFArrays`) into this module."""
        n_leaves = self.n_leaves
        d = arrays.n_features

        def copy(param, value):
            param.copy_(torch.as_tensor(np.array(value)).reshape(param.shape))

        copy(self.node_weights, arrays.node_weights)
        copy(self.node_biases, arrays.node_biases)
        copy(self.leaf_hidden_weights, arrays.leaf_hidden_weights.transpose(1, 0, 2).reshape(d, -1))
        copy(self.leaf_hidden_biases, arrays.leaf_hidden_biases)
        copy(self.leaf_output_weights, arrays.leaf_output_weights.reshape(n_leaves * arrays.leaf_width, -1))
        copy(self.leaf_output_biases, arrays.leaf_output_biases)
        copy(self.master_hidden_weights, arrays.master_hidden_weights)
        copy(self.master_hidden_biases, arrays.master_hidden_biases)
        copy(self.master_output_weights, arrays.master_output_weights)
        copy(self.master_output_biases, arrays.master_output_biases)


def load_balancing_loss(leaf_probabilities, hard_leaves):
    """Switch-Transformer balance loss ``n_leaves * sum_j f_j * P_j``; 1 when leaves are even.

    ``f_j`` is the fraction of the batch whose hard leaf is ``j`` (no gradient), ``P_j`` the
    batch mean of the soft probability of reaching leaf ``j``.
    """
    n, n_leaves = leaf_probabilities.shape
    fraction = torch.bincount(hard_leaves, minlength=n_leaves).to(leaf_probabilities.dtype) / n
    return n_leaves * (fraction * leaf_probabilities.mean(dim=0)).sum()
