"""Hard-routed inference in NumPy: the reference every other backend is tested against.

Inputs are cast to float32, as the weights are (as scikit-learn's trees do with their
thresholds). Node logits are accumulated in float64 from those float32 values, which every
backend does too: a float32 product is exact in float64, so backends that sum in a different
order still agree on the sign of the logit except within about 1e-16 of a node's boundary.
"""

import numpy as np

from .._activations import NUMPY_ACTIVATIONS


def route(arrays, X):
    """Leaf index of each row of float32 ``X`` (hard routing: right iff logit > 0)."""
    n = X.shape[0]
    node = np.zeros(n, dtype=np.intp)
    if arrays.depth == 0:
        return node
    X64 = X.astype(np.float64)
    weights64 = arrays.node_weights.astype(np.float64)
    biases64 = arrays.node_biases.astype(np.float64)
    for _ in range(arrays.depth):
        logits = np.einsum("ij,ij->i", X64, weights64[node]) + biases64[node]
        node = 2 * node + 1 + (logits > 0)
    return node - (arrays.n_leaves - 1)


def forward(arrays, X):
    """Raw outputs and leaves of float32 ``X``.

    Returns
    -------
    outputs : ndarray of shape (n_samples, n_outputs), float32
    leaves : ndarray of shape (n_samples,), intp
    """
    leaves = route(arrays, X)
    activate = NUMPY_ACTIVATIONS[arrays.activation]
    outputs = np.empty((X.shape[0], arrays.n_outputs), dtype=np.float32)
    order = np.argsort(leaves, kind="stable")
    starts = np.searchsorted(leaves[order], np.arange(arrays.n_leaves + 1))
    for leaf in np.flatnonzero(np.diff(starts)):
        rows = order[starts[leaf] : starts[leaf + 1]]
        hidden = activate(
            X[rows] @ arrays.leaf_hidden_weights[leaf] + arrays.leaf_hidden_biases[leaf]
        )
        outputs[rows] = hidden @ arrays.leaf_output_weights[leaf] + arrays.leaf_output_biases[leaf]
    if arrays.master_leaf_width:
        master = activate(X @ arrays.master_hidden_weights + arrays.master_hidden_biases)
        outputs += master @ arrays.master_output_weights
    outputs += arrays.master_output_biases
    return outputs, leaves
