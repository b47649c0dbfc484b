"""The training network's hand-written backward passes against autograd of the plain formulas."""

import numpy as np
import pytest
import torch

from fffsklearn._arrays import ACTIVATIONS
from fffsklearn import _network
from fffsklearn._network import FFFNetwork, _SoftForwardFunction

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


def _plain_soft_forward(network, X, swap, straight_through):
    """The soft forward written as the formulas, for autograd to differentiate."""
    depth, n = network.depth, X.shape[0]
    (node_weights, node_biases, hidden_weights, hidden_biases, output_weights, output_biases,
     master_hidden_weights, master_hidden_biases, master_output_weights,
     master_output_biases) = network.parameters_in_forward_order()
    logits = X @ node_weights.T + node_biases
    right = torch.sigmoid(logits)
    if swap is not None:
        right = torch.where(swap, 1 - right, right)
    probabilities = _plain_path_products(right, depth)
    hard = _plain_path_products((logits.detach() > 0).to(X.dtype), depth)
    mixture = hard + probabilities - probabilities.detach() if straight_through else probabilities
    activate = _PLAIN_ACTIVATIONS[network.activation]
    hidden = activate(X @ hidden_weights + hidden_biases).view(n, network.n_leaves, -1)
    leaf_outputs = torch.einsum(
        "nlw,olw->nlo", hidden, output_weights.view(-1, network.n_leaves, hidden.shape[2])
    ) + output_biases
    outputs = (mixture.unsqueeze(2) * leaf_outputs).sum(1) + master_output_biases
    if master_hidden_weights.shape[1]:
        outputs = outputs + activate(X @ master_hidden_weights + master_hidden_biases) @ (
            master_output_weights
        )
    return outputs, probabilities, hard


def _random_network(depth, activation, master_leaf_width, seed=0):
    network = FFFNetwork(5, 2, depth, 3, master_leaf_width, activation, random_state=seed).double()
    with torch.no_grad():  # routing logits of all sizes, and some rows on a boundary
        network.node_weights.mul_(3.0)
    return network


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("depth", [0, 1, 3])
@pytest.mark.parametrize("straight_through", [True, False])
@pytest.mark.parametrize("leak", [False, True])
def test_soft_forward_and_its_gradient_match_autograd_of_the_formulas(
    activation, depth, straight_through, leak
):
    network = _random_network(depth, activation, master_leaf_width=0 if leak else 2)
    generator = torch.Generator().manual_seed(1)
    X = torch.randn(7, 5, dtype=torch.float64, generator=generator)
    swap = torch.rand(7, 2**depth - 1, generator=generator) < 0.3 if leak else None
    parameters = network.parameters_in_forward_order()
    if not network.master_output_biases.requires_grad:
        parameters = parameters[:-1]  # no master leaf: its zero bias is a constant

    def fused():
        outputs, probabilities, _, hard = _SoftForwardFunction.apply(
            X, *network.parameters_in_forward_order(), swap, straight_through, activation
        )
        return outputs, probabilities

    outputs, probabilities, hard = _plain_soft_forward(network, X, swap, straight_through)
    fused_outputs, fused_probabilities = fused()
    torch.testing.assert_close(fused_outputs, outputs)
    torch.testing.assert_close(fused_probabilities, probabilities)
    *_, fused_hard = _SoftForwardFunction.apply(
        X, *network.parameters_in_forward_order(), swap, straight_through, activation
    )
    torch.testing.assert_close(fused_hard, hard)
    # Both outputs carry gradient: the data loss and the load-balancing loss.
    weights = torch.randn(2, generator=generator, dtype=torch.float64)

    def loss():
        outputs, probabilities = fused()
        return (outputs * weights).sum() + (probabilities**2).sum()

    def plain_loss():
        outputs, probabilities, _ = _plain_soft_forward(network, X, swap, straight_through)
        return (outputs * weights).sum() + (probabilities**2).sum()

    options = dict(allow_unused=True, materialize_grads=True)  # depth 0 has no routing
    expected = torch.autograd.grad(plain_loss(), parameters, **options)
    got = torch.autograd.grad(loss(), parameters, **options)
    for index, (e, g) in enumerate(zip(expected, got)):
        torch.testing.assert_close(g, e, msg=f"gradient of parameter {index}")


