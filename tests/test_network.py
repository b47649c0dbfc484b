"""The training network's hand-written backward passes against autograd of the plain formulas."""

import numpy as np
import pytest
import torch

from fffsklearn import _network
from fffsklearn._activations import torch_activation
from fffsklearn._arrays import ACTIVATIONS
from fffsklearn._network import FFFNetwork, _SoftForwardFunction
from fffsklearn.inference import _reference

needs_training_kernel = pytest.mark.skipif(
    _network._training_kernel is None, reason="the C training extension is not built"
)

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
     master_output_biases, input_projection) = network.parameters_in_forward_order()
    logits = X @ node_weights.T + node_biases
    right = torch.sigmoid(logits)
    if swap is not None:
        right = torch.where(swap, 1 - right, right)
    probabilities = _plain_path_products(right, depth)
    hard = _plain_path_products((logits.detach() > 0).to(X.dtype), depth)
    mixture = hard + probabilities - probabilities.detach() if straight_through else probabilities
    activate = _PLAIN_ACTIVATIONS[network.activation]
    leaf_input = X if input_projection is None else X @ input_projection
    hidden = activate(leaf_input @ hidden_weights + hidden_biases).view(n, network.n_leaves, -1)
    leaf_outputs = torch.einsum(
        "nlw,olw->nlo", hidden, output_weights.view(-1, network.n_leaves, hidden.shape[2])
    ) + output_biases
    outputs = (mixture.unsqueeze(2) * leaf_outputs).sum(1) + master_output_biases
    if master_hidden_weights.shape[1]:
        outputs = outputs + activate(leaf_input @ master_hidden_weights + master_hidden_biases) @ (
            master_output_weights
        )
    return outputs, probabilities, hard


def _random_network(depth, activation, master_leaf_width, seed=0, dtype=torch.float64,
                    projection_rank=None):
    network = FFFNetwork(5, 2, depth, 3, master_leaf_width, activation, random_state=seed,
                         projection_rank=projection_rank)
    network = network.to(dtype)
    with torch.no_grad():  # routing logits of all sizes, and some rows on a boundary
        network.node_weights.mul_(3.0)
    return network


# float64 runs the torch operations; float32 on the CPU the C extension (routing and, under
# straight-through routing, the hard leaf's layers) where it is built.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("depth", [0, 1, 3])
@pytest.mark.parametrize("straight_through", [True, False])
@pytest.mark.parametrize("leak", [False, True])
@pytest.mark.parametrize("projection_rank", [None, 3])
def test_soft_forward_and_its_gradients_match_autograd_of_the_formulas(
    activation, depth, straight_through, leak, dtype, projection_rank
):
    """The parameters' gradients and the rows' (a network used as a layer passes one on)."""
    network = _random_network(depth, activation, master_leaf_width=0 if leak else 2,
                              dtype=dtype, projection_rank=projection_rank)
    tolerance = {} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    generator = torch.Generator().manual_seed(1)
    X = torch.randn(7, 5, dtype=dtype, generator=generator).requires_grad_()
    swap = torch.rand(7, 2**depth - 1, generator=generator) < 0.3 if leak else None
    # Without a master leaf its zero bias is a constant; without a projection there is none.
    parameters = [X] + [p for p in network.parameters_in_forward_order()
                        if p is not None and p.requires_grad]

    def fused():
        outputs, probabilities, _, _ = _SoftForwardFunction.apply(
            X, *network.parameters_in_forward_order(), swap, straight_through, activation
        )
        return outputs, probabilities

    outputs, probabilities, hard = _plain_soft_forward(network, X, swap, straight_through)
    fused_outputs, fused_probabilities = fused()
    torch.testing.assert_close(fused_outputs, outputs, **tolerance)
    torch.testing.assert_close(fused_probabilities, probabilities, **tolerance)
    *_, fused_hard = _SoftForwardFunction.apply(
        X, *network.parameters_in_forward_order(), swap, straight_through, activation
    )
    torch.testing.assert_close(fused_hard, hard)
    # Both outputs carry gradient: the data loss and the load-balancing loss.
    weights = torch.randn(2, generator=generator, dtype=dtype)

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
        name = "the rows" if index == 0 else f"parameter {index - 1}"
        torch.testing.assert_close(g, e, msg=f"gradient of {name}", **tolerance)


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
        if parameter is not None and parameter.grad is not None:
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


