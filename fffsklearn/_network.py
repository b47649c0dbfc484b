"""The torch module of a fast feedforward network, used only while training.

The soft forward mixes every leaf by the probability of the path that leads to it; it is
vectorised over leaves (one GEMM for all leaf hidden layers, one for all leaf output layers)
and loops only over the ``depth`` levels of the tree.
"""

import math

import numpy as np
import torch
from torch import nn

from ._activations import torch_activation
from ._arrays import FFFArrays

class SoftForward:
    """What one soft forward pass computed: outputs and the routing quantities of the losses.

    ``hard_one_hot`` is the one-hot matrix (n_samples, n_leaves) of each row's hard leaf.
    """

    __slots__ = ("outputs", "right_probabilities", "leaf_probabilities", "hard_one_hot")

    def __init__(self, outputs, right_probabilities, leaf_probabilities, hard_one_hot):
        self.outputs = outputs
        self.right_probabilities = right_probabilities
        self.leaf_probabilities = leaf_probabilities
        self.hard_one_hot = hard_one_hot


class _MixedLeaves(torch.autograd.Function):
    """Every leaf MLP on every row, mixed per row: ``sum_j m_ij * (act(x W1_j + b1_j) W2_j + b2_j)``.

    The same function as autograd would build from the expression, with a hand-written
    backward that reuses its buffers: three temporaries of shape (rows, training width) per
    step where the autograd graph allocates seven. On a CPU, allocating and faulting in those
    temporaries is what most of a training step's time went to beyond the matrix products.
    """

    @staticmethod
    def forward(ctx, X, hidden_weights, hidden_biases, mixture, output_weights, output_biases,
                activation):
        n, n_leaves = mixture.shape
        _, activate_in_place, _ = torch_activation(activation)
        hidden = activate_in_place(torch.addmm(hidden_biases, X, hidden_weights))
        weighted = (hidden.view(n, n_leaves, -1) * mixture.unsqueeze(2)).view(n, -1)
        outputs = torch.addmm(mixture @ output_biases, weighted, output_weights.T)
        ctx.save_for_backward(X, hidden, weighted, mixture, output_weights, output_biases)
        ctx.activation = activation
        return outputs

    @staticmethod
    def backward(ctx, grad_outputs):
        X, hidden, weighted, mixture, output_weights, output_biases = ctx.saved_tensors
        n, n_leaves = mixture.shape
        grad_weighted = (grad_outputs @ output_weights).view(n, n_leaves, -1)
        grad_mixture = None
        if ctx.needs_input_grad[3]:
            grad_mixture = (grad_weighted * hidden.view(n, n_leaves, -1)).sum(dim=2)
            grad_mixture += grad_outputs @ output_biases.T
        _, _, activation_backward = torch_activation(ctx.activation)
        grad_hidden = activation_backward(
            grad_weighted.mul_(mixture.unsqueeze(2)).view(n, -1), hidden
        )
        return (
            None,
            X.T @ grad_hidden,
            grad_hidden.sum(dim=0),
            grad_mixture,
            grad_outputs.T @ weighted,
            mixture.T @ grad_outputs,
            None,
        )


