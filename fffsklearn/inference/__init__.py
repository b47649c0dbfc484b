"""Hard-routed inference over the fitted arrays, with one entry point for every backend.

Backends
--------
``"compiled"``
    The C kernel (:mod:`fffsklearn.inference._kernel`): parallel over rows with OpenMP, GIL
    released, float32 or float64 input in any memory order without a full copy.
``"reference"``
    NumPy (:mod:`fffsklearn.inference._reference`); used when the extension is not built.
``"torch"``
    torch operations on any torch device (:mod:`fffsklearn.inference._torch`).
``"triton"``
    Two Triton kernels (:mod:`fffsklearn.inference._triton`): the GPU path where Triton is
    installed; on the CPU only under Triton's interpreter.

All read the same :class:`~fffsklearn._arrays.FFFArrays`, route with the same rule (right iff
the float64-accumulated logit of the float32 input is > 0) and send every row to the same leaf.

Rows may also come as a SciPy sparse matrix: the compiled kernel reads a CSR matrix's
non-zeros as they are, at a cost per row that grows with them; the other backends densify a
chunk of rows at a time.
"""

import os
import warnings
from functools import lru_cache

import numpy as np
from joblib import cpu_count
from scipy import sparse

from . import _reference

try:
    from . import _kernel
except ImportError as exc:  # pragma: no cover - exercised only where the build failed
    _kernel = None
    warnings.warn(
        f"fffsklearn's compiled inference kernel could not be imported ({exc}); predictions "
        "fall back to the slower NumPy reference path. Reinstall with a C compiler present.",
        RuntimeWarning,
        stacklevel=2,
    )

BACKENDS = ("compiled", "reference", "torch", "triton")

# Rows handed to a backend per call: bounds the working set of one predict call whatever the
# number of rows (outputs of this many rows, plus the backend's own per-thread buffers).
CHUNK_ROWS = 65536


def default_backend():
    """The fastest backend available in this installation."""
    return "compiled" if _kernel is not None else "reference"


def effective_n_threads(n_jobs):
    """Number of threads for CPU inference, in joblib's and OpenMP's conventions.

    ``None`` follows ``OMP_NUM_THREADS`` if set, else uses every core available to the
    process; ``-1`` uses every core; ``-2`` all but one; a positive number is taken as is.
    """
    if n_jobs is None:
        env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
        return max(1, int(env)) if env.isdigit() else _available_cores()
    if n_jobs < 0:
        return max(1, _available_cores() + 1 + n_jobs)
    return int(n_jobs)


@lru_cache(maxsize=1)
def triton_available():
    """Whether Triton, which torch's CUDA builds bring along, can be imported here."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=1)
def _available_cores():
    # joblib reads the cgroup quota from disk on every call: far too slow for a one-row predict.
    return cpu_count()


def iter_hard_forward(
    arrays, X, *, n_threads=1, backend=None, with_outputs=True, device="cpu"
):
    """Hard-routed forward pass of validated 2-D float ``X``, in chunks of rows.

    Parameters
    ----------
    arrays : FFFArrays
    X : ndarray or sparse matrix of shape (n_samples, n_features), float32 or float64
    n_threads : int
    backend : {"compiled", "reference", "torch", "triton"} or None
        None picks :func:`default_backend`.
    with_outputs : bool
        If False, only route (``outputs`` is None); that is what ``apply`` needs.
    device : str or torch.device, default="cpu"
        Where the "torch" and "triton" backends compute.

    Yields
    ------
    rows : slice
        The rows of ``X`` this chunk covers.
    outputs : ndarray of shape (chunk_rows, n_outputs), float32, or None
        Raw outputs: leaf MLP plus master MLP, before any link function.
    leaves : ndarray of shape (chunk_rows,), intp
    """
    backend = backend or default_backend()
    if sparse.issparse(X):
        X = X.tocsr()
    if backend == "compiled":
        if _kernel is None:
            raise ValueError("backend='compiled' was requested but the C kernel is not built.")
        for rows in _batches(X.shape[0], CHUNK_ROWS):
            n = rows.stop - rows.start
            leaves = np.empty(n, dtype=np.int64)
            outputs = np.empty((n, arrays.n_outputs), dtype=np.float32) if with_outputs else None
            if sparse.issparse(X):
                _kernel.hard_forward_csr(arrays, X.data, X.indices,
                                         X.indptr[rows.start:rows.stop + 1], X.shape[1],
                                         leaves, outputs, n_threads)
            else:
                _kernel.hard_forward(arrays, X[rows], leaves, outputs, n_threads)
            yield rows, outputs, leaves
    elif backend == "reference":
        for rows, chunk in _dense_chunks(X, _reference_chunk_rows(X.shape[1])):
            chunk = np.asarray(chunk, dtype=np.float32)
            if with_outputs:
                yield (rows, *_reference.forward(arrays, chunk))
            else:
                yield rows, None, _reference.route(arrays, chunk)
    elif backend in ("torch", "triton"):
        from . import _torch  # torch is imported by the estimators anyway, but not here

        if backend == "triton":
            if not triton_available():
                raise ValueError("backend='triton' needs Triton, which torch's CUDA builds "
                                 "install; pip install triton.")
            from ._triton import forward_tensors
        else:
            forward_tensors = _torch.forward_tensors
        size = _reference_chunk_rows(X.shape[1]) if sparse.issparse(X) else CHUNK_ROWS
        for rows, chunk in _dense_chunks(X, size):
            yield (rows, *_torch.forward(arrays, chunk, device, with_outputs, forward_tensors))
    else:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")


def hard_forward(arrays, X, **kwargs):
    """All raw outputs and leaves of ``X`` at once; see :func:`iter_hard_forward`."""
    outputs = np.empty((X.shape[0], arrays.n_outputs), dtype=np.float32)
    leaves = np.empty(X.shape[0], dtype=np.intp)
    for rows, chunk_outputs, chunk_leaves in iter_hard_forward(arrays, X, **kwargs):
        outputs[rows] = chunk_outputs
        leaves[rows] = chunk_leaves
    return outputs, leaves


def apply(arrays, X, **kwargs):
    """Leaf of every row of ``X``; see :func:`iter_hard_forward`."""
    leaves = np.empty(X.shape[0], dtype=np.intp)
    for rows, _, chunk_leaves in iter_hard_forward(arrays, X, with_outputs=False, **kwargs):
        leaves[rows] = chunk_leaves
    return leaves


def _batches(n, size):
    # sklearn.utils.gen_batches validates its parameters on every call: too slow for one row.
    return (slice(start, min(start + size, n)) for start in range(0, n, size))


def _dense_chunks(X, size):
    """``(slice of rows, rows)`` of ``X`` by ``size`` rows, a sparse ``X`` densified one
    chunk at a time."""
    for rows in _batches(X.shape[0], size):
        chunk = X[rows]
        yield rows, chunk.toarray() if sparse.issparse(chunk) else chunk


def _reference_chunk_rows(n_features):
    # The reference gathers one float64 weight row per sample and level: keep that near 64 MB.
    return max(64, min(CHUNK_ROWS, (1 << 23) // max(n_features, 1)))
