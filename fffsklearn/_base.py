"""The shared base of FFFClassifier and FFFRegressor: parameters, the validation of what fit is
given, the recipe, and fitting and publishing the fitted state in one step."""

import warnings
from abc import ABCMeta, abstractmethod
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import (
    _check_sample_weight,
    check_consistent_length,
    validate_data,
)

from . import inference
from ._arrays import ACTIVATIONS
from ._device import prediction_options, short_gil_waits, training_device
from ._interop import TorchInterop
from ._limits import MAX_DEPTH, MAX_THREADS, TRAINING_MEMORY_FRACTION, physical_memory_bytes
from ._persistence import FittedStatePersistence
from ._prediction import HardRoutedPrediction
from ._preparation import DRIFT_RATIO, InputPreparation
from ._progress import CallbackSupportMixin, EpochHooks, EpochReporter
from ._recipe import Recipe, Schedule

_PARAMETERS_DOC = """
    depth : int, default=4
        Depth of the routing tree: ``2**depth`` leaves and ``2**depth - 1`` routing neurons.
        A prediction runs ``depth`` routing neurons and one leaf per row; training computes
        every leaf, like a dense MLP of ``2**depth * leaf_width`` units.

    leaf_width : int, default=16
        Hidden units of each leaf MLP.

    master_leaf_width : int, default=16
        Hidden units of the master leaf, an MLP that every row uses and whose output is added
        to the output of the row's leaf. 0 turns it off.

    load_balancing : float, default=1.0
        Weight of the Switch-Transformer load-balancing loss, which keeps every leaf in use.
        0 turns it off.

    hardening_epochs : int, default=16
        Length of the hardening phase that ends ``fit``: the routing neurons are frozen, the
        leaves train on the mixture of the leaves weighted by path probability, and every
        epoch doubles every routing logit, so that this mixture becomes the hard routing that
        ``predict`` uses. At most a quarter of ``max_iter``; 0 skips it. ``partial_fit`` does
        not harden.

    projection_rank : int or None, default=32 (FFFClassifier) or None (FFFRegressor)
        The leaves and the master leaf read the rows through one shared linear projection to
        this many dimensions (at most ``n_features``), trained with them and started on the
        principal directions of the training rows. None gives every first layer its own
        weights. ``predict`` is unaffected: the fitted first layers are the products.

    input_noise : float, default=0.1 (FFFClassifier) or 0.0 (FFFRegressor)
        Standard deviation of the Gaussian noise added to every training row, in units of
        each feature's standard deviation over the training rows, drawn afresh for every
        batch. 0 turns it off. ``predict`` is unaffected.

    activation : {"relu", "tanh", "logistic", "identity"}, default="relu"
        Activation of the hidden layers of the leaves and the master leaf.

    standardize : bool, default=True
        Train on the inputs centred and scaled with the (weighted) statistics of the first
        fit's rows, as a ``StandardScaler`` in front would, the scaling folded into the
        fitted weights so that ``predict`` takes raw rows. False trains on the inputs as
        they are.

    max_iter : int, default=200
        Maximum number of epochs of ``fit``, the hardening phase included.

    batch_size : int or "auto", default="auto"
        Rows per mini-batch, at most ``n_samples``. "auto" is 200 for FFFRegressor and, for
        FFFClassifier, ``max(200, min(25 * 2**depth, n_samples // 50))``: 25 rows per leaf
        and step while an epoch keeps at least 50 steps.

    learning_rate_init : float, default=1e-2 (FFFClassifier) or 3e-3 (FFFRegressor)
        Learning rate of the Adam optimizer; the hardening phase uses a tenth of it.

    alpha : float, default=3.0
        Strength of the L2 penalty ``0.5 * alpha * ||W||^2 / n_samples`` on the weights (not
        the biases), as in scikit-learn's MLP. FFFClassifier puts three times this penalty on
        the routing weights, and a group lasso on each feature's routing weights that spares
        features whose class means differ. FFFRegressor lets the penalty and the
        load-balancing loss fade while the fit of the standardised targets is close. The
        leaves of a tree deeper than 6 levels share the penalty of 64 leaves, each taking
        ``64 / 2**depth`` of it, so that a deeper tree holds its shallow subtrees as firmly
        as a depth-6 tree does and ``leaf_tying`` holds its deeper levels.

    leaf_tying : float or "auto", default="auto"
        Strength, in units of ``alpha``, of a penalty that ties the leaves of every subtree
        together: each node of the tree contributes the squared difference between the mean
        weights of the leaves below it and those below its parent. A deviation shared by a
        whole subtree is learnt from all of its rows, while one leaf's deviation from its
        sibling has only that leaf's rows: the penalty holds back most what the fewest rows
        support, so that a deep tree refines its shallower subtrees instead of fitting each
        leaf alone. 0 leaves the leaves independent. ``"auto"`` ties with strength 10 a tree
        deeper than 4 levels and leaves a shallower one untied. ``predict`` is unaffected.

    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training rows (stratified for a classifier),
        or take the ``X_val`` and ``y_val`` passed to ``fit``, score them with hard routing
        after each epoch, end the balancing phase when the score has not improved by ``tol``
        for ``n_iter_no_change`` epochs, and harden the weights of the best epoch.

    validation_fraction : float, default=0.1
        Fraction of the training rows held out when ``early_stopping=True``.

    n_iter_no_change : int, default=10
        Epochs without an improvement of at least ``tol`` before balancing stops.

    tol : float, default=1e-4
        Minimum improvement of the training loss (or of the validation score with
        ``early_stopping=True``) that counts as progress.

    warm_start : bool, default=False
        Continue from the current weights on the next ``fit`` instead of starting afresh.

    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights, the batch order, the training noise and the validation
        split. With an int, fitting twice on the same device gives the same model.

    verbose : int, default=0
        If > 0, report the loss, the validation score and the leaves in use after each epoch
        (with a progress bar when tqdm is installed).

    device : str, default="auto"
        Where to train and predict: "auto" (a CUDA GPU if torch sees one, else the CPU),
        "cpu", "cuda" or "cuda:N". Prediction runs on that GPU when this machine has it and
        on the CPU otherwise, so a model trained on a GPU predicts on a CPU-only machine.

    n_jobs : int, default=None
        Threads for prediction on the CPU, at most 1024. None follows ``OMP_NUM_THREADS`` if
        set and uses every available core otherwise; -1 uses every core, -2 all but one.
"""