@needs_training_kernel
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
    assert torch.equal(compiled[3], expected[1].argmax(dim=1))
    probabilities, _, right = expected
    for grad in (torch.randn(n, 2**depth, generator=generator), torch.randn(2**depth)):
        torch.testing.assert_close(
            _network._compiled_path_gradients(grad, probabilities, right, swap),
            _network._torch_path_gradients(grad, probabilities, right, swap),
            rtol=1e-4, atol=1e-5,
        )


@needs_training_kernel
def test_compiled_routing_refuses_inconsistent_buffers():
    logits = torch.zeros(4, 3)
    outputs = (torch.empty(4, 4), torch.empty(4, 4), torch.empty(4, 3),
               torch.empty(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="2\\*\\*depth - 1"):
        _network._training_kernel.path_probabilities(
            torch.zeros(4, 5).numpy(), None, *(o.numpy() for o in outputs)
        )
    with pytest.raises(ValueError, match="right_out"):
        _network._training_kernel.path_probabilities(
            logits.numpy(), None, outputs[0].numpy(), outputs[1].numpy(),
            torch.empty(4, 2).numpy(), outputs[3].numpy(),
        )
    with pytest.raises(ValueError, match="hard_leaves_out"):
        _network._training_kernel.path_probabilities(
            logits.numpy(), None, *(o.numpy() for o in outputs[:3]),
            torch.empty(4, dtype=torch.int32).numpy(),
        )
    with pytest.raises(ValueError, match="swap"):
        _network._training_kernel.path_probabilities(
            logits.numpy(), torch.zeros(4, 3).numpy(), *(o.numpy() for o in outputs)
        )
    with pytest.raises(ValueError, match="grad_probabilities"):
        _network._training_kernel.path_gradients(
            torch.zeros(4, 4, dtype=torch.float64).numpy(), outputs[0].numpy(),
            outputs[2].numpy(), None, torch.empty(4, 3).numpy(),
        )


def _hard_leaf_case(n, n_features, depth, leaf_width, activation, seed):
    """A network's tensors at one forward: rows (a strided view), hidden layer, hard leaves
    (every leaf used, and many rows on one leaf) and the outputs' gradient."""
    generator = torch.Generator().manual_seed(seed)
    network = FFFNetwork(n_features, 3, depth, leaf_width, 0, activation, random_state=seed)
    parameters = [p.detach() for p in network.parameters_in_forward_order()[:-1]]
    X = torch.randn(n_features, n, generator=generator).T
    _, activate_in_place, activation_backward = torch_activation(activation)
    hidden = activate_in_place(torch.addmm(parameters[3], X, parameters[2]))
    leaves = torch.randint(0, 2**depth, (n,), generator=generator)
    leaves[: 2**depth] = torch.arange(2**depth)
    leaves[n // 2 :] = 0
    grad_outputs = torch.randn(n, 3, generator=generator)
    return X, hidden, leaves, grad_outputs, parameters[4], parameters[5], activation_backward


@needs_training_kernel
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("leaf_width", [1, 3, 8, 16, 24, 32, 40])
@pytest.mark.parametrize("depth, n_features", [(0, 1), (2, 7), (5, 13)])
def test_compiled_hard_leaf_layers_match_the_dense_products(
    activation, leaf_width, depth, n_features
):
    # The leaf widths cover the C kernel's cases: unrolled for 8, 16 and 32, vectors of a
    # run-time width (24), and scalar loops (1, 3, 40); 7 and 13 features leave a remainder
    # after the kernel's groups of four.
    X, hidden, leaves, grad_outputs, weights, biases, activation_backward = _hard_leaf_case(
        300, n_features, depth, leaf_width, activation, seed=leaf_width + depth
    )
    one_hot = torch.nn.functional.one_hot(leaves, 2**depth).float()
    weighted = (hidden.view(300, 2**depth, -1) * one_hot.unsqueeze(2)).view(300, -1)
    torch.testing.assert_close(
        _network._compiled_hard_leaf_outputs(hidden, leaves, weights, biases),
        torch.addmm(one_hot @ biases, weighted, weights.T), rtol=1e-5, atol=1e-5,
    )
    for routing_trains in (True, False):
        got = _network._compiled_hard_leaf_gradients(
            X, hidden, leaves, grad_outputs, weights, biases, activation, routing_trains,
            pre_activation_gradients=True,
        )
        *expected, grad_hidden = _network._mixture_leaf_gradients(
            X, hidden, weighted, one_hot, grad_outputs, weights, biases, activation_backward,
            routing_trains,
        )
        # The kernel gives each row's hard-leaf block of the pre-activation gradient, the
        # only block that is not zero.
        expected.append(grad_hidden.view(300, 2**depth, -1)[torch.arange(300), leaves])
        for index, (g, e) in enumerate(zip(got, expected, strict=True)):
            if e is None:
                assert g is None
            else:
                torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5, msg=f"gradient {index}")


@needs_training_kernel
def test_compiled_hard_leaf_layers_refuse_inconsistent_buffers():
    X, hidden, leaves, grad_outputs, weights, biases, _ = _hard_leaf_case(
        20, 4, 2, 3, "relu", seed=0
    )
    kernel = _network._training_kernel
    outputs = torch.empty(20, 3)
    grads = [torch.empty(4, 12), torch.empty(12), torch.empty(3, 12), torch.empty(4, 3)]

    def gradients(leaves=leaves, hidden=hidden, activation=0, grads=grads, pre=None):
        kernel.hard_leaf_gradients(
            X.numpy(), hidden.numpy(), leaves.numpy(), grad_outputs.numpy(), weights.numpy(),
            activation, *(g.numpy() for g in grads), None, pre,
        )

    for bad_leaf in (-1, 4):
        bad = leaves.clone()
        bad[5] = bad_leaf
        with pytest.raises(ValueError, match="out of range"):
            kernel.hard_leaf_outputs(hidden.numpy(), bad.numpy(), weights.numpy(),
                                     biases.numpy(), outputs.numpy())
        with pytest.raises(ValueError, match="out of range"):
            gradients(leaves=bad)
    with pytest.raises(ValueError, match="hidden must be C-contiguous"):
        gradients(hidden=hidden.T.contiguous().T)
    with pytest.raises(ValueError, match="multiple of the number of leaves"):
        kernel.hard_leaf_outputs(torch.zeros(20, 13).numpy(), leaves.numpy(),
                                 torch.zeros(3, 13).numpy(), biases.numpy(), outputs.numpy())
    with pytest.raises(ValueError, match="activation code"):
        gradients(activation=len(ACTIVATIONS))
    with pytest.raises(ValueError, match="grad_output_weights_out"):
        gradients(grads=[*grads[:2], torch.empty(3, 11), grads[3]])
    with pytest.raises(ValueError, match="hard_leaves"):
        gradients(leaves=leaves.int())
    # The pre-activation gradients: one leaf's width per row, writable.
    for bad in (torch.empty(20, 4), torch.empty(19, 3), torch.empty(20, 3, dtype=torch.float64)):
        with pytest.raises(ValueError, match="grad_pre_activations_out"):
            gradients(pre=bad.numpy())
    read_only = torch.empty(20, 3).numpy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        gradients(pre=read_only)


def _first_layers(arrays):
    """The exported first layers of the leaves and the master leaf, side by side."""
    leaves = arrays.leaf_hidden_weights.transpose(1, 0, 2).reshape(arrays.n_features, -1)
    return np.concatenate((leaves, arrays.master_hidden_weights), axis=1)


@pytest.mark.parametrize("rank", [1, 3])
def test_input_projection_is_folded_into_the_exported_first_layers(rank):
    network = FFFNetwork(7, 3, 3, 4, 2, "tanh", random_state=0, projection_rank=rank)
    with torch.no_grad():  # trained away from the factorised start
        generator = torch.Generator().manual_seed(1)
        network.input_projection.add_(torch.randn(7, rank, generator=generator))
    arrays = network.to_arrays()
    assert np.linalg.matrix_rank(_first_layers(arrays), tol=1e-4) == rank
    X = np.random.default_rng(0).standard_normal((60, 7)).astype(np.float32)
    with torch.no_grad():
        expected = network.eval()(torch.from_numpy(X)).numpy()
    outputs, _ = _reference.forward(arrays, X)
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-5)
    # Loaded back into a projected network of the same rank, the arrays are reproduced.
    loaded = FFFNetwork(7, 3, 3, 4, 2, "tanh", random_state=5, projection_rank=rank)
    loaded.load_arrays(arrays)
    np.testing.assert_allclose(_first_layers(loaded.to_arrays()), _first_layers(arrays),
                               rtol=1e-4, atol=1e-5)


