"""The torch side of the estimators: a fitted estimator as a trainable torch module, and back.

Torch loads when these are called, not with the package.
"""

from abc import abstractmethod

import numpy as np
from sklearn.utils.validation import check_is_fitted, validate_data

from ._arrays import FFFArrays
from ._preparation import InputPreparation


class TorchInterop:
    """``to_module`` and ``from_network`` of the estimators (mixed into their base)."""

    @abstractmethod
    def _output_scaling(self):
        """``(mean, scale)`` that turn the outputs of ``arrays_`` into the units users see
        (logits, or targets), or None."""

    def to_module(self):
        """A trainable torch copy of the fitted network, for a training loop of your own.

        The module takes raw rows and returns raw outputs: class logits in the order of
        ``classes_``, or the targets in their own units. It standardises the rows first as
        the fit did, with the fitted mean and scale held fixed (``input_mean`` and
        ``input_scale`` are buffers, not parameters), so that fine-tuning is as well
        conditioned as training was. Train it with :func:`fffsklearn.nn.load_balancing_loss`
        and :class:`fffsklearn.nn.Hardening`, then turn it back into an estimator with
        ``from_network``, which folds the standardisation into the first layers again.

        Returns
        -------
        module : fffsklearn.nn.FFFNetwork
            In training mode, straight-through.
        """
        from ._network import FFFNetwork

        check_is_fitted(self, "arrays_")
        preparation = self._preparation
        # The network's own arrays take the standardised rows; the module standardises the
        # rows as given (the offset and the standardisation together).
        arrays = self.arrays_ if preparation.scaling is None else (
            self.arrays_.without_input_scaling(*preparation.scaling)
        )
        return FFFNetwork.from_arrays(
            arrays, input_scaling=preparation.raw_scaling,
            output_scaling=self._output_scaling(),
        ).train()

    @classmethod
    def _from_network(cls, network, X, params, target_attributes):
        """A fitted estimator holding ``network`` (an FFFNetwork or FFFArrays).

        ``target_attributes(arrays, output_scaling)`` returns the arrays to predict with and
        the fitted target attributes that give their outputs their meaning (or raises if
        they cannot), from the network's arrays before its fixed output scaling and that
        scaling (None if there is none); ``X`` sets the input attributes and the leaf
        counts."""
        from ._network import FFFNetwork

        trained_as, output_scaling = {}, None
        if isinstance(network, FFFNetwork):
            arrays = network.to_arrays(output_scaling=False)
            output_scaling = network.output_scaling
            # A warm start then trains the first layers as the network did.
            projection = network.input_projection
            trained_as["projection_rank"] = None if projection is None else projection.shape[1]
        elif isinstance(network, FFFArrays):
            arrays = network
        else:
            raise TypeError(
                "network must be an fffsklearn.nn.FFFNetwork or an FFFArrays, got "
                f"{type(network).__name__}."
            )
        estimator = cls(**params).set_params(
            depth=arrays.depth, leaf_width=arrays.leaf_width,
            master_leaf_width=arrays.master_leaf_width, activation=arrays.activation,
            **trained_as,
        )
        estimator._validate_params()
        X = validate_data(estimator, X, reset=True, dtype=np.float32)
        if X.shape[1] != arrays.n_features:
            raise ValueError(
                f"X has {X.shape[1]} features, but the network takes {arrays.n_features}."
            )
        arrays, attributes = target_attributes(arrays, output_scaling)
        vars(estimator).update(attributes)
        estimator.arrays_ = arrays
        estimator._preparation = InputPreparation.identity(arrays.n_features)
        estimator.device_ = "cpu"
        estimator.n_iter_ = 0
        estimator.loss_curve_ = []
        estimator.best_loss_ = estimator.validation_scores_ = None
        estimator.best_validation_score_ = None
        estimator.leaf_sample_counts_ = estimator._count_leaves(X)
        return estimator
