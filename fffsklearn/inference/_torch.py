"""Hard-routed inference in torch, on any torch device: the CUDA path of the estimators.

Same rule as every backend: the input cast to float32, node logits summed in float64, right
iff > 0. Rows are routed level by level for the whole batch (one gather of node rows per
level), then each row's leaf is evaluated with gathered batched products; both run in
sub-chunks whose temporary tensors stay within a fixed memory budget.
"""

import weakref

import numpy as np
import torch

from .._activations import torch_activation

# Bytes of the largest temporary tensor (gathered node rows or leaf weights) per sub-chunk.
_TEMPORARY_BUDGET = 1 << 27

# Weights already on a device, per fitted model: converting them costs a host-to-device copy.
_device_weights = weakref.WeakKeyDictionary()


def _weights(arrays, device):
    per_device = _device_weights.setdefault(arrays, {})
    key = str(device)
    if key not in per_device:
        def tensor(name, dtype=torch.float32):
            return torch.from_numpy(np.array(getattr(arrays, name))).to(device, dtype)

        per_device[key] = {
            "node_weights": tensor("node_weights", torch.float64),
            "node_biases": tensor("node_biases", torch.float64),
            **{name: tensor(name) for name in arrays.ARRAY_NAMES[2:]},
        }
    return per_device[key]


@torch.no_grad()
def forward(arrays, X, device, with_outputs=True):
    """Raw outputs and leaves of ``X`` (an array, or a torch tensor) computed on ``device``.

    Returns
    -------
    outputs : ndarray of shape (n_samples, n_outputs), float32, or None
    leaves : ndarray of shape (n_samples,), int64
    """
    device = torch.device(device)
    w = _weights(arrays, device)
    if isinstance(X, torch.Tensor):  # already where it should be (benchmarks, pipelines on GPU)
        x = X.to(device, torch.float32)
    else:
        x = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        if device.type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
    n, d = x.shape
    width = max(arrays.leaf_width * 4, 8)  # bytes per feature of the largest gather below
    step = max(1, _TEMPORARY_BUDGET // (d * width))
    leaves = torch.empty(n, dtype=torch.long, device=device)
    outputs = torch.empty(n, arrays.n_outputs, device=device) if with_outputs else None
    activate, _, _ = torch_activation(arrays.activation)
    for start in range(0, n, step):
        rows = x[start : start + step]
        node = torch.zeros(rows.shape[0], dtype=torch.long, device=device)
        rows64 = rows.double()
        for _ in range(arrays.depth):
            logits = (rows64 * w["node_weights"][node]).sum(1) + w["node_biases"][node]
            node = 2 * node + 1 + (logits > 0).long()
        leaf = node - (arrays.n_leaves - 1)
        leaves[start : start + step] = leaf
        if not with_outputs:
            continue
        hidden = torch.bmm(rows.unsqueeze(1), w["leaf_hidden_weights"][leaf]).squeeze(1)
        hidden = activate(hidden + w["leaf_hidden_biases"][leaf])
        out = torch.bmm(hidden.unsqueeze(1), w["leaf_output_weights"][leaf]).squeeze(1)
        out = out + w["leaf_output_biases"][leaf]
        if arrays.master_leaf_width:
            master = activate(rows @ w["master_hidden_weights"] + w["master_hidden_biases"])
            out = out + master @ w["master_output_weights"]
        outputs[start : start + step] = out + w["master_output_biases"]
    return (
        None if outputs is None else outputs.cpu().numpy(),
        leaves.cpu().numpy(),
    )