_ATTRIBUTES_DOC = """
    arrays_ : FFFArrays
        The fitted network as read-only NumPy arrays; every inference backend reads these.

    leaf_sample_counts_ : ndarray of shape (2**depth,)
        Number of training rows that hard routing sends to each leaf of the fitted model.

    n_features_in_ : int
        Number of features seen during fit.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during fit, when X has string column names.

    n_iter_ : int
        Number of epochs run, over all calls of fit with ``warm_start`` and ``partial_fit``.

    loss_curve_ : list of float
        Mean training objective of each epoch, regularisers included. In the hardening phase
        the routing is frozen, so its load-balancing and L2 terms drop out of the objective.

    best_loss_ : float or None
        Lowest training objective of the balancing phase; None with ``early_stopping=True``.

    validation_scores_ : list of float or None
        Hard-routed score of the held-out rows after each epoch (``early_stopping=True``).

    best_validation_score_ : float or None
        Best validation score of the balancing phase (``early_stopping=True``); the hardening
        phase starts from the weights that scored it.

    device_ : str
        The device the model was trained on.
"""


class FitInterrupted(KeyboardInterrupt):
    """The KeyboardInterrupt that fit re-raises after keeping its last completed epoch."""


class _TrainingData:
    """The validation of what ``fit`` and ``partial_fit`` are given (mixed into the base):
    rows, targets, weights and the validation rows of early stopping."""

    # Rows that a validation score needs: one for accuracy, two for R^2.
    _min_validation_rows = 1

    def _training_data(self, X, y, sample_weight, first_call, incremental, classes):
        """The validated rows (float64 where they were given so, see
        :meth:`InputPreparation.network_rows`), targets, encoded targets and row weights of a
        fit."""
        X, y = validate_data(
            self,
            X,
            y,
            reset=first_call,
            accept_sparse="csr",
            dtype=(np.float64, np.float32),
            multi_output=True,
            y_numeric=self._task == "regression",
        )
        y_encoded = self._encode_targets(y, first_call, classes)
        sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        sample_weight = self._weigh_targets(y_encoded, sample_weight, incremental)
        if not np.any(sample_weight):
            raise ValueError("Sample weights must contain at least one non-zero weight.")
        if np.any(sample_weight < 0):
            raise ValueError("Sample weights must be non-negative.")
        # Only the weights' ratios matter to training; relative to their mean they survive
        # the cast to float32 however small or large the user's were.
        sample_weight = (sample_weight / _mean_of_positive(sample_weight)).astype(np.float32)
        return X, y, y_encoded, sample_weight

    def _held_out_scoring(self, X, y_encoded, sample_weight, validation, rng):
        """The training rows, and the function that scores a model on the validation rows
        (the user's, or a split of ``X``) under ``early_stopping``, else None."""
        X_val, y_val, weight_val = self._check_validation_data(*validation)
        if not self.early_stopping:  # partial_fit has refused it already
            return X, y_encoded, sample_weight, None
        if X_val is None:
            X, X_val, y_encoded, y_val, sample_weight = _validation_split(
                X, y_encoded, sample_weight, self.validation_fraction,
                self._min_validation_rows, self._stratification, rng,
            )
        inference_options = prediction_options(self.device, self.n_jobs)

        def validation_score(arrays):
            outputs = inference.hard_forward(arrays, X_val, **inference_options)[0]
            return self._score_outputs(outputs, y_val, weight_val)

        return X, y_encoded, sample_weight, validation_score

    def _check_validation_data(self, X_val, y_val, sample_weight_val):
        """Validate the validation rows passed to ``fit``: (X_val, encoded y_val, weights),
        or Nones when there are none."""
        if X_val is None and y_val is None:
            if sample_weight_val is not None:
                raise ValueError("sample_weight_val is provided, but X_val and y_val are not.")
            return None, None, None
        if X_val is None or y_val is None:
            given, missing = ("X_val", "y_val") if y_val is None else ("y_val", "X_val")
            raise ValueError(f"{given} is provided, but {missing} was not provided.")
        if not self.early_stopping:
            raise ValueError(
                "X_val and y_val are passed to fit while early_stopping=False: they are only "
                "used for early stopping. Set early_stopping=True."
            )
        X_val = validate_data(self, X_val, reset=False, accept_sparse="csr",
                              dtype=(np.float64, np.float32))
        X_val = self._preparation.network_rows(X_val).astype(np.float32, copy=False)
        y_val = self._encode_targets(
            y_val, False
        )
        check_consistent_length(X_val, y_val)
        if X_val.shape[0] < self._min_validation_rows:
            raise ValueError(
                f"X_val has {X_val.shape[0]} row; scoring it needs at least "
                f"{self._min_validation_rows}."
            )
        if sample_weight_val is not None:
            sample_weight_val = _check_sample_weight(sample_weight_val, X_val, dtype=np.float64)
            if (sample_weight_val < 0).any() or not sample_weight_val.any():
                raise ValueError(
                    "sample_weight_val must be non-negative, with at least one non-zero weight."
                )
        return X_val, y_val, sample_weight_val

    def _stratification(self, y_encoded, n_val):
        """The labels to stratify the validation split by, or None."""
        return None


