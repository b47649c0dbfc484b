"""The path-sparse training forward of benchmarks/bench_sparse_training.py (research, not in
the API): what the model quality page says of it holds."""

import importlib.util
from pathlib import Path

import pytest
import torch

from fffsklearn._network import FFFNetwork


def _path_sparse_network_class():
    path = Path(__file__).parents[1] / "benchmarks" / "bench_sparse_training.py"
    spec = importlib.util.spec_from_file_location("bench_sparse_training", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PathSparseNetwork


@pytest.mark.parametrize("depth", [1, 3, 5])
def test_path_sparse_training_forward_is_the_hard_model(depth):
    PathSparseNetwork = _path_sparse_network_class()
    full = FFFNetwork(6, 3, depth, 4, 2, "tanh", random_state=0).double()
    sparse = PathSparseNetwork(6, 3, depth, 4, 2, "tanh", random_state=0)
    sparse = sparse.double()
    X = torch.randn(50, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    full.train(), sparse.train()
    expected = full.soft_forward(X, straight_through=True)
    got = sparse.soft_forward(X, straight_through=True)
    torch.testing.assert_close(got.outputs, expected.outputs)
    assert torch.equal(got.hard_one_hot, expected.hard_one_hot)
    # While hardening (routing frozen) each row trains its hard leaf only.
    hardening = sparse.soft_forward(X, straight_through=False)
    torch.testing.assert_close(hardening.outputs, expected.outputs)
    expected.outputs.sum().backward()
    got.outputs.sum().backward()
    # The leaves get the gradients of full training: only the hard leaf is in the output.
    torch.testing.assert_close(sparse.leaf_hidden_weights.grad, full.leaf_hidden_weights.grad)
    torch.testing.assert_close(sparse.leaf_output_weights.grad, full.leaf_output_weights.grad)
    if depth == 1:  # one level: the sibling leaf is the only other leaf, so nothing is dropped
        torch.testing.assert_close(sparse.node_weights.grad, full.node_weights.grad)
    else:
        assert not torch.allclose(sparse.node_weights.grad, full.node_weights.grad)
