"""Hard-routed inference as two Triton kernels: the CUDA path of the estimators where Triton
is installed (it comes with torch's CUDA builds).

Same rule as every backend: the input as float32, node logits summed in float64, right iff
> 0. ``_route_kernel`` walks each row down the tree in float32 and keeps a row's float32
logit only where an error bound proves its sign; a block of rows holding a logit within the
bound recomputes that level in float64 (exact products, as the reference sums them).
``_leaf_kernel`` then runs tiles of rows of one leaf (rows sorted by leaf) through that leaf
and the master leaf with matrix products, and writes the outputs.

The torch backend, which does the same with torch operations, reads each row several times
in separate passes (a float64 copy, the routing product, the leaf-sorted tiles); these
kernels read a row of up to 1,024 features from device memory once to route it and once to
evaluate it.

Importing this module needs Triton; without a GPU, it runs under Triton's interpreter
(``TRITON_INTERPRET=1`` set before the import), which is how the CPU tests check it.
"""

import torch
import triton
import triton.language as tl

from .._activations import ACTIVATIONS
from ._torch import device_weights

# Launch settings, the fastest measured on an H100 (benchmarks/bench_gpu.py --kernels). A row
# of at most RESIDENT_MAX_FEATURES (rounded up to a power of 2) stays in registers while it is
# routed; wider ones are read BLOCK_K columns at a time at each level. "tf32x3" splits each
# float32 operand into two TF32 parts for the tensor cores: float32 accuracy, faster than
# "ieee" (float32 multiply-adds) there.
ROUTE_LAUNCH = {"BLOCK_ROWS": 2, "BLOCK_K": 128, "RESIDENT_MAX_FEATURES": 1024, "num_warps": 1}
LEAF_LAUNCH = {"BLOCK_ROWS": 64, "BLOCK_K": 32, "num_warps": 2, "PRECISION": "tf32x3"}

# float32 rounding: the computed sum of d float32 products, in any order, is within
# (d + 1) * 2**-24 * sum|x_i w_i| of the exact sum, plus 2**-126 per product that underflows.
# A logit is trusted when it exceeds twice the bound, the factor 2 covering the bound's own
# rounding and the float64 sum's (about 1e-16 relative).
_UNIT_ROUNDOFF = 2.0**-24
_UNDERFLOW = 2.0**-126

_RELU = tl.constexpr(ACTIVATIONS.index("relu"))
_TANH = tl.constexpr(ACTIVATIONS.index("tanh"))
_LOGISTIC = tl.constexpr(ACTIVATIONS.index("logistic"))
_IDENTITY = tl.constexpr(ACTIVATIONS.index("identity"))


@triton.jit
def _activate(h, ACTIVATION: tl.constexpr):
    tl.static_assert(ACTIVATION == _RELU or ACTIVATION == _TANH or ACTIVATION == _LOGISTIC
                     or ACTIVATION == _IDENTITY, "an activation without a Triton case")
    if ACTIVATION == _RELU:
        h = tl.maximum(h, 0.0)
    elif ACTIVATION == _TANH:
        t = tl.exp(-2.0 * tl.abs(h))
        h = tl.where(h < 0, -1.0, 1.0) * (1.0 - t) / (1.0 + t)
    elif ACTIVATION == _LOGISTIC:  # exp of a non-positive number: never overflows
        e = tl.exp(-tl.abs(h))
        h = tl.where(h < 0, e, 1.0) / (1.0 + e)
    return h


