"""What the estimator options of issue #15 change, on one imbalanced data set, three seeds.

An imbalanced three-class ``make_classification`` (80% / 15% / 5% of 8,000 rows, 20
features, a quarter held out for testing). Each row of the table fits ``FFFClassifier(depth=4)``
with one option changed from the defaults and reports held-out accuracy, balanced accuracy,
the recall of the rarest class and the fit time, as means over the seeds:

- ``class_weight="balanced"``;
- ``early_stopping=True``, holding out ``validation_fraction=0.1`` of the training rows,
  against a tenth split off outside ``fit`` (another draw of the same size) and passed as
  ``X_val``/``y_val``, the rest trained on;
- a ``sklearn.callback.ScoringMonitor`` scoring every epoch (scikit-learn 1.9 or later).

Usage::

    python benchmarks/bench_estimator_options.py
"""

import time
import warnings

import numpy as np
from _common import describe_threads
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import balanced_accuracy_score, recall_score
from sklearn.model_selection import train_test_split

from fffsklearn import FFFClassifier

SEEDS = (0, 1, 2)


def data(seed):
    X, y = make_classification(
        n_samples=8000,
        n_features=20,
        n_informative=10,
        n_classes=3,
        weights=[0.8, 0.15, 0.05],
        class_sep=0.8,
        random_state=seed,
    )
    return train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y)


def scoring_monitor():
    from sklearn.callback import ScoringMonitor

    return ScoringMonitor(scoring="accuracy")


def run(option, seed):
    X_train, X_test, y_train, y_test = data(seed)
    params = dict(depth=4, random_state=seed)
    fit_params = {}
    callbacks = ()
    if option == "class_weight='balanced'":
        params["class_weight"] = "balanced"
    elif option == "early_stopping, validation_fraction=0.1":
        params["early_stopping"] = True
    elif option == "early_stopping, the same rows as X_val":
        # A split of the size early_stopping makes inside fit, made outside and passed in.
        X_train, X_val, y_train, y_val = train_test_split(
            X_train, y_train, test_size=0.1, random_state=seed, stratify=y_train
        )
        params["early_stopping"] = True
        fit_params = {"X_val": X_val, "y_val": y_val}
    elif option == "ScoringMonitor every epoch":
        callbacks = (scoring_monitor(),)
    model = FFFClassifier(**params)
    if callbacks:
        model.set_callbacks(*callbacks)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X_train, y_train, **fit_params)
    seconds = time.perf_counter() - start
    predicted = model.predict(X_test)
    return (
        np.mean(predicted == y_test),
        balanced_accuracy_score(y_test, predicted),
        recall_score(y_test, predicted, labels=[2], average="macro"),
        seconds,
        model.n_iter_,
    )


def main():
    options = [
        "defaults",
        "class_weight='balanced'",
        "early_stopping, validation_fraction=0.1",
        "early_stopping, the same rows as X_val",
    ]
    try:
        scoring_monitor()
        options.append("ScoringMonitor every epoch")
    except ImportError:
        print("scikit-learn has no sklearn.callback: the ScoringMonitor row is left out")
    print(f"{describe_threads()}; seeds {SEEDS}")
    print(
        f"{'option':<42}{'accuracy':>10}{'balanced':>10}{'rare recall':>13}"
        f"{'fit s':>8}{'epochs':>8}"
    )
    for option in options:
        results = np.array([run(option, seed) for seed in SEEDS])
        accuracy, balanced, rare, seconds, epochs = results.mean(axis=0)
        print(
            f"{option:<42}{accuracy:>10.4f}{balanced:>10.4f}{rare:>13.4f}{seconds:>8.1f}"
            f"{epochs:>8.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
