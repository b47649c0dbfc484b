"""The public estimators: thin task-specific layers over :class:`~fffsklearn._base.BaseFFF`."""

from numbers import Real

import numpy as np
from scipy.special import expit, log_expit, log_softmax, softmax
from sklearn.base import ClassifierMixin, RegressorMixin, _fit_context
from sklearn.metrics import r2_score
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
from sklearn.utils.validation import column_or_1d

from ._arrays import FFFArrays
from ._base import _ATTRIBUTES_DOC, _PARAMETERS_DOC, BaseFFF
from ._preparation import InputPreparation


class FFFClassifier(ClassifierMixin, BaseFFF):
    __doc__ = f"""Fast feedforward network classifier.

    A binary tree of routing neurons sends each row to one small leaf MLP; a master leaf MLP
    sees every row. Training balances, then hardens: it first trains the hard-routed model
    with a load-balancing loss so that no leaf is starved, then trains the mixture of the
    leaves by path probability while sharpening the routing until the mixture is the hard
    model. Prediction walks the tree with hard decisions (right iff the node's logit is > 0)
    and evaluates only the chosen leaf and the master leaf.

    Parameters
    ----------{_PARAMETERS_DOC}
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes in the loss, multiplied into ``sample_weight``: a dict
        ``{{label: weight}}`` (classes not in it weigh 1), or "balanced", which weighs each
        class by ``n_samples / (n_classes * its count in y)``, so that every class counts as
        much in total. The input statistics of ``standardize`` are weighted by them too.
        ``partial_fit`` accepts a dict only.
    label_smoothing : float in [0, 1), default=0.05
        Training only: while balancing, the share of each row's target spread evenly over
        the classes; the loss is then the cross-entropy with target ``1 - label_smoothing +
        label_smoothing / n_classes`` on the row's class and ``label_smoothing / n_classes``
        on the others. The network stops sharpening rows it already classifies right, which
        leaves that see a few hundred rows otherwise fit point by point. The hardening phase
        fits the plain log-loss, so ``predict_proba`` ends fitted to it; without hardening
        (``hardening_epochs=0``, ``partial_fit``) its largest probability stays near ``1 -
        label_smoothing`` on rows the model is sure of. 0 turns it off.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
{_ATTRIBUTES_DOC}
    See Also
    --------
    FFFRegressor : The same network for regression.
    sklearn.neural_network.MLPClassifier : The dense MLP that an FFF replaces.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from fffsklearn import FFFClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> model = make_pipeline(StandardScaler(), FFFClassifier(depth=3, random_state=0))
    >>> model.fit(X, y).score(X, y) > 0.9
    True
    """

    _task = "classification"

    _parameter_constraints = {
        **BaseFFF._parameter_constraints,
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
    }

    def __init__(
        self,
        depth=4,
        leaf_width=16,
        master_leaf_width=16,
        load_balancing=1.0,
        hardening_epochs=16,
        projection_rank=32,
        input_noise=0.1,
        activation="relu",
        standardize=True,
        max_iter=200,
        batch_size="auto",
        learning_rate_init=1e-2,
        alpha=3.0,
        leaf_tying="auto",
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        tol=1e-4,
        warm_start=False,
        random_state=None,
        verbose=0,
        device="auto",
        n_jobs=None,
        class_weight=None,
        label_smoothing=0.05,
    ):
        super().__init__(
            depth=depth,
            leaf_width=leaf_width,
            master_leaf_width=master_leaf_width,
            load_balancing=load_balancing,
            hardening_epochs=hardening_epochs,
            projection_rank=projection_rank,
            input_noise=input_noise,
            activation=activation,
            standardize=standardize,
            max_iter=max_iter,
            batch_size=batch_size,
            learning_rate_init=learning_rate_init,
            alpha=alpha,
            leaf_tying=leaf_tying,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            n_iter_no_change=n_iter_no_change,
            tol=tol,
            warm_start=warm_start,
            random_state=random_state,
            verbose=verbose,
            device=device,
            n_jobs=n_jobs,
        )
        self.class_weight = class_weight
        self.label_smoothing = label_smoothing

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """Train for one epoch on the given rows, keeping the weights and optimizer state.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training rows.
        y : array-like of shape (n_samples,)
            Their labels.
        classes : array-like of shape (n_classes,), default=None
            Every label that any call may see. Required on the first call, ignored after.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the rows in the loss.

        Returns
        -------
        self : object
            The estimator.
        """
        if classes is None and not hasattr(self, "classes_"):
            raise ValueError("classes must be passed on the first call to partial_fit.")
        return self._partial_fit(X, y, sample_weight, classes)

    def _encode_targets(self, y, first_call, classes=None):
        check_classification_targets(y)
        if first_call:
            self._multilabel = type_of_target(y) == "multilabel-indicator"
        if self._multilabel:
            if first_call:
                self.classes_ = np.arange(np.shape(y)[1])
            return _label_indicators(type(self).__name__, y, len(self.classes_))
        y = _one_label_per_row(type(self).__name__, y)
        if first_call:
            self.classes_ = _classes_of(type(self).__name__, y if classes is None else classes)
        unseen = np.setdiff1d(y, self.classes_)
        if unseen.size:
            raise ValueError(
                f"y contains labels {unseen.tolist()} that are not in classes_ "
                f"{self.classes_.tolist()}."
            )
        return np.searchsorted(self.classes_, y).astype(np.int64)

    # Under batch_size="auto", rows of a step per leaf (so that each leaf learns from each
    # step), and at least this many steps an epoch (fewer, larger batches learnt less).
    _AUTO_BATCH_ROWS_PER_LEAF = 25
    _AUTO_BATCH_MIN_STEPS_PER_EPOCH = 50

    # A deep routing neuron reads every feature but trains on the few rows that reach it:
    # where many features are noise, its split followed them under alpha's penalty alone.
    _ROUTING_DECAY_FACTOR = 3.0
    # The group lasso on each feature's routing weights, in units of alpha / n_samples,
    # times the feature's share (low for a feature whose class means differ).
    _ROUTING_GROUP_LASSO = 20.0

    def _loss(self):
        from ._losses import BinaryCrossEntropy, CrossEntropy

        # Until a fit has seen the targets, the recipe is that of one label per row.
        loss = BinaryCrossEntropy if getattr(self, "_multilabel", False) else CrossEntropy
        return loss(self.label_smoothing)

    def _auto_batch_size(self, n_samples):
        """25 rows per leaf while an epoch keeps at least 50 steps, and at least 200: with
        200 rows a step, each leaf of a deep tree gets a few of them and learns little from
        each step."""
        per_leaves = self._AUTO_BATCH_ROWS_PER_LEAF * 2**self.depth
        return max(self._AUTO_BATCH_ROWS,
                   min(per_leaves, n_samples // self._AUTO_BATCH_MIN_STEPS_PER_EPOCH))

    def _n_network_outputs(self):
        return len(self.classes_)

    def _stratification(self, y_encoded, n_val):
        if self._multilabel:
            return None
        # Stratified where every class present has 2 rows and the split room for each.
        counts = np.bincount(y_encoded)
        if counts[counts > 0].min() >= 2 and n_val >= np.count_nonzero(counts):
            return y_encoded
        return None

    def _weigh_targets(self, y_encoded, sample_weight, incremental):
        if self.class_weight is None:
            return sample_weight
        return sample_weight * _class_weights(
            self.class_weight, self.classes_, y_encoded, self._multilabel, incremental
        )

    def _preparation_targets(self, y_encoded):
        # The routing group lasso weighs each feature by how well it separates the classes;
        # multi-label rows have no one class to separate: no group lasso.
        if self._multilabel:
            return {}
        return {"y": y_encoded, "n_classes": len(self.classes_)}

    def _output_scaling(self):
        return None

    @classmethod
    def from_network(cls, network, X, classes, **params):
        """A fitted classifier that predicts with ``network``, trained outside fffsklearn.

        The result predicts through the compiled kernel, pickles and exports to ONNX like
        any fitted FFFClassifier; ``fit`` with ``warm_start=True`` continues from it.

        Parameters
        ----------
        network : fffsklearn.nn.FFFNetwork or FFFArrays
            A network that takes rows as ``X`` and returns one logit per class, for
            example a module trained with skorch or returned by :meth:`to_module`.
        X : array-like of shape (n_samples, n_features)
            The rows it was trained on: they set ``n_features_in_`` (and
            ``feature_names_in_``) and are routed to count ``leaf_sample_counts_``.
        classes : array-like of shape (n_classes,)
            Label of each output of the network, sorted as ``numpy.unique`` sorts them.
        **params
            Other parameters of the estimator; the network sets ``depth``, ``leaf_width``,
            ``master_leaf_width`` and ``activation``.

        Returns
        -------
        estimator : FFFClassifier
        """
        classes = np.asarray(classes)
        if classes.ndim != 1 or len(classes) < 2 or not np.array_equal(
            np.unique(classes), classes
        ):
            raise ValueError(
                "classes must be at least 2 distinct labels, sorted as numpy.unique sorts "
                f"them (the order of the network's outputs); got {classes.tolist()!r}."
            )

        def target_attributes(arrays, output_scaling):
            if arrays.n_outputs != len(classes):
                raise ValueError(
                    f"The network has {arrays.n_outputs} outputs but {len(classes)} classes "
                    "were given."
                )
            if output_scaling is not None:
                arrays = arrays.with_output_scaling(*output_scaling)
            return arrays, {"classes_": classes, "_multilabel": False}

        return cls._from_network(network, X, params, target_attributes)

    def _expected_target_shapes(self, n_outputs):
        return {"classes_": (n_outputs,)}

    def _check_loaded_state(self, state):
        super()._check_loaded_state(state)
        classes = state["classes_"]
        try:
            distinct = len(np.unique(classes)) == len(classes)
        except TypeError:  # labels of types that cannot be ordered
            distinct = False
        if not distinct or any(isinstance(c, float) and not np.isfinite(c) for c in classes):
            raise ValueError(
                f"Corrupt {type(self).__name__} state: classes_ must be distinct, orderable "
                "labels (no NaN)."
            )
        if not isinstance(state.get("_multilabel"), (bool, np.bool_)):
            raise ValueError(
                f"Corrupt {type(self).__name__} state: _multilabel must be a bool."
            )

    def _score_outputs(self, outputs, y_encoded, sample_weight=None):
        if self._multilabel:  # subset accuracy, as accuracy_score gives
            correct = ((outputs > 0) == (y_encoded > 0.5)).all(axis=1)
        else:
            correct = np.argmax(outputs, axis=1) == y_encoded
        return float(np.average(correct, weights=sample_weight))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def predict_proba(self, X):
        """Class probabilities of each row under hard routing.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input rows.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Softmax of the chosen leaf's plus the master leaf's output; columns follow
            ``classes_``. For multi-label targets, each label's probability: the sigmoid of
            its output.
        """
        return self._map_outputs(X, lambda model, outputs: (
            expit if model._multilabel else lambda z: softmax(z, axis=1)
        )(outputs.astype(np.float64)))

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`, computed without underflow.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input rows.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
            Log-probabilities; columns follow ``classes_``.
        """
        return self._map_outputs(X, lambda model, outputs: (
            log_expit if model._multilabel else lambda z: log_softmax(z, axis=1)
        )(outputs.astype(np.float64)))

    def predict(self, X):
        """Predicted class of each row under hard routing.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input rows.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_labels)
            The class of highest probability in :meth:`predict_proba`; for multi-label
            targets, the 0/1 indicator matrix of the labels of probability above 1/2.
        """
        # The softmax is monotone, so its argmax is the argmax of the raw outputs. Labels are
        # written chunk by chunk: no full-length index array besides the result.
        return self._map_outputs(X, lambda model, outputs: (
            (outputs > 0).astype(np.int64) if model._multilabel
            else model.classes_[np.argmax(outputs, axis=1)]
        ))


def _one_label_per_row(name, y):
    """``y`` of one label per row as a 1-D array (a column vector warns, as in scikit-learn)."""
    if np.ndim(y) == 2 and np.shape(y)[1] != 1:
        raise ValueError(
            f"{name} was fitted on one label per row; y has {np.shape(y)[1]} columns. A 2-D y "
            "must be a 0/1 indicator matrix of labels (multi-label), given from the first fit on."
        )
    return column_or_1d(y, warn=True)


def _classes_of(name, labels):
    """The sorted distinct labels, at least two."""
    classes = unique_labels(labels)
    if len(classes) < 2:
        raise ValueError(
            f"{name} needs samples of at least 2 classes in the data, but the data contains "
            f"only one class: {classes[0]!r}."
        )
    return classes


def _label_indicators(name, y, n_labels):
    """Multi-label ``y``, an (n_samples, n_labels) 0/1 matrix, as float32 targets of one
    sigmoid output per label."""
    y = np.asarray(y)
    if y.ndim != 2 or not np.isin(y, (0, 1)).all():
        raise ValueError(
            f"{name} was fitted on multi-label targets: y must be a 0/1 indicator matrix."
        )
    if y.shape[1] != n_labels:
        raise ValueError(f"y has {y.shape[1]} labels but {name} was fitted with {n_labels}.")
    return y.astype(np.float32)


def _class_weights(class_weight, classes, y_encoded, multilabel, incremental):
    """The weight of each row's class under ``class_weight``."""
    if multilabel:
        raise ValueError(
            "class_weight is not supported for multi-label y: weigh the rows with "
            "sample_weight instead."
        )
    if class_weight == "balanced" and incremental:
        raise ValueError(
            "class_weight='balanced' is not supported by partial_fit: the class frequencies "
            "of one batch are not those of the data. Compute them with "
            "sklearn.utils.class_weight.compute_class_weight('balanced', classes=classes, "
            "y=y) on enough of the labels and pass the result as a dict."
        )
    weights = compute_class_weight(class_weight, classes=classes, y=classes[y_encoded])
    if not (np.isfinite(weights).all() and (weights >= 0).all()):
        raise ValueError(
            f"class_weight must give every class a finite, non-negative weight; got "
            f"{dict(zip(classes.tolist(), weights.tolist()))}."
        )
    return weights[y_encoded]


class FFFRegressor(RegressorMixin, BaseFFF):
    __doc__ = f"""Fast feedforward network regressor.

    A binary tree of routing neurons sends each row to one small leaf MLP; a master leaf MLP
    sees every row. Training balances, then hardens: it first trains the hard-routed model
    with a load-balancing loss so that no leaf is starved, then trains the mixture of the
    leaves by path probability while sharpening the routing until the mixture is the hard
    model. Prediction walks the tree with hard decisions (right iff the node's logit is > 0)
    and evaluates only the chosen leaf and the master leaf. Targets are standardised
    internally; several targets (2-D ``y``) share one tree.

    Parameters
    ----------{_PARAMETERS_DOC}
    Attributes
    ----------
    n_outputs_ : int
        Number of targets.
{_ATTRIBUTES_DOC}
    See Also
    --------
    FFFClassifier : The same network for classification.
    sklearn.neural_network.MLPRegressor : The dense MLP that an FFF replaces.

    Examples
    --------
    >>> from sklearn.datasets import make_friedman1
    >>> from fffsklearn import FFFRegressor
    >>> X, y = make_friedman1(n_samples=1000, random_state=0)
    >>> model = FFFRegressor(depth=2, random_state=0).fit(X, y)
    >>> model.score(X, y) > 0.8
    True
    """

    _task = "regression"

    # The routing neurons take alpha's penalty as the leaves do: the leaves balanced less
    # with more.
    _ROUTING_DECAY_FACTOR = 1.0
    # No feature shares (they come from class means): no group lasso.
    _ROUTING_GROUP_LASSO = 0.0
    # The regularisers fade below this mean squared residual of the standardised targets,
    # a training R^2 above 0.8 (see SquaredError).
    _REGULARISER_FADE_MSE = 0.2

    def __init__(
        self,
        depth=4,
        leaf_width=16,
        master_leaf_width=16,
        load_balancing=1.0,
        hardening_epochs=16,
        projection_rank=None,
        input_noise=0.0,
        activation="relu",
        standardize=True,
        max_iter=200,
        batch_size="auto",
        learning_rate_init=3e-3,
        alpha=3.0,
        leaf_tying="auto",
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        tol=1e-4,
        warm_start=False,
        random_state=None,
        verbose=0,
        device="auto",
        n_jobs=None,
    ):
        super().__init__(
            depth=depth,
            leaf_width=leaf_width,
            master_leaf_width=master_leaf_width,
            load_balancing=load_balancing,
            hardening_epochs=hardening_epochs,
            projection_rank=projection_rank,
            input_noise=input_noise,
            activation=activation,
            standardize=standardize,
            max_iter=max_iter,
            batch_size=batch_size,
            learning_rate_init=learning_rate_init,
            alpha=alpha,
            leaf_tying=leaf_tying,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            n_iter_no_change=n_iter_no_change,
            tol=tol,
            warm_start=warm_start,
            random_state=random_state,
            verbose=verbose,
            device=device,
            n_jobs=n_jobs,
        )

    def _loss(self):
        from ._losses import SquaredError

        return SquaredError(self._REGULARISER_FADE_MSE)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None):
        """Train for one epoch on the given rows, keeping the weights and optimizer state.

        The first call also fixes the target standardisation from its rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training rows.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Their targets.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the rows in the loss.

        Returns
        -------
        self : object
            The estimator.
        """
        return self._partial_fit(X, y, sample_weight, None)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _encode_targets(self, y, first_call, classes=None):
        y = np.asarray(y, dtype=np.float64)
        y2d = y.reshape(y.shape[0], -1)
        if first_call:
            self.n_outputs_ = y2d.shape[1]
            self._target_is_1d = y.ndim == 1
            # Moments of y / max|y|, scaled back: targets near the float64 limit do not
            # overflow their variance.
            magnitude = np.abs(y2d).max(axis=0)
            magnitude = np.where(magnitude > 0, magnitude, 1.0)
            unit = y2d / magnitude
            self._target_mean = unit.mean(axis=0) * magnitude
            scale = unit.std(axis=0) * magnitude
            self._target_scale = np.where(scale > 0, scale, 1.0)
        if y2d.shape[1] != self.n_outputs_:
            raise ValueError(
                f"y has {y2d.shape[1]} targets but {type(self).__name__} was fitted with "
                f"{self.n_outputs_}."
            )
        with np.errstate(over="ignore", invalid="ignore"):
            standardised = ((y2d - self._target_mean) / self._target_scale).astype(np.float32)
        if not np.isfinite(standardised).all():
            raise ValueError(
                "y has values that cannot be standardised (they overflow float64 or, once "
                "standardised, float32): rescale the targets, for example with "
                "TransformedTargetRegressor."
            )
        return standardised

    def _n_network_outputs(self):
        return self.n_outputs_

    def _output_scaling(self):
        return self._target_mean, self._target_scale

    @classmethod
    def from_network(cls, network, X, **params):
        """A fitted regressor that predicts with ``network``, trained outside fffsklearn.

        The result predicts through the compiled kernel, pickles and exports to ONNX like
        any fitted FFFRegressor; ``fit`` with ``warm_start=True`` continues from it. A
        network's fixed ``output_scaling`` (as :meth:`to_module` gives) becomes the
        regressor's target scaling; without one, the targets are taken as they are.

        Parameters
        ----------
        network : fffsklearn.nn.FFFNetwork or FFFArrays
            A network that takes rows as ``X`` and returns the targets in their own units,
            for example a module trained with skorch or returned by :meth:`to_module`.
        X : array-like of shape (n_samples, n_features)
            The rows it was trained on: they set ``n_features_in_`` (and
            ``feature_names_in_``) and are routed to count ``leaf_sample_counts_``.
        **params
            Other parameters of the estimator; the network sets ``depth``, ``leaf_width``,
            ``master_leaf_width`` and ``activation``.

        Returns
        -------
        estimator : FFFRegressor
            ``predict`` returns a 1-D array when the network has one output.
        """
        def target_attributes(arrays, output_scaling):
            n = arrays.n_outputs
            mean, scale = output_scaling or (np.zeros(n), np.ones(n))
            return arrays, {
                "n_outputs_": n, "_target_is_1d": n == 1,
                "_target_mean": mean, "_target_scale": scale,
            }

        return cls._from_network(network, X, params, target_attributes)

    def _expected_target_shapes(self, n_outputs):
        return {"_target_mean": (n_outputs,), "_target_scale": (n_outputs,)}

    # R^2 needs two validation rows.
    _min_validation_rows = 2

    def _check_loaded_state(self, state):
        super()._check_loaded_state(state)
        n_outputs = state["arrays_"].n_outputs
        is_1d = state.get("_target_is_1d")
        if (
            state.get("n_outputs_") != n_outputs
            or not isinstance(is_1d, (bool, np.bool_))
            or (is_1d and n_outputs != 1)
        ):
            raise ValueError(
                f"Corrupt {type(self).__name__} state: n_outputs_ or _target_is_1d is missing "
                "or does not match the network."
            )
        mean, scale = state["_target_mean"], state["_target_scale"]
        if not (
            mean.dtype.kind == scale.dtype.kind == "f"
            and np.isfinite(mean).all() and np.isfinite(scale).all() and (scale > 0).all()
        ):
            raise ValueError(
                f"Corrupt {type(self).__name__} state: _target_mean must be finite and "
                "_target_scale finite and positive."
            )

    def _score_outputs(self, outputs, y_encoded, sample_weight=None):
        return float(r2_score(y_encoded, outputs, sample_weight=sample_weight))

    def predict(self, X):
        """Predicted targets of each row under hard routing.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input rows.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_targets)
            The chosen leaf's plus the master leaf's output, in the units of the targets.
        """
        def in_target_units(model, outputs):
            y = outputs * model._target_scale + model._target_mean
            return y[:, 0] if model._target_is_1d else y

        return self._map_outputs(X, in_target_units)


def skops_trusted_types():
    """Names of the fffsklearn types to trust when loading a model with ``skops.io.load``.

    The fitted state of the estimators is plain NumPy arrays, so a skops file holds no torch
    objects and no code; loading rebuilds the model through its validating constructors, and
    a damaged or edited file raises ``ValueError``.

    Returns
    -------
    types : list of str
        Pass them, with any types of your own pipeline, as ``trusted=`` to
        :func:`skops.io.load`.

    Examples
    --------
    >>> import skops.io as sio  # doctest: +SKIP
    >>> model = sio.load("model.skops", trusted=skops_trusted_types())  # doctest: +SKIP
    """
    return [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in (FFFArrays, InputPreparation, FFFClassifier, FFFRegressor)
    ]
