"""Helpers for tests and benchmarks: random fitted models built directly as arrays, a
sampler of the process's anonymous resident memory, and a base for fit callbacks."""

import threading
import time

import numpy as np

from ._arrays import FFFArrays


def random_arrays(
    rng, depth, n_features, leaf_width, master_leaf_width, n_outputs, activation="relu",
    anchors=None,
):
    """A random, valid :class:`FFFArrays` (no training).

    Weights are Gaussian with variance ``1 / fan_in``. With ``anchors`` (rows of real-looking
    data), each node's hyperplane passes through one of them, as trained trees' do, so that
    such rows spread over the leaves.
    """
    n_leaves = 2**depth

    def weights(*shape):
        fan_in = shape[-2] if len(shape) > 1 else 1
        return (rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))).astype(np.float32)

    node_weights = weights(n_leaves - 1, n_features)
    if anchors is None:
        node_biases = weights(n_leaves - 1)
    else:
        points = anchors[rng.integers(0, len(anchors), n_leaves - 1)]
        node_biases = -np.einsum("ij,ij->i", node_weights, points).astype(np.float32)
    return FFFArrays(
        depth,
        activation,
        node_weights=node_weights,
        node_biases=node_biases,
        leaf_hidden_weights=weights(n_leaves, n_features, leaf_width),
        leaf_hidden_biases=weights(n_leaves, leaf_width),
        leaf_output_weights=weights(n_leaves, leaf_width, n_outputs),
        leaf_output_biases=weights(n_leaves, n_outputs),
        master_hidden_weights=weights(n_features, master_leaf_width),
        master_hidden_biases=weights(master_leaf_width),
        master_output_weights=weights(master_leaf_width, n_outputs),
        master_output_biases=weights(n_outputs),
    )


def anonymous_rss_bytes():
    """Anonymous resident memory of this process (Linux): file-backed pages such as those of
    a memmap are not counted."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


class PeakSampler:
    """Context manager recording the peak of :func:`anonymous_rss_bytes` while it is open."""

    def __init__(self, interval=0.005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, anonymous_rss_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = anonymous_rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, anonymous_rss_bytes())


class EpochCallback:
    """A scikit-learn fit callback (``set_callbacks``) that sees the end of every epoch.

    Subclasses define ``epoch_end(epoch, fitted_estimator)``, ``epoch`` counted from 1 within
    the fit; a true return ends training after that epoch.
    """

    def setup(self, estimator, context):
        pass

    def teardown(self, estimator, context):
        pass

    def on_fit_task_begin(self, estimator, context, **kwargs):
        pass

    def on_fit_task_end(self, estimator, context, *, fitted_estimator=None, **kwargs):
        if context.task_name != "epoch":
            return False
        return bool(self.epoch_end(context.task_id + 1, fitted_estimator))

    def epoch_end(self, epoch, fitted_estimator):
        return False
