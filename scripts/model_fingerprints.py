"""Fingerprints of fitted models, to show that a refactoring trains the same models.

Fits a fixed set of configurations (classifier and regressor, early stopping on ``X_val`` and
on the internal split, warm start, ``partial_fit``, class weights, multi-output, an
interrupted fit) with fixed seeds, and records what each model predicts, its loss curve and
its fitted arrays.

    python scripts/model_fingerprints.py --save before.npz    # on the old code
    python scripts/model_fingerprints.py --compare before.npz # on the new code

``--compare`` prints, for every configuration, the largest absolute difference of each
recorded array (0 means equal to the bit) and exits 1 where one exceeds ``--atol``.
"""

import argparse
import sys
import warnings

import numpy as np
from sklearn.datasets import load_digits, make_friedman1, make_regression
from sklearn.exceptions import ConvergenceWarning

from fffsklearn import FFFClassifier, FFFRegressor
from fffsklearn._testing import EpochCallback


class _InterruptAfter(EpochCallback):
    """Interrupts the fit at the end of epoch ``n``."""

    def __init__(self, n):
        self.n = n

    def epoch_end(self, epoch, fitted_estimator):
        if epoch == self.n:
            raise KeyboardInterrupt
        return False


def _data():
    X, y = load_digits(return_X_y=True)
    Xr, yr = make_friedman1(n_samples=1200, random_state=0)
    Xm, ym = make_regression(n_samples=600, n_features=8, n_targets=3, noise=5.0,
                             random_state=0)
    return (X[:1200], y[:1200], X[1200:]), (Xr[:1000], yr[:1000], Xr[1000:]), (Xm, ym)


def _record(model, X_test):
    record = {"loss_curve": np.asarray(model.loss_curve_, dtype=np.float64),
              "n_iter": np.asarray(model.n_iter_)}
    if hasattr(model, "predict_proba"):
        record["predict_proba"] = model.predict_proba(X_test)
    record["predict"] = np.asarray(model.predict(X_test), dtype=np.float64)
    for name in model.arrays_.ARRAY_NAMES:
        record[f"arrays.{name}"] = getattr(model.arrays_, name)
    if model.validation_scores_ is not None:
        record["validation_scores"] = np.asarray(model.validation_scores_)
    return record


def fingerprints():
    (X, y, X_test), (Xr, yr, Xr_test), (Xm, ym) = _data()
    small = dict(max_iter=12, hardening_epochs=3, random_state=0)
    records = {}

    records["classifier"] = _record(FFFClassifier(depth=3, **small).fit(X, y), X_test)
    records["regressor"] = _record(FFFRegressor(depth=3, **small).fit(Xr, yr), Xr_test)
    records["classifier_early_stopping_X_val"] = _record(
        FFFClassifier(depth=3, early_stopping=True, n_iter_no_change=2, **small).fit(
            X[:1000], y[:1000], X_val=X[1000:], y_val=y[1000:]), X_test)
    records["regressor_early_stopping_split"] = _record(
        FFFRegressor(depth=2, early_stopping=True, n_iter_no_change=2, **small).fit(Xr, yr),
        Xr_test)
    warm = FFFClassifier(depth=2, warm_start=True, **small).fit(X, y)
    records["classifier_warm_start"] = _record(warm.set_params(max_iter=5).fit(X, y), X_test)
    streamed = FFFClassifier(depth=2, random_state=0)
    for part in np.array_split(np.arange(len(X)), 4):
        streamed.partial_fit(X[part], y[part], classes=np.arange(10))
    records["classifier_partial_fit"] = _record(streamed, X_test)
    records["classifier_class_weight"] = _record(
        FFFClassifier(depth=2, class_weight="balanced", **small).fit(X, y % 3), X_test)
    records["regressor_multi_output"] = _record(
        FFFRegressor(depth=2, **small).fit(Xm, ym), Xm)
    interrupted = FFFClassifier(depth=2, **small).set_callbacks(_InterruptAfter(4))
    try:
        interrupted.fit(X, y)
    except KeyboardInterrupt:
        pass
    records["classifier_interrupted"] = _record(interrupted, X_test)
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--save", metavar="PATH")
    action.add_argument("--compare", metavar="PATH")
    parser.add_argument("--atol", type=float, default=0.0)
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (ConvergenceWarning, UserWarning))
        records = fingerprints()
    flat = {f"{config}/{key}": value for config, record in records.items()
            for key, value in record.items()}
    if args.save:
        np.savez(args.save, **flat)
        print(f"saved {len(records)} configurations, {len(flat)} arrays to {args.save}")
        return 0
    saved = np.load(args.compare)
    worst = 0.0
    for config in records:
        keys = sorted(k for k in set(saved.files) | set(flat) if k.startswith(config + "/"))
        diffs = []
        for key in keys:
            if key not in saved.files or key not in flat:
                diffs.append((key.split("/", 1)[1], "missing"))
                worst = np.inf
                continue
            a, b = saved[key], flat[key]
            diff = np.inf if a.shape != b.shape else float(np.max(np.abs(a - b), initial=0.0))
            worst = max(worst, diff)
            diffs.append((key.split("/", 1)[1], diff))
        largest = max((d for _, d in diffs if d != "missing"), default=0.0)
        print(f"{config:36s} max |diff| {largest:.3g}  "
              + ", ".join(f"{k}={d}" for k, d in diffs if d == "missing" or d > 0))
    print(f"largest difference: {worst:.3g}")
    return 0 if worst <= args.atol else 1


if __name__ == "__main__":
    sys.exit(main())
