"""Multi-label classification: one FFF with a sigmoid per label against its anchors.

On ``make_multilabel_classification`` (6,000 rows, 20 count features, 6 labels; a quarter
held out), three seeds: subset accuracy, per-label accuracy, fit time and predict time per
row of ``FFFClassifier`` at several depths, of ``MLPClassifier((32,))`` (about the active
width of a default FFF) behind a ``StandardScaler``, and of ``MultiOutputClassifier`` around
an FFF (one tree per label), all measured in the same run.

    python bench_multilabel.py [--quick]
"""

import argparse
import time
import warnings

import numpy as np
from sklearn.datasets import make_multilabel_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.multioutput import MultiOutputClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fffsklearn import FFFClassifier


def measure(make_model, X_train, X_test, Y_train, Y_test, seeds):
    """Means over ``seeds`` of subset accuracy, per-label accuracy, fit seconds and predict
    microseconds per row."""
    rows = []
    for seed in seeds:
        model = make_model(seed)
        start = time.perf_counter()
        model.fit(X_train, Y_train)
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        predicted = model.predict(X_test)
        predict_us = (time.perf_counter() - start) / len(X_test) * 1e6
        rows.append((accuracy_score(Y_test, predicted), (predicted == Y_test).mean(),
                     fit_seconds, predict_us))
    return np.mean(rows, axis=0), np.std(np.array(rows)[:, 0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, fewer models")
    args = parser.parse_args()
    seeds = [0] if args.quick else [0, 1, 2]
    X, Y = make_multilabel_classification(n_samples=6000, n_features=20, n_classes=6,
                                          random_state=0)
    split = train_test_split(X, Y, test_size=0.25, random_state=0)
    models = {
        "MLPClassifier((32,)), scaled": lambda s: make_pipeline(
            StandardScaler(), MLPClassifier((32,), max_iter=300, random_state=s)),
        "FFFClassifier(depth=0)": lambda s: FFFClassifier(depth=0, random_state=s),
        "FFFClassifier(depth=2)": lambda s: FFFClassifier(depth=2, random_state=s),
        "FFFClassifier() (defaults)": lambda s: FFFClassifier(random_state=s),
    }
    if not args.quick:
        models["MultiOutputClassifier(FFFClassifier())"] = lambda s: MultiOutputClassifier(
            FFFClassifier(random_state=s))
    print(f"{'model':42s} {'subset acc':>15s} {'label acc':>10s} {'fit (s)':>8s} "
          f"{'predict us/row':>15s}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name, make_model in models.items():
            (subset, label, fit_s, predict_us), spread = measure(make_model, *split, seeds)
            print(f"{name:42s} {subset:8.3f} ± {spread:.3f} {label:10.3f} {fit_s:8.2f} "
                  f"{predict_us:15.2f}")


if __name__ == "__main__":
    main()
