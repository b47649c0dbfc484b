"""Hard-routed prediction of the FFF estimators, from one snapshot of the fitted state.

NumPy and the compiled kernel only: a process that loads a fitted estimator and predicts on
the CPU imports no torch (see :mod:`fffsklearn._device`).
"""

import numpy as np
from sklearn.utils.validation import check_is_fitted, validate_data

from . import inference
from ._device import prediction_options


class HardRoutedPrediction:
    """The prediction side of the estimators (mixed into their base).

    Every predict-type call reads one snapshot of the estimator (:meth:`_snapshot`); a fit
    publishes its result by replacing the estimator's ``__dict__`` in one assignment, so a
    call never sees half of an old model and half of a new one.
    """

    def _snapshot(self):
        """A shallow copy of this estimator as it stands now.

        A fit builds its state on such a copy and publishes it by replacing this estimator's
        ``__dict__`` in one assignment; predict-type methods read their copy, so that a fit
        in another thread shows them the old model or the new one, never a mixture."""
        snapshot = object.__new__(type(self))
        snapshot.__dict__.update(self.__dict__)
        return snapshot

    def _validate_for_inference(self, X, options):
        """``X`` validated against this fitted model (a snapshot, see :meth:`_snapshot`)."""
        check_is_fitted(self, "arrays_")
        # The compiled kernel rejects NaN and infinity itself while it routes, which saves a
        # full pass over X; the other backends need validate_data's check.
        return validate_data(
            self,
            X,
            reset=False,
            accept_sparse="csr",
            dtype=(np.float32, np.float64),
            ensure_all_finite=options["backend"] != "compiled",
        )

    def _hard_forward_chunks(self, X, options):
        """``(slice of rows, outputs)`` of the validated rows ``X``, chunk by chunk, each first
        made what the network reads (:meth:`InputPreparation.network_row_blocks`)."""
        for block, network_rows in self._preparation.network_row_blocks(X):
            for rows, outputs, _ in inference.iter_hard_forward(
                self.arrays_, network_rows, **options
            ):
                yield slice(block.start + rows.start, block.start + rows.stop), outputs

    def _map_outputs(self, X, transform):
        """Validate ``X`` and apply ``transform(model, outputs)`` to its raw hard-routed
        outputs chunk by chunk, so memory stays bounded by the result whatever the number of
        rows. ``model`` is the snapshot of this estimator that every step of the call reads
        (see :meth:`_snapshot`). The result takes its trailing shape and dtype from what
        ``transform`` returns.

        Rows whose outputs overflow (inputs far outside the training range, beyond what the
        float32 network can evaluate) raise ``ValueError`` rather than return NaN or inf."""
        model = self._snapshot()
        options = prediction_options(model.device, model.n_jobs)
        X = model._validate_for_inference(X, options)
        result = None
        for rows, outputs in model._hard_forward_chunks(X, options):
            with np.errstate(over="ignore", invalid="ignore"):
                chunk = transform(model, outputs)
            finite = np.isfinite(outputs).all(axis=1)
            if chunk.dtype.kind == "f":
                finite &= np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
            if not finite.all():
                raise ValueError(
                    "X has rows outside the range this model can evaluate: their outputs "
                    f"overflow (first such row: {rows.start + int(np.argmin(finite))}). The "
                    "network computes in float32; scale the inputs as for training."
                )
            if result is None:
                result = np.empty((X.shape[0],) + chunk.shape[1:], dtype=chunk.dtype)
            result[rows] = chunk
        return result

    def apply(self, X):
        """Index of the leaf that hard routing sends each row to.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input rows.

        Returns
        -------
        leaves : ndarray of shape (n_samples,)
            Leaf index in ``[0, 2**depth)``; its binary digits, most significant first, are the
            decisions taken from the root down (1 means right).
        """
        model = self._snapshot()
        options = prediction_options(model.device, model.n_jobs)
        X = model._validate_for_inference(X, options)
        return np.concatenate([
            inference.apply(model.arrays_, network_rows, **options)
            for _, network_rows in model._preparation.network_row_blocks(X)
        ])

    def _count_leaves(self, X):
        """Rows of ``X`` (as the network reads them, dense or sparse) that hard routing sends
        to each leaf of ``arrays_``."""
        options = prediction_options(self.device, self.n_jobs)
        return np.bincount(inference.apply(self.arrays_, X, **options),
                           minlength=self.arrays_.n_leaves)