def test_every_row_has_one_hard_leaf_and_a_tie_goes_left():
    network = _random_network(3, "relu", 2)
    X = torch.randn(9, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        network.node_weights[:, 0] = 0.0
        network.node_biases.zero_()
    X[0] = 0.0  # every logit is exactly 0
    hard = network.soft_forward(X, straight_through=False).hard_one_hot
    assert torch.all(hard.sum(1) == 1) and hard[0, 0] == 1
    expected = _plain_path_products(
        (X @ network.node_weights.T + network.node_biases > 0).double(), 3
    )
    torch.testing.assert_close(hard, expected)


def test_saturated_routing_gives_finite_gradients():
    # Probabilities of exactly 0 or 1 (logits of +-800) must not make the gradient NaN.
    network = _random_network(3, "tanh", 2)
    with torch.no_grad():
        network.node_biases[0] = -800.0
        network.node_biases[1:] = 800.0
    X = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    result = network.soft_forward(X, straight_through=True)
    (result.outputs.sum() + result.leaf_probabilities.sum()).backward()
    for parameter in network.parameters_in_forward_order():
        if parameter.grad is not None:
            assert torch.isfinite(parameter.grad).all()
    assert torch.isfinite(result.leaf_probabilities).all()


def test_straight_through_forward_is_the_hard_model_and_trains_the_routing():
    network = FFFNetwork(7, 3, 3, 4, 2, "tanh", random_state=0).double()
    X = torch.randn(50, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    network.eval()
    soft = network.soft_forward(X, straight_through=False)
    network.train()
    hard = network.soft_forward(X, straight_through=True)
    # The hard model: each row's own leaf, and its routing gets gradients through the soft
    # path probabilities.
    one_hot = hard.hard_one_hot
    sharp = FFFNetwork(7, 3, 3, 4, 2, "tanh", random_state=0).double()
    with torch.no_grad():
        sharp.node_weights.mul_(1e6)
        sharp.node_biases.mul_(1e6)
    sharp_soft = sharp.soft_forward(X, straight_through=False)
    torch.testing.assert_close(hard.outputs, sharp_soft.outputs)
    assert torch.equal(one_hot, soft.hard_one_hot)
    hard.outputs.sum().backward()
    assert network.node_weights.grad.abs().sum() > 0


@pytest.mark.skipif(_network._routing is None, reason="the C routing extension is not built")
@pytest.mark.parametrize("depth", [0, 1, 3, 6, 9])
@pytest.mark.parametrize("leak", [False, True])
def test_compiled_routing_matches_the_torch_routing(depth, leak):
    generator = torch.Generator().manual_seed(depth)
    n, n_nodes = 300, 2**depth - 1
    # Logits of every size, saturated ones (+-60, +-800) and exact ties (0 goes left).
    logits = torch.randn(n_nodes, n, generator=generator) * 4  # (rows, nodes) as a strided view
    logits = logits.T
    logits[:20] *= 200.0
    logits[20:30] = 0.0
    swap = torch.rand(n, n_nodes, generator=generator) < 0.3 if leak else None
    compiled = _network._compiled_path_probabilities(logits, swap)
    expected = _network._torch_path_probabilities(logits, swap)
    for got, want, name in zip(compiled, expected, ("leaf", "hard", "right")):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
    assert torch.equal(compiled[1], expected[1])
    probabilities, _, right = expected
    for grad in (torch.randn(n, 2**depth, generator=generator), torch.randn(2**depth)):
        torch.testing.assert_close(
            _network._compiled_path_gradients(grad, probabilities, right, swap),
            _network._torch_path_gradients(grad, probabilities, right, swap),
            rtol=1e-4, atol=1e-5,
        )


@pytest.mark.skipif(_network._routing is None, reason="the C routing extension is not built")
def test_compiled_routing_refuses_inconsistent_buffers():
    logits = torch.zeros(4, 3)
    outputs = (torch.empty(4, 4), torch.empty(4, 4), torch.empty(4, 3))
    with pytest.raises(ValueError, match="2\\*\\*depth - 1"):
        _network._routing.path_probabilities(
            torch.zeros(4, 5).numpy(), None, *(o.numpy() for o in outputs)
        )
    with pytest.raises(ValueError, match="right_out"):
        _network._routing.path_probabilities(
            logits.numpy(), None, outputs[0].numpy(), outputs[1].numpy(),
            torch.empty(4, 2).numpy(),
        )
    with pytest.raises(ValueError, match="swap"):
        _network._routing.path_probabilities(
            logits.numpy(), torch.zeros(4, 3).numpy(), *(o.numpy() for o in outputs)
        )
    with pytest.raises(ValueError, match="grad_probabilities"):
        _network._routing.path_gradients(
            torch.zeros(4, 4, dtype=torch.float64).numpy(), outputs[0].numpy(),
            outputs[2].numpy(), None, torch.empty(4, 3).numpy(),
        )