def test_a_full_rank_projection_starts_from_the_drawn_first_layers():
    plain = FFFNetwork(6, 2, 2, 4, 3, random_state=0)
    projected = FFFNetwork(6, 2, 2, 4, 3, random_state=0, projection_rank=64)
    assert projected.input_projection.shape == (6, 6)
    np.testing.assert_allclose(_first_layers(projected.to_arrays()),
                               _first_layers(plain.to_arrays()), atol=1e-6)
    smaller = FFFNetwork(6, 2, 2, 4, 3, random_state=0, projection_rank=2).to_arrays()
    # Truncated, the product keeps the drawn layers' norm.
    np.testing.assert_allclose(np.linalg.norm(_first_layers(smaller)),
                               np.linalg.norm(_first_layers(plain.to_arrays())), rtol=1e-5)


@needs_training_kernel
@pytest.mark.parametrize("leaf_width", [1, 3, 8, 16, 24])
@pytest.mark.parametrize("depth, rank", [(0, 1), (2, 5), (4, 32)])
def test_compiled_hard_leaf_input_gradient_is_each_row_block_times_its_leaf(
    depth, rank, leaf_width
):
    generator = torch.Generator().manual_seed(leaf_width + depth)
    n, n_leaves = 50, 2**depth
    grad_hidden = torch.randn(n, leaf_width, generator=generator)
    leaves = torch.randint(0, n_leaves, (n,), generator=generator)
    weights = torch.randn(rank, n_leaves * leaf_width, generator=generator)
    blocks = weights.view(rank, n_leaves, leaf_width)[:, leaves]  # (rank, rows, leaf width)
    expected = torch.einsum("nk,qnk->nq", grad_hidden, blocks)
    got = _network._compiled_hard_leaf_input_gradient(grad_hidden, leaves, weights)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@needs_training_kernel
