"""The training network's hand-written backward passes against autograd of the plain formulas."""

import numpy as np
import pytest
import torch

from fffsklearn._arrays import ACTIVATIONS
from fffsklearn._network import FFFNetwork, _MixedLeaves, _PathProducts

_PLAIN_ACTIVATIONS = {
    "relu": torch.relu, "tanh": torch.tanh, "logistic": torch.sigmoid, "identity": lambda t: t,
}


def _plain_path_products(right, depth):
    n = right.shape[0]
    products = right.new_ones(n, 1)
    for level in range(depth):
        first = 2**level - 1
        level_right = right[:, first : 2 * first + 1]
        products = torch.stack((products * (1 - level_right), products * level_right), 2)
        products = products.reshape(n, -1)
    return products


@pytest.mark.parametrize("depth", [0, 1, 2, 5])
def test_path_products_and_their_gradient_match_the_plain_products(depth):
    generator = torch.Generator().manual_seed(depth)
    logits = torch.randn(9, 2**depth - 1, dtype=torch.float64, generator=generator)
    logits[0, :] = 0.0  # on every boundary: the hard path goes left
    logits.requires_grad_(True)
    right = torch.sigmoid(logits)
    probabilities, hard = _PathProducts.apply(right, logits.detach() > 0)
    torch.testing.assert_close(probabilities, _plain_path_products(right, depth))
    expected_leaf = _plain_path_products((logits.detach() > 0).double(), depth).argmax(1)
    np.testing.assert_array_equal(hard.argmax(1), expected_leaf)
    assert torch.all(hard.sum(1) == 1) and hard[0, 0] == 1
    if depth:
        # Saturated probabilities (exactly 0 or 1) must not make the gradient NaN.
        saturated = torch.tensor([[-800.0] + [0.3] * (2**depth - 2)], dtype=torch.float64)
        torch.autograd.gradcheck(
            lambda z: _PathProducts.apply(torch.sigmoid(z), z > 0)[0], (logits,)
        )
        grad = torch.autograd.grad(
            _PathProducts.apply(torch.sigmoid(saturated.requires_grad_()), saturated > 0)[0]
            .sum(), saturated)[0]
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("routing_trains", [True, False])
def test_mixed_leaves_gradient_matches_autograd_of_the_formula(activation, routing_trains):
    generator = torch.Generator().manual_seed(0)
    n, d, n_leaves, width, n_outputs = 6, 5, 4, 3, 2

    def random(*shape, grad=True):
        return torch.randn(*shape, dtype=torch.float64, generator=generator).requires_grad_(grad)

    X = random(n, d, grad=False)
    hidden_weights, hidden_biases = random(d, n_leaves * width), random(n_leaves * width)
    mixture = torch.softmax(random(n, n_leaves, grad=False), 1).requires_grad_(routing_trains)
    output_weights, output_biases = random(n_outputs, n_leaves * width), random(n_leaves, n_outputs)
    inputs = (X, hidden_weights, hidden_biases, mixture, output_weights, output_biases)

    def plain(X, hidden_weights, hidden_biases, mixture, output_weights, output_biases):
        hidden = _PLAIN_ACTIVATIONS[activation](X @ hidden_weights + hidden_biases)
        leaf_outputs = torch.einsum(
            "nlw,olw->nlo", hidden.view(n, n_leaves, width),
            output_weights.view(n_outputs, n_leaves, width),
        ) + output_biases
        return (mixture.unsqueeze(2) * leaf_outputs).sum(1)

    outputs = _MixedLeaves.apply(*inputs, activation)
    torch.testing.assert_close(outputs, plain(*inputs))
    torch.autograd.gradcheck(lambda *args: _MixedLeaves.apply(*args, activation), inputs)


def test_straight_through_forward_is_the_hard_model_and_trains_the_routing():
    network = FFFNetwork(7, 3, 3, 4, 2, "tanh", torch.Generator().manual_seed(0)).double()
    X = torch.randn(50, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    network.eval()
    soft = network(X)
    network.train()
    hard = network(X, straight_through=True)
    # The hard model: each row's own leaf, and its routing gets gradients through the soft
    # path probabilities.
    one_hot = hard.hard_one_hot
    sharp = FFFNetwork(7, 3, 3, 4, 2, "tanh", torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        sharp.node_weights.mul_(1e6)
        sharp.node_biases.mul_(1e6)
    torch.testing.assert_close(hard.outputs, sharp(X).outputs)
    assert torch.equal(one_hot, soft.hard_one_hot)
    hard.outputs.sum().backward()
    assert network.node_weights.grad.abs().sum() > 0