class BaseFFF(_TrainingData, HardRoutedPrediction, TorchInterop, FittedStatePersistence,
              CallbackSupportMixin, BaseEstimator, metaclass=ABCMeta):
    """Shared implementation of the FFF estimators; use FFFClassifier or FFFRegressor."""

    _parameter_constraints = {
        "depth": [Interval(Integral, 0, MAX_DEPTH, closed="both")],
        "leaf_width": [Interval(Integral, 1, None, closed="left")],
        "master_leaf_width": [Interval(Integral, 0, None, closed="left")],
        "load_balancing": [Interval(Real, 0, None, closed="left")],
        "hardening_epochs": [Interval(Integral, 0, None, closed="left")],
        "projection_rank": [Interval(Integral, 1, None, closed="left"), None],
        "input_noise": [Interval(Real, 0, None, closed="left")],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "standardize": ["boolean"],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "leaf_tying": [StrOptions({"auto"}), Interval(Real, 0, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "warm_start": ["boolean"],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "device": [str],
        "n_jobs": [
            Interval(Integral, -MAX_THREADS, -1, closed="both"),
            Interval(Integral, 1, MAX_THREADS, closed="both"),
            None,
        ],
    }

    _task = None  # "classification" or "regression", set by the subclasses

    # The research seams: a subclass of the estimator that sets an FFFNetwork subclass here
    # (a forward of its own) trains that network, and one that sets a Trainer subclass (a
    # step or an epoch of its own) trains with it; None means FFFNetwork and Trainer.
    _network_class = None
    _trainer_class = None

    @abstractmethod
    def __init__(
        self,
        depth,
        leaf_width,
        master_leaf_width,
        load_balancing,
        hardening_epochs,
        projection_rank,
        input_noise,
        activation,
        standardize,
        max_iter,
        batch_size,
        learning_rate_init,
        alpha,
        leaf_tying,
        early_stopping,
        validation_fraction,
        n_iter_no_change,
        tol,
        warm_start,
        random_state,
        verbose,
        device,
        n_jobs,
    ):
        self.depth = depth
        self.leaf_width = leaf_width
        self.master_leaf_width = master_leaf_width
        self.load_balancing = load_balancing
        self.hardening_epochs = hardening_epochs
        self.projection_rank = projection_rank
        self.input_noise = input_noise
        self.activation = activation
        self.standardize = standardize
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.alpha = alpha
        self.leaf_tying = leaf_tying
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.warm_start = warm_start
        self.random_state = random_state
        self.verbose = verbose
        self.device = device
        self.n_jobs = n_jobs

    # ----------------------------------------------------------------------------- targets
    @abstractmethod
    def _encode_targets(self, y, first_call, classes=None):
        """Validate ``y`` and turn it into what the loss takes; set target attributes on the
        first call. Returns a NumPy array (class indices or standardised float targets)."""

    @abstractmethod
    def _n_network_outputs(self):
        """Number of raw outputs of the network (classes or targets)."""

    @abstractmethod
    def _score_outputs(self, outputs, y_encoded, sample_weight=None):
        """Validation score of raw hard-routed ``outputs`` against encoded targets."""

    def _weigh_targets(self, y_encoded, sample_weight, incremental):
        """The row weights of training, from the user's: the classifier's class weights."""
        return sample_weight

    # ----------------------------------------------------------------------------- fitting
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None, *, X_val=None, y_val=None, sample_weight_val=None):
        """Fit the network to ``X`` and ``y``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Class labels (classifier) or target values (regressor).
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the rows in the loss; None weighs every row equally. Each row counts
            in proportion to its weight over the mean weight of all rows, so a mini-batch
            whose weights are all zero (bootstrap counts from bagging) adds only the
            regularisers, and an epoch weighs each row by its weight.
        X_val : array-like of shape (n_val, n_features), default=None
            Validation rows of your own for early stopping, used instead of holding out
            ``validation_fraction`` of ``X``; needs ``early_stopping=True``. In a Pipeline,
            ``Pipeline(..., transform_input=["X_val"])`` transforms them as ``X``.
        y_val : array-like of shape (n_val,) or (n_val, n_targets), default=None
            Their labels or targets.
        sample_weight_val : array-like of shape (n_val,), default=None
            Weights of the validation rows in the score.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        first_call = not (self.warm_start and hasattr(self, "arrays_"))
        # Set up before the working copy is taken, so that the copy carries the context and
        # scikit-learn's teardown of the callbacks finds it here, whatever the fit does.
        context = self._init_callback_context(max_subtasks=self.max_iter)
        self._fit_and_publish(
            X, y, sample_weight, first_call=first_call, incremental=False,
            validation=(X_val, y_val, sample_weight_val), callback_context=context,
        )
        return self

    def _partial_fit(self, X, y, sample_weight, classes):
        if self.early_stopping:
            raise ValueError(
                "partial_fit does not support early_stopping=True: it runs exactly one epoch "
                "on the rows it is given. Hold out rows yourself and score them instead."
            )
        first_call = not hasattr(self, "arrays_")
        context = self._init_callback_context(max_subtasks=1)
        self._fit_and_publish(X, y, sample_weight, first_call=first_call, incremental=True,
                              classes=classes, callback_context=context)
        return self

    def _fit_and_publish(self, *args, **kwargs):
        """``_fit`` on a working copy, whose state replaces this estimator's when it succeeds
        (or is interrupted after an epoch, which keeps that epoch on purpose); a fit that
        fails leaves this estimator as it was."""
        staged = self._snapshot()
        try:
            with short_gil_waits():
                staged._fit(*args, callback_estimator=self, **kwargs)
        except FitInterrupted:
            self.__dict__ = staged.__dict__
            raise
        except BaseException:
            # The network of a warm start or partial_fit trained in place: the next one starts
            # afresh from arrays_.
            self.__dict__.pop("_trainer", None)
            raise
        self.__dict__ = staged.__dict__

    def _fit(self, X, y, sample_weight, *, first_call, incremental, classes=None,
             validation=(None, None, None), callback_context=None, callback_estimator=None):
        device = training_device(self.device)
        X, y, y_encoded, sample_weight = self._training_data(
            X, y, sample_weight, first_call, incremental, classes
        )
        callback_data = {"X": X, "y": y, "metadata": {"sample_weight": sample_weight}}
        if first_call:
            self._preparation = InputPreparation(
                standardize=self.standardize, statistics=bool(self.input_noise)
            ).fit_offset(X)
        X = self._preparation.network_rows(X).astype(np.float32, copy=False)
        if incremental and not first_call:
            _warn_about_drift(type(self).__name__, self._preparation, X, sample_weight)
        rng = check_random_state(self.random_state)
        X, y_encoded, sample_weight, validation_score = self._held_out_scoring(
            X, y_encoded, sample_weight, validation, rng
        )
        if first_call:
            self._preparation.fit(X, sample_weight, **self._preparation_targets(y_encoded))
        recipe = self._recipe(X.shape[0], incremental)
        _check_training_memory(X.shape[1], self._n_network_outputs(), recipe)
        trainer = self._trainer_for(X, sample_weight, rng, device, first_call, incremental,
                                    recipe)
        n_iter = 0 if first_call else self.n_iter_
        reporter = EpochReporter(self.verbose, recipe.schedule.max_epochs, type(self).__name__)
        # The callbacks see the estimator that fit was called on; the fitted estimator they
        # get is a copy of it that takes this working copy's state.
        if callback_context is not None:
            callback_context.call_on_fit_task_begin(estimator=callback_estimator,
                                                    **callback_data)
        report = EpochHooks(reporter, callback_context, callback_estimator, self, n_iter,
                            **callback_data)
        try:
            result = trainer.fit(
                X, y_encoded, sample_weight, recipe.schedule,
                validation_score=validation_score,
                best_loss=np.inf if first_call or self.best_loss_ is None else self.best_loss_,
                hooks=[report],
            )
        finally:
            reporter.close()
        self._store_result(result, trainer, device, X, first_call, n_iter)
        if callback_context is not None:
            callback_context.call_on_fit_task_end(
                estimator=callback_estimator, **callback_data,
                reconstruction_attributes=lambda: dict(vars(self)),
            )
        _warn_about_stop(type(self).__name__, self.n_iter_, result.stop_reason, incremental,
                         recipe.schedule.max_epochs)

    def _recipe(self, n_samples, incremental):
        """The recipe of a fit on ``n_samples`` rows (``partial_fit``'s one epoch when
        ``incremental``): this estimator's parameters and the numbers its class adds."""
        batch_size = self.batch_size
        if batch_size == "auto":
            batch_size = self._auto_batch_size(n_samples)
        max_epochs = 1 if incremental else self.max_iter
        schedule = Schedule(
            max_epochs=max_epochs,
            batch_size=min(batch_size, n_samples),
            # At most a quarter of max_iter, so that a short fit still mostly balances.
            hardening_epochs=0 if incremental else min(self.hardening_epochs, max_epochs // 4),
            n_iter_no_change=self.n_iter_no_change,
            tol=self.tol,
        )
        return Recipe(
            depth=self.depth, leaf_width=self.leaf_width,
            master_leaf_width=self.master_leaf_width, activation=self.activation,
            projection_rank=self.projection_rank, loss=self._loss(),
            learning_rate=self.learning_rate_init, alpha=self.alpha,
            load_balancing=self.load_balancing, input_noise=self.input_noise,
            routing_decay_factor=self._ROUTING_DECAY_FACTOR,
            leaf_decay_factor=min(1.0, self._FULLY_DECAYED_LEAVES / 2**self.depth),
            routing_group_lasso=self._ROUTING_GROUP_LASSO, leaf_tying=self._leaf_tying(),
            schedule=schedule,
        )

    # Under leaf_tying="auto": the strength, and the depth from which it applies. The tie
    # pays from depth 6 on and is level at depth 4, where it lengthens the fit.
    _AUTO_LEAF_TYING = 10.0
    _AUTO_LEAF_TYING_MIN_DEPTH = 5

    def _leaf_tying(self):
        """The strength of the leaf tying, ``leaf_tying`` resolved."""
        if self.leaf_tying != "auto":
            return float(self.leaf_tying)
        return self._AUTO_LEAF_TYING if self.depth >= self._AUTO_LEAF_TYING_MIN_DEPTH else 0.0

    # Summed over the leaves, the L2 penalty holds a subtree's mean leaf in proportion to
    # the leaves below it: a tree two levels deeper held its depth-6 structure four times
    # as firmly as a depth-6 tree does, and fitted it worse. Beyond this many leaves they
    # share the penalty of this many, and leaf_tying holds the deeper levels.
    _FULLY_DECAYED_LEAVES = 64

    @abstractmethod
    def _loss(self):
        """The data loss of training (a :mod:`fffsklearn._losses` object)."""

    def _trainer_for(self, X, sample_weight, rng, device, first_call, incremental, recipe):
        """The trainer of this call: a fresh one, or ``partial_fit``'s, which goes on with the
        recipe it was made with (the schedule is the call's)."""
        if not first_call:
            _check_same_network_shape(self.arrays_, recipe)
        # As in scikit-learn's MLP, only partial_fit keeps the optimizer: a warm-started fit
        # starts a fresh one from the current weights, so that changed hyper-parameters
        # (learning_rate_init, load_balancing, ...) take effect.
        if not (first_call or not incremental or getattr(self, "_trainer", None) is None):
            self._trainer.start_balancing()
            return self._trainer
        from ._training import Trainer

        seed = int(rng.randint(np.iinfo(np.int32).max - 1))
        preparation = self._preparation
        # Only a fresh network starts from them: any other loads its fitted weights.
        projection_directions = None
        if first_call and self.projection_rank is not None:
            projection_directions = preparation.principal_directions(
                X, sample_weight, self.projection_rank, seed
            )
        trainer_class = Trainer if self._trainer_class is None else self._trainer_class
        trainer = trainer_class.create(
            X.shape[1], self._n_network_outputs(), recipe, device, seed,
            input_scaling=preparation.scaling,
            input_noise=preparation.noise_std(recipe.input_noise, X, sample_weight),
            routing_feature_penalties=preparation.routing_feature_penalties_,
            projection_directions=projection_directions, network_class=self._network_class,
        )
        if not first_call:
            trainer.load_deployed(self.arrays_)
        return trainer

    def _store_result(self, result, trainer, device, X, first_call, n_iter):
        """Set the fitted attributes from the trainer's ``result``."""
        self.arrays_ = result.arrays
        self._trainer = trainer
        self.device_ = str(device)
        self.n_iter_ = n_iter + result.n_epochs
        self.loss_curve_ = ([] if first_call else self.loss_curve_) + result.loss_curve
        self.best_loss_ = None if self.early_stopping else float(result.best_loss)
        if self.early_stopping:
            self.validation_scores_ = (
                [] if first_call else list(self.validation_scores_ or [])
            ) + result.validation_scores
            self.best_validation_score_ = float(result.best_validation_score)
        else:
            self.validation_scores_ = self.best_validation_score_ = None
        self.leaf_sample_counts_ = self._count_leaves(X)

    def _preparation_targets(self, y_encoded):
        """The targets that the input preparation reads besides the rows (see
        :meth:`InputPreparation.fit`): none, unless the routing penalties need classes."""
        return {}

    # Rows per mini-batch under batch_size="auto", as scikit-learn's MLP.
    _AUTO_BATCH_ROWS = 200

    def _auto_batch_size(self, n_samples):
        """The mini-batch of ``batch_size="auto"`` for ``n_samples`` training rows, before
        the cap at ``n_samples``."""
        return self._AUTO_BATCH_ROWS

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = True
        return tags


def _mean_of_positive(weights):
    """The mean of non-negative float64 ``weights`` with one positive, computed relative to
    their largest so that weights near float64's limits neither overflow nor underflow."""
    largest = weights.max()
    return (weights / largest).mean() * largest


def _validation_split(X, y_encoded, sample_weight, fraction, min_rows, stratification, rng):
    """Hold out ``fraction`` of the rows for early stopping: (X_train, X_val, y_train, y_val,
    w_train), stratified by ``stratification(y_encoded, n_val)`` where that gives labels."""
    n_val = int(np.ceil(fraction * X.shape[0]))  # as train_test_split
    if n_val < min_rows or X.shape[0] - n_val < 1:
        raise ValueError(
            f"early_stopping=True holds out validation_fraction={fraction} of the "
            f"{X.shape[0]} rows, {n_val}; scoring them needs at least {min_rows} and training "
            "at least 1 more. Pass more rows, change validation_fraction or set "
            "early_stopping=False."
        )
    X_train, X_val, y_train, y_val, w_train, _ = train_test_split(
        X,
        y_encoded,
        sample_weight,
        test_size=fraction,
        random_state=rng.randint(np.iinfo(np.int32).max),
        stratify=stratification(y_encoded, n_val),
    )
    if not np.any(w_train):
        raise ValueError("Sample weights of the training split are all zero.")
    return X_train, X_val, y_train, y_val, w_train


def _check_training_memory(n_features, n_outputs, recipe):
    """Refuse up front a fit whose working set would not fit in memory: training
    computes every leaf for every row of a batch, so it grows with ``2**depth``."""
    from ._training import training_memory_bytes

    batch_size = recipe.schedule.batch_size
    needed = training_memory_bytes(
        n_features, n_outputs, recipe.depth, recipe.leaf_width, recipe.master_leaf_width,
        batch_size, projection_rank=recipe.projection_rank,
    )
    available = physical_memory_bytes()
    if available is not None and needed > TRAINING_MEMORY_FRACTION * available:
        raise ValueError(
            f"Training depth={recipe.depth}, leaf_width={recipe.leaf_width} with batch_size="
            f"{batch_size} on {n_features} features needs about {needed / 2**30:.1f} GiB, "
            f"more than {TRAINING_MEMORY_FRACTION:.0%} of this machine's "
            f"{available / 2**30:.1f} GiB. Each level of depth doubles it: lower depth, "
            "leaf_width or batch_size."
        )


def _warn_about_stop(name, n_iter, stop_reason, incremental, max_epochs):
    """The interrupted fit's warning and FitInterrupted, or the ConvergenceWarning of a fit
    that ran out of epochs."""
    if stop_reason == "interrupted":
        warnings.warn(
            f"{name}.fit was interrupted; the estimator keeps the weights "
            f"of its last completed epoch ({n_iter}). Call fit with warm_start=True "
            "or partial_fit to continue from there.",
            UserWarning,
        )
        raise FitInterrupted()
    if not incremental and stop_reason == "max_iter":
        warnings.warn(
            f"{name}: maximum iterations ({max_epochs}) reached and the "
            "optimization hasn't converged yet.",
            ConvergenceWarning,
        )


def _warn_about_drift(name, preparation, X, sample_weight):
    """Warn when a later batch of partial_fit lies far outside the statistics of the first,
    which standardise every batch."""
    drifted = preparation.drifted_features(X, sample_weight)
    if drifted.size:
        shown = ", ".join(map(str, drifted[:10])) + (", ..." if drifted.size > 10 else "")
        warnings.warn(
            f"{name}.partial_fit: feature(s) {shown} of this batch spread more than "
            f"{DRIFT_RATIO} times as widely as in the first batch, or lie that many spreads "
            "from its mean (a feature constant in the first batch, or drifting). The first "
            "batch's statistics standardise every later batch: give partial_fit a "
            "representative first batch, or scale the features yourself (a StandardScaler "
            "fitted on enough of the data) and pass standardize=False.",
            UserWarning,
        )


def _check_same_network_shape(arrays, recipe):
    """Refuse to continue from fitted ``arrays`` into a network of another shape (a warm start
    or ``partial_fit`` after ``set_params``), naming the parameter that changed."""
    fitted = {"depth": arrays.depth, "leaf_width": arrays.leaf_width,
              "master_leaf_width": arrays.master_leaf_width, "activation": arrays.activation}
    for name, value in fitted.items():
        if getattr(recipe, name) != value:
            raise ValueError(
                f"{name}={getattr(recipe, name)!r} differs from the fitted network's {value!r}: "
                "a warm start or partial_fit continues the fitted weights, which need the same "
                "network. Set warm_start=False (or refit) to start afresh."
            )