@triton.jit
def _route_kernel(x_ptr, stride_x, n_rows, n_features, node_w_ptr, node_b_ptr, leaves_ptr,
                  depth, relative_bound, absolute_bound,
                  BLOCK_ROWS: tl.constexpr, BLOCK_K: tl.constexpr, X_RESIDENT: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    in_range = rows < n_rows
    x_rows = x_ptr + rows[:, None] * stride_x
    if X_RESIDENT:  # the whole row in one block, read from memory once for every level
        cols = tl.arange(0, BLOCK_K)
        mask = in_range[:, None] & (cols[None, :] < n_features)
        x = tl.load(x_rows + cols[None, :], mask=mask, other=0.0)
    node = tl.zeros([BLOCK_ROWS], dtype=tl.int64)
    for _ in range(depth):
        w_rows = node_w_ptr + node[:, None] * n_features
        if X_RESIDENT:
            products = x * tl.load(w_rows + cols[None, :], mask=mask, other=0.0)
            logit = tl.sum(products, axis=1)
            magnitude = tl.sum(tl.abs(products), axis=1)
        else:
            logit = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
            magnitude = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
            for start in range(0, n_features, BLOCK_K):
                chunk = start + tl.arange(0, BLOCK_K)
                chunk_mask = in_range[:, None] & (chunk[None, :] < n_features)
                products = (tl.load(x_rows + chunk[None, :], mask=chunk_mask, other=0.0)
                            * tl.load(w_rows + chunk[None, :], mask=chunk_mask, other=0.0))
                logit += tl.sum(products, axis=1)
                magnitude += tl.sum(tl.abs(products), axis=1)
        bias = tl.load(node_b_ptr + node)
        logit += bias
        bound = relative_bound * (magnitude + tl.abs(bias)) + absolute_bound
        # NaN (an overflowed product) compares false: such rows are unsure too.
        unsure = in_range & ~(tl.abs(logit) > 2.0 * bound)
        right = logit > 0
        if tl.max(unsure.to(tl.int32), axis=0) > 0:
            exact = tl.zeros([BLOCK_ROWS], dtype=tl.float64)
            for start in range(0, n_features, BLOCK_K):
                chunk = start + tl.arange(0, BLOCK_K)
                chunk_mask = unsure[:, None] & (chunk[None, :] < n_features)
                exact += tl.sum(
                    tl.load(x_rows + chunk[None, :], mask=chunk_mask, other=0.0).to(tl.float64)
                    * tl.load(w_rows + chunk[None, :], mask=chunk_mask, other=0.0).to(tl.float64),
                    axis=1)
            exact += bias.to(tl.float64)
            right = tl.where(unsure, exact > 0, right)
        node = 2 * node + 1 + right.to(tl.int64)
    first_leaf = (1 << depth) - 1
    tl.store(leaves_ptr + rows, node - first_leaf, mask=in_range)


@triton.jit
def _leaf_kernel(x_ptr, stride_x, n_features, order_ptr, tile_leaf_ptr, tile_end_ptr,
                 leaf_start_ptr, leaf_count_ptr, n_leaves,
                 hidden_w_ptr, hidden_b_ptr, output_w_ptr, output_b_ptr,
                 master_hidden_w_ptr, master_hidden_b_ptr, master_output_w_ptr,
                 master_output_b_ptr, out_ptr, leaf_width, master_width, n_outputs,
                 BLOCK_ROWS: tl.constexpr, BLOCK_K: tl.constexpr, LEAF_BLOCK: tl.constexpr,
                 MASTER_BLOCK: tl.constexpr, OUT_BLOCK: tl.constexpr,
                 ACTIVATION: tl.constexpr, PRECISION: tl.constexpr, HAS_MASTER: tl.constexpr):
    tile = tl.program_id(0)
    leaf = tl.load(tile_leaf_ptr + tile)
    # The grid has a tile for every leaf's last partial tile whether or not it exists.
    if leaf < n_leaves:
        count = tl.load(leaf_count_ptr + leaf)
        first_tile = tl.load(tile_end_ptr + leaf) - (count + BLOCK_ROWS - 1) // BLOCK_ROWS
        leaf_start = tl.load(leaf_start_ptr + leaf)
        slots = (tile - first_tile) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        in_tile = slots < count
        rows = tl.load(order_ptr + leaf_start + slots, mask=in_tile, other=0)
        x_rows = x_ptr + rows[:, None] * stride_x

        units = tl.arange(0, LEAF_BLOCK)
        master_units = tl.arange(0, MASTER_BLOCK)
        outputs = tl.arange(0, OUT_BLOCK)
        leaf = leaf.to(tl.int64)
        hidden_w = hidden_w_ptr + leaf * n_features * leaf_width
        hidden = tl.zeros([BLOCK_ROWS, LEAF_BLOCK], dtype=tl.float32)
        master = tl.zeros([BLOCK_ROWS, MASTER_BLOCK], dtype=tl.float32)
        for start in range(0, n_features, BLOCK_K):
            cols = start + tl.arange(0, BLOCK_K)
            x = tl.load(x_rows + cols[None, :],
                        mask=in_tile[:, None] & (cols[None, :] < n_features), other=0.0)
            w = tl.load(hidden_w + cols[:, None] * leaf_width + units[None, :],
                        mask=(cols[:, None] < n_features) & (units[None, :] < leaf_width),
                        other=0.0)
            hidden = tl.dot(x, w, hidden, input_precision=PRECISION)
            if HAS_MASTER:
                w = tl.load(master_hidden_w_ptr + cols[:, None] * master_width
                            + master_units[None, :],
                            mask=(cols[:, None] < n_features)
                            & (master_units[None, :] < master_width), other=0.0)
                master = tl.dot(x, w, master, input_precision=PRECISION)

        # Padded units have zero weights out, so their activation's value does not matter.
        hidden = _activate(hidden + tl.load(hidden_b_ptr + leaf * leaf_width + units,
                                            mask=units < leaf_width, other=0.0)[None, :],
                           ACTIVATION)
        w = tl.load(output_w_ptr + leaf * leaf_width * n_outputs
                    + units[:, None] * n_outputs + outputs[None, :],
                    mask=(units[:, None] < leaf_width) & (outputs[None, :] < n_outputs),
                    other=0.0)
        result = tl.dot(hidden, w, input_precision=PRECISION)
        result += tl.load(output_b_ptr + leaf * n_outputs + outputs,
                          mask=outputs < n_outputs, other=0.0)[None, :]
        if HAS_MASTER:
            master = _activate(master + tl.load(master_hidden_b_ptr + master_units,
                                                mask=master_units < master_width,
                                                other=0.0)[None, :], ACTIVATION)
            w = tl.load(master_output_w_ptr + master_units[:, None] * n_outputs
                        + outputs[None, :],
                        mask=(master_units[:, None] < master_width)
                        & (outputs[None, :] < n_outputs), other=0.0)
            result = tl.dot(master, w, result, input_precision=PRECISION)
        result += tl.load(master_output_b_ptr + outputs, mask=outputs < n_outputs,
                          other=0.0)[None, :]
        tl.store(out_ptr + rows[:, None] * n_outputs + outputs[None, :], result,
                 mask=in_tile[:, None] & (outputs[None, :] < n_outputs))


def _block(size):
    """The smallest block of a matrix product that holds ``size``: tl.dot needs 16 or more."""
    return max(16, triton.next_power_of_2(size))


def route(arrays, x, w):
    """Leaf of every row of the contiguous float32 tensor ``x``; ``w``: the device weights."""
    n, d = x.shape
    leaves = torch.zeros(n, dtype=torch.long, device=x.device)
    if arrays.depth and n:
        launch = dict(ROUTE_LAUNCH)
        resident = triton.next_power_of_2(d) <= launch.pop("RESIDENT_MAX_FEATURES")
        if resident:
            launch["BLOCK_K"] = triton.next_power_of_2(d)
        grid = (triton.cdiv(n, launch["BLOCK_ROWS"]),)
        _route_kernel[grid](x, x.stride(0), n, d, w["node_weights"], w["node_biases"], leaves,
                            arrays.depth, (d + 1) * _UNIT_ROUNDOFF, (d + 1) * _UNDERFLOW,
                            X_RESIDENT=resident, **launch)
    return leaves


def leaf_order(leaves):
    """Rows sorted by leaf. Leaves fit int32 (``MAX_DEPTH`` is 20), whose keys take half the
    radix-sort passes of int64's."""
    return torch.argsort(leaves.to(torch.int32))


def evaluate(arrays, x, leaves, w):
    """Raw outputs of the rows of ``x``, each through its leaf and the master leaf."""
    n, d = x.shape
    n_outputs = arrays.n_outputs
    out = torch.empty(n, n_outputs, device=x.device)
    if not n:
        return out
    launch = dict(LEAF_LAUNCH)
    block_rows = launch["BLOCK_ROWS"]
    counts = torch.bincount(leaves, minlength=arrays.n_leaves)
    tile_end = torch.cumsum((counts + block_rows - 1) // block_rows, 0)
    n_tiles = n // block_rows + arrays.n_leaves  # at least the tiles there are: no host sync
    tile_leaf = torch.searchsorted(tile_end, torch.arange(n_tiles, device=x.device),
                                   right=True)
    has_master = arrays.master_leaf_width > 0
    # Pointers that a model without a master leaf never reads; Triton refuses empty tensors'.
    master = [w[name] if has_master else w["master_output_biases"]
              for name in ("master_hidden_weights", "master_hidden_biases",
                           "master_output_weights")]
    _leaf_kernel[(n_tiles,)](
        x, x.stride(0), d, leaf_order(leaves), tile_leaf, tile_end,
        torch.cumsum(counts, 0) - counts, counts, arrays.n_leaves,
        w["leaf_hidden_weights"], w["leaf_hidden_biases"], w["leaf_output_weights"],
        w["leaf_output_biases"], *master, w["master_output_biases"], out,
        arrays.leaf_width, arrays.master_leaf_width, n_outputs,
        LEAF_BLOCK=_block(arrays.leaf_width), MASTER_BLOCK=_block(arrays.master_leaf_width),
        OUT_BLOCK=_block(n_outputs), ACTIVATION=ACTIVATIONS.index(arrays.activation),
        HAS_MASTER=has_master, **launch,
    )
    return out


@torch.no_grad()
def forward_tensors(arrays, x, with_outputs=True):
    """Raw outputs and leaves of the float32 tensor ``x``, on its device, left there.

    Returns
    -------
    outputs : tensor of shape (n_samples, n_outputs), float32, or None
    leaves : tensor of shape (n_samples,), int64
    """
    x = x.contiguous()
    w = device_weights(arrays, x.device, torch.float32)
    leaves = route(arrays, x, w)
    return (evaluate(arrays, x, leaves, w) if with_outputs else None), leaves