class _PathProducts(torch.autograd.Function):
    """Path probabilities of every leaf, and the one-hot matrix of each row's hard leaf.

    A leaf's probability is the product over its path of the step taken at each node:
    ``right`` where the path goes right, ``1 - right`` where it goes left. Its hard indicator
    is the same product over the 0/1 decisions ``went_right``: 1 for the one path whose every
    step agrees with the sign of its logits. Both are built level by level from the root.

    The backward runs from the leaves up without dividing by a probability (which may be 0):
    with ``prefix(c)`` the product of the steps that lead to node ``c`` and ``D(v)`` the
    gradient-weighted sum over the leaves below ``v`` of the steps from ``v`` down,
    ``dL/d right_c = prefix(c) * (D(right child) - D(left child))`` and
    ``D(c) = (1 - right_c) * D(left child) + right_c * D(right child)``.
    """

    @staticmethod
    def forward(ctx, right, went_right):
        both = torch.stack((right, went_right.to(right.dtype)))
        products = both.new_ones(both.shape[:-1] + (1,))
        prefixes = []
        for first in (2**level - 1 for level in range(right.shape[1].bit_length())):
            level_right = both[..., first : 2 * first + 1]
            prefixes.append(products[0])
            # Children of local node j at the next level are 2j (left) and 2j + 1 (right).
            products = torch.stack(
                (products * (1 - level_right), products * level_right), dim=-1
            ).flatten(-2)
        ctx.save_for_backward(right, *prefixes)
        hard_one_hot = products[1]
        ctx.mark_non_differentiable(hard_one_hot)
        return products[0], hard_one_hot

    @staticmethod
    def backward(ctx, grad_probabilities, _):
        right, *prefixes = ctx.saved_tensors
        grad_right = torch.empty_like(right)
        below = grad_probabilities
        for level in reversed(range(len(prefixes))):
            first = 2**level - 1
            left_sum, right_sum = below.unflatten(-1, (-1, 2)).unbind(-1)
            difference = right_sum - left_sum
            torch.mul(prefixes[level], difference, out=grad_right[:, first : 2 * first + 1])
            below = left_sum + right[:, first : 2 * first + 1] * difference
        return grad_right, None


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
        self._activate, _, _ = torch_activation(activation)
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
        # Stored as (outputs, leaves * leaf_width), nn.Linear's layout: the products of the
        # training step then run with contiguous operands, measured 2 to 6 times faster.
        self.leaf_output_weights = nn.Parameter(uniform(l, n_leaves * l, o).T.contiguous())
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
        straight_through : bool
            If True, the outputs are those of each row's hard leaf, while gradients reach the
            routing neurons through the soft path probabilities.

        Returns
        -------
        SoftForward
        """
        logits = torch.addmm(self.node_biases, X, self.node_weights.T)
        right = torch.sigmoid(logits)
        if self.training and region_leak > 0 and self.depth > 0:
            swap = torch.rand(right.shape, generator=generator, device=X.device) < region_leak
            right = torch.where(swap, 1 - right, right)
        leaf_probabilities, hard_one_hot = _PathProducts.apply(right, logits.detach() > 0)
        mixture = leaf_probabilities
        if straight_through:
            # Forward through the hard leaf, backward through the soft path probabilities.
            mixture = hard_one_hot + (leaf_probabilities - leaf_probabilities.detach())
        outputs = _MixedLeaves.apply(
            X, self.leaf_hidden_weights, self.leaf_hidden_biases, mixture,
            self.leaf_output_weights, self.leaf_output_biases, self.activation,
        )
        if self.master_hidden_weights.shape[1]:
            master_hidden = self._activate(
                torch.addmm(self.master_hidden_biases, X, self.master_hidden_weights)
            )
            outputs = torch.addmm(outputs, master_hidden, self.master_output_weights)
        outputs = outputs + self.master_output_biases
        return SoftForward(outputs, right, leaf_probabilities, hard_one_hot)

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
            leaf_output_weights=numpy(self.leaf_output_weights).T.reshape(n_leaves, -1, o),
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
        copy(self.leaf_output_weights,
             arrays.leaf_output_weights.reshape(n_leaves * arrays.leaf_width, -1).T)
        copy(self.leaf_output_biases, arrays.leaf_output_biases)
        copy(self.master_hidden_weights, arrays.master_hidden_weights)
        copy(self.master_hidden_biases, arrays.master_hidden_biases)
        copy(self.master_output_weights, arrays.master_output_weights)
        copy(self.master_output_biases, arrays.master_output_biases)


def load_balancing_loss(leaf_probabilities, hard_one_hot):
    """Switch-Transformer balance loss ``n_leaves * sum_j f_j * P_j``; 1 when leaves are even.

    ``f_j`` is the fraction of the batch whose hard leaf is ``j`` (no gradient; ``hard_one_hot``
    is the one-hot matrix of :class:`SoftForward`), ``P_j`` the batch mean of the soft
    probability of reaching leaf ``j``.
    """
    n_leaves = leaf_probabilities.shape[1]
    return n_leaves * torch.dot(hard_one_hot.mean(dim=0), leaf_probabilities.mean(dim=0))
