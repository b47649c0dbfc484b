import numpy as np
import pytest

from fffsklearn import FFFArrays


def random_arrays(rng, depth, n_features, leaf_width, master_leaf_width, n_outputs, activation):
    """A random, valid FFF model built directly as arrays (no training)."""
    n_leaves = 2**depth

    def weights(*shape):
        fan_in = shape[-2] if len(shape) > 1 else 1
        return (rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(np.float32)

    return FFFArrays(
        depth,
        activation,
        node_weights=weights(n_leaves - 1, n_features),
        node_biases=weights(n_leaves - 1),
        leaf_hidden_weights=weights(n_leaves, n_features, leaf_width),
        leaf_hidden_biases=weights(n_leaves, leaf_width),
        leaf_output_weights=weights(n_leaves, leaf_width, n_outputs),
        leaf_output_biases=weights(n_leaves, n_outputs),
        master_hidden_weights=weights(n_features, master_leaf_width),
        master_hidden_biases=weights(master_leaf_width),
        master_output_weights=weights(master_leaf_width, n_outputs),
        master_output_biases=weights(n_outputs),
    )


@pytest.fixture
def rng():
    return np.random.default_rng(0)
