"""Per-epoch reports of a fit: verbose lines (with a progress bar when tqdm is installed) and
scikit-learn's callbacks (``sklearn.callback``, scikit-learn 1.9 and later)."""

import numpy as np

try:
    from tqdm.auto import tqdm
except ImportError:  # tqdm is the optional extra fffsklearn[progress]
    tqdm = None

try:
    from sklearn.callback import CallbackSupportMixin
except ImportError:  # scikit-learn before 1.9: no callback API, set_callbacks is absent

    class CallbackSupportMixin:
        """Stands in for scikit-learn's callback support where the installed version lacks it."""

        def _init_callback_context(self, **kwargs):
            return None


class EpochReporter:
    """Prints one line per epoch when ``verbose > 0``: loss, validation score, leaves in use.

    Parameters
    ----------
    verbose : int
        Nothing is reported when 0.
    epochs : int
        Length of the progress bar.
    name : str
        Prefix of the lines, the estimator's class name.
    """

    def __init__(self, verbose, epochs, name):
        self.verbose = verbose
        self.name = name
        self.bar = None
        if verbose and tqdm is not None and epochs > 1:
            self.bar = tqdm(total=epochs, desc=name, unit="epoch", leave=False)

    def epoch(self, n_iter, loss, validation_score, leaf_counts):
        if not self.verbose:
            return
        used = int(np.count_nonzero(leaf_counts))
        line = f"{self.name} iteration {n_iter}, loss = {loss:.6f}"
        if validation_score is not None:
            line += f", validation score = {validation_score:.6f}"
        line += f", leaves used = {used}/{len(leaf_counts)}"
        if self.bar is not None:
            self.bar.update(1)
            self.bar.write(line)
        else:
            print(line)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class EpochHooks:
    """Hook of the training loop (:mod:`fffsklearn._phases`): the verbose report and
    scikit-learn's callbacks around each epoch.

    Each epoch is a subtask ("epoch") of the fit's callback context; at its end the callbacks
    get a copy of the estimator fitted with that epoch's weights (built only if a callback
    asks for it), and a callback that returns True ends training after that epoch.

    Parameters
    ----------
    reporter : EpochReporter
    context : sklearn.callback.CallbackContext or None
        The fit's callback context; None where callbacks are not supported.
    estimator : estimator
        The estimator that the callbacks see.
    fitted_state : estimator
        The fit's working copy of it: its attributes, with an epoch's weights, make the
        fitted estimator that the callbacks get.
    first_epoch : int
        Epochs run before this call (``n_iter_`` of a warm start).
    X, y, metadata
        What the callbacks receive: the training rows, their targets and
        ``{"sample_weight": ...}`` or None.
    """

    def __init__(self, reporter, context, estimator, fitted_state, first_epoch, X, y, metadata):
        self.reporter = reporter
        self.context = context
        self.estimator = estimator
        self.fitted_state = fitted_state
        self.first_epoch = first_epoch
        self.data = {"X": X, "y": y, "metadata": metadata}
        self.task = None

    def on_epoch_begin(self, trainer):
        if self.context is not None:
            self.task = self.context.subcontext(task_name="epoch")
            self.task.call_on_fit_task_begin(estimator=self.estimator, **self.data)

    def on_epoch_end(self, trainer, epoch):
        self.reporter.epoch(self.first_epoch + epoch.index + 1, epoch.loss, epoch.score,
                            epoch.leaf_counts)
        if self.task is not None and self.task.call_on_fit_task_end(
            estimator=self.estimator, **self.data,
            reconstruction_attributes=lambda: {**vars(self.fitted_state),
                                               "arrays_": epoch.arrays()},
        ):
            trainer.stop_reason = "callback"
            epoch.stop()