def test_compiled_hard_leaf_input_gradient_refuses_inconsistent_buffers():
    kernel = _network._training_kernel
    grad_hidden, weights, out = torch.zeros(6, 3), torch.zeros(4, 12), torch.empty(6, 4)
    leaves = torch.zeros(6, dtype=torch.int64)

    def call(grad_hidden=grad_hidden, leaves=leaves, weights=weights, out=out):
        kernel.hard_leaf_input_gradients(grad_hidden.numpy(), leaves.numpy(), weights.numpy(),
                                         out.numpy())

    with pytest.raises(ValueError, match="multiple"):
        call(weights=torch.zeros(4, 13))
    with pytest.raises(ValueError, match="out of range"):
        call(leaves=torch.full((6,), 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="hard_leaves"):
        call(leaves=leaves[:5])
    with pytest.raises(ValueError, match="out"):
        call(out=torch.empty(6, 5))


def test_a_projection_started_on_given_directions_spans_them():
    plain = FFFNetwork(6, 2, 2, 4, 3, random_state=0)
    directions = np.linalg.qr(np.random.default_rng(0).standard_normal((6, 4)))[0]
    started = FFFNetwork(6, 2, 2, 4, 3, random_state=0, projection_rank=2,
                         projection_directions=directions)
    first_layers = _first_layers(started.to_arrays())
    # The product lies in the span of the first 2 directions, at the drawn layers' norm.
    kept = directions[:, :2]
    np.testing.assert_allclose(first_layers, kept @ (kept.T @ first_layers), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(first_layers),
                               np.linalg.norm(_first_layers(plain.to_arrays())), rtol=1e-5)
    # It is the drawn layers' own component there, not any matrix of that span.
    drawn = _first_layers(plain.to_arrays())
    component = kept @ (kept.T @ drawn)
    np.testing.assert_allclose(first_layers / np.linalg.norm(first_layers),
                               component / np.linalg.norm(component), atol=1e-6)
