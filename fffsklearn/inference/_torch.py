"""Hard-routed inference in torch, on any torch device: the CUDA path of the estimators.

Same rule as every backend: the input cast to float32, node logits summed in float64, right
iff > 0. The logits of the first levels' nodes (up to ``_DENSE_ROUTING_NODES``) come from one
float64 matrix product, those of deeper levels from the row's own node gathered per level.
The leaves are then evaluated as batched products over tiles of rows sorted by leaf: each
tile holds rows of one leaf and multiplies them by that leaf's weights. Rows are processed in
sub-chunks whose temporary tensors stay within a fixed memory budget.

Gathering each row's node and leaf weights instead moves a copy of a leaf per row, more
memory traffic than the dense twin of the training width needs.
"""

import weakref

import numpy as np
import torch

from .._activations import torch_activation

# Bytes of a sub-chunk's largest temporaries (its rows in float64, the leaf-sorted tiles, the
# weights gathered per tile).
_TEMPORARY_BUDGET = 1 << 29

# Nodes whose logits one matrix product computes for every row (the first levels, 2**k - 1
# nodes). Its float64 arithmetic per row grows with the nodes it covers; gathering each
# row's node weights instead moves d float64 values per row and level, whatever the width.
_DENSE_ROUTING_NODES = 255

# Rows of a tile, at most: fewer rows per leaf get smaller tiles, so that padding each leaf
# to whole tiles at most doubles the rows.
_TILE_ROWS = 256

# Weights already on a device, per fitted model: converting them costs a host-to-device copy.
_device_weights = weakref.WeakKeyDictionary()


def device_weights(arrays, device, node_dtype):
    """The model's arrays as tensors on ``device``, float32 but for the routing nodes'
    ``node_dtype``; cached per model, device and node precision."""
    per_model = _device_weights.setdefault(arrays, {})
    key = str(device), node_dtype
    if key not in per_model:
        def tensor(name, dtype=torch.float32):
            return torch.from_numpy(np.array(getattr(arrays, name))).to(device, dtype)

        per_model[key] = {
            "node_weights": tensor("node_weights", node_dtype),
            "node_biases": tensor("node_biases", node_dtype),
            **{name: tensor(name) for name in arrays.ARRAY_NAMES[2:]},
        }
    return per_model[key]


def forward(arrays, X, device, with_outputs=True, tensors_forward=None):
    """Raw outputs and leaves of ``X`` (an array, or a torch tensor) computed on ``device``
    by ``tensors_forward`` (default: this backend's :func:`forward_tensors`).

    Returns
    -------
    outputs : ndarray of shape (n_samples, n_outputs), float32, or None
    leaves : ndarray of shape (n_samples,), int64
    """
    device = torch.device(device)
    if isinstance(X, torch.Tensor):  # already where it should be (benchmarks, pipelines on GPU)
        x = X.to(device, torch.float32)
    else:
        # A copy only where X is not a writable C-ordered float32 array (torch refuses to wrap
        # read-only memory).
        x = torch.from_numpy(np.require(X, np.float32, ["C", "W"]))
        if device.type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
    outputs, leaves = (tensors_forward or forward_tensors)(arrays, x, with_outputs)
    return None if outputs is None else outputs.cpu().numpy(), leaves.cpu().numpy()


@torch.no_grad()
def forward_tensors(arrays, x, with_outputs=True):
    """:func:`forward` of a float32 tensor ``x``, on its device, with the results left there:
    the device's work alone, without the copies between host and device.

    Returns
    -------
    outputs : tensor of shape (n_samples, n_outputs), float32, or None
    leaves : tensor of shape (n_samples,), int64
    """
    w = device_weights(arrays, x.device, torch.float64)
    n, d = x.shape
    step = max(1, _TEMPORARY_BUDGET // (8 * max(d, 1)))
    leaves = torch.empty(n, dtype=torch.long, device=x.device)
    outputs = torch.empty(n, arrays.n_outputs, device=x.device) if with_outputs else None
    for start in range(0, n, step):
        rows = x[start : start + step]
        leaf = _route(rows, w, arrays.depth)
        leaves[start : start + step] = leaf
        if with_outputs:
            outputs[start : start + step] = _evaluate(rows, leaf, w, arrays)
    return outputs, leaves


def _route(rows, w, depth):
    """The leaf of every row: a float64 product for the first levels, gathers below."""
    node = torch.zeros(rows.shape[0], dtype=torch.long, device=rows.device)
    if not depth:
        return node
    rows64 = rows.double()
    dense = min(2**depth - 1, _DENSE_ROUTING_NODES)
    logits = torch.addmm(w["node_biases"][:dense], rows64, w["node_weights"][:dense].T)
    for level in range(depth):
        if 2 ** (level + 1) - 1 <= dense:
            logit = logits.gather(1, node.unsqueeze(1)).squeeze(1)
        else:
            logit = (rows64 * w["node_weights"][node]).sum(1) + w["node_biases"][node]
        node = 2 * node + 1 + (logit > 0).long()
    return node - (2**depth - 1)


def _evaluate(rows, leaf, w, arrays):
    """Raw outputs of ``rows``, each through its ``leaf`` and the master leaf.

    Rows are sorted by leaf and laid out in tiles of ``tile`` rows, each leaf's rows padded
    with zero rows to whole tiles; a batched product multiplies every tile by its leaf's
    weights, and the outputs are read back from the rows' slots.
    """
    n, d = rows.shape
    n_leaves = arrays.n_leaves
    tile = 1 << max(0, min(_TILE_ROWS.bit_length() - 1, (n // n_leaves).bit_length() - 1))
    counts = torch.bincount(leaf, minlength=n_leaves)
    tiles_per_leaf = (counts + tile - 1) // tile
    first_tile = torch.cumsum(tiles_per_leaf, 0) - tiles_per_leaf
    first_row = torch.cumsum(counts, 0) - counts
    order = torch.argsort(leaf)
    sorted_leaf = leaf[order]
    rank = torch.arange(n, device=rows.device) - first_row[sorted_leaf]
    slot = torch.empty_like(order)
    slot[order] = first_tile[sorted_leaf] * tile + rank
    n_tiles = int(tiles_per_leaf.sum())
    tile_leaf = torch.repeat_interleave(
        torch.arange(n_leaves, device=rows.device), tiles_per_leaf, output_size=n_tiles
    )
    tiled = rows.new_zeros(n_tiles * tile, d).index_copy_(0, slot, rows).view(n_tiles, tile, d)
    activate, _, _ = torch_activation(arrays.activation)
    out = torch.empty(n_tiles, tile, arrays.n_outputs, device=rows.device)
    # Tiles at a time whose gathered leaf weights stay within the budget.
    group = max(1, _TEMPORARY_BUDGET // (4 * d * max(arrays.leaf_width, 1)))
    for first in range(0, n_tiles, group):
        tiles = slice(first, first + group)
        leaves = tile_leaf[tiles]
        hidden = torch.baddbmm(w["leaf_hidden_biases"][leaves].unsqueeze(1), tiled[tiles],
                               w["leaf_hidden_weights"][leaves])
        torch.baddbmm(w["leaf_output_biases"][leaves].unsqueeze(1), activate(hidden),
                      w["leaf_output_weights"][leaves], out=out[tiles])
    outputs = out.view(-1, arrays.n_outputs)[slot]
    if arrays.master_leaf_width:
        master = activate(torch.addmm(w["master_hidden_biases"], rows,
                                      w["master_hidden_weights"]))
        outputs.addmm_(master, w["master_output_weights"])
    return outputs.add_(w["master_output_biases"])
