"""Persistence of fitted estimators: what a pickle holds, the checks on loading, and the
fffsklearn types that a skops file needs trusted (``skops_trusted_types``, defined beside
the estimators).

A fitted estimator is saved as its parameters and plain NumPy arrays (``arrays_`` and the
target attributes), stamped with the fffsklearn version and state format. Loading warns
across versions and rejects a state whose parts do not fit together; ``FFFArrays`` checks
its own arrays as it is rebuilt.
"""

import warnings
from abc import abstractmethod

import numpy as np

from ._arrays import FFFArrays
from ._preparation import InputPreparation
from ._version import STATE_FORMAT, __version__


class InconsistentFFFVersionWarning(UserWarning):
    """Loading an estimator that another fffsklearn version saved."""


class FittedStatePersistence:
    """Pickling of the FFF estimators (mixed into their base, before ``BaseEstimator``).

    Subclasses name the target attributes their network needs (``_expected_target_shapes``)
    and may extend ``_check_loaded_state`` with checks of their values.
    """

    def __getstate__(self):
        state = dict(super().__getstate__())
        # The torch network and optimizer exist only while training; the fitted model is
        # arrays_. Dropping them keeps pickles small, device-independent and skops-safe.
        state.pop("_trainer", None)
        state["_fffsklearn_version"] = __version__
        state["_fffsklearn_state_format"] = STATE_FORMAT
        return state

    def __setstate__(self, state):
        saved_format = state.pop("_fffsklearn_state_format", None)
        saved_version = state.pop("_fffsklearn_version", "unknown")
        if saved_format != STATE_FORMAT:
            warnings.warn(
                f"This {type(self).__name__} was saved by fffsklearn {saved_version} in state "
                f"format {saved_format}; this is fffsklearn {__version__} (format "
                f"{STATE_FORMAT}). It may not load or predict correctly: refit it.",
                InconsistentFFFVersionWarning,
            )
        elif saved_version != __version__:
            warnings.warn(
                f"This {type(self).__name__} was saved by fffsklearn {saved_version}; this is "
                f"fffsklearn {__version__}. The state format is the same, so it predicts as "
                "before, but check the release notes before relying on it.",
                InconsistentFFFVersionWarning,
            )
        if "arrays_" in state:
            self._check_loaded_state(state)
        super().__setstate__(state)

    def _check_loaded_state(self, state):
        """Reject a fitted state whose parts do not fit together (an edited or corrupt file).

        ``arrays_`` validated itself while it was unpickled; this checks what links it to the
        rest of the estimator.
        """
        arrays = state["arrays_"]
        where = f"Corrupt {type(self).__name__} state"
        if not isinstance(arrays, FFFArrays):
            raise ValueError(f"{where}: arrays_ is a {type(arrays).__name__}, not FFFArrays.")
        expected_shapes = {"leaf_sample_counts_": (arrays.n_leaves,)}
        expected_shapes.update(self._expected_target_shapes(arrays.n_outputs))
        for name, shape in expected_shapes.items():
            value = state.get(name)
            if not isinstance(value, np.ndarray) or value.shape != shape:
                raise ValueError(f"{where}: {name} is missing or does not have shape {shape}.")
        counts = state["leaf_sample_counts_"]
        if counts.dtype.kind not in "iu" or (counts < 0).any():
            raise ValueError(f"{where}: leaf_sample_counts_ must be non-negative integers.")
        # The preparation checked its own arrays as it was rebuilt.
        preparation = state.get("_preparation")
        if (not isinstance(preparation, InputPreparation)
                or preparation.n_features_in_ != arrays.n_features):
            raise ValueError(
                f"{where}: _preparation must be the InputPreparation of the "
                f"{arrays.n_features} features the network takes."
            )
        if state.get("n_features_in_") != arrays.n_features:
            raise ValueError(
                f"{where}: n_features_in_ is {state.get('n_features_in_')!r} but the network "
                f"takes {arrays.n_features} features."
            )

    @abstractmethod
    def _expected_target_shapes(self, n_outputs):
        """Fitted target attributes (name: shape) that a network with ``n_outputs`` needs."""
