"""Multi-label classification: one FFF with a sigmoid per label against its anchors.

Two data sets, a quarter of each held out, three seeds:

- ``make_multilabel_classification`` (6,000 rows, 20 count features, 6 labels);
- the handwritten digits that scikit-learn ships (1,797 images of 8x8 pixels), each
  labelled with five properties of its digit: even, at least 5, prime, a multiple of 3,
  drawn with a closed loop (0, 4, 6, 8, 9).

Subset accuracy, per-label accuracy, fit time and predict time per row of ``FFFClassifier``
at several depths, of ``MLPClassifier((32,))`` (about the active width of a default FFF)
behind a ``StandardScaler``, and of ``MultiOutputClassifier`` around an FFF (one tree per
label), all measured in the same run.

    python bench_multilabel.py [--quick]
"""

import argparse
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits, make_multilabel_classification
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


def digit_properties():
    """The digits' images, and five 0/1 properties of each image's digit."""
    X, digit = load_digits(return_X_y=True)
    properties = [
        digit % 2 == 0,
        digit >= 5,
        np.isin(digit, [2, 3, 5, 7]),
        digit % 3 == 0,
        np.isin(digit, [0, 4, 6, 8, 9]),
    ]
    return X, np.column_stack(properties).astype(int)


def data_sets():
    yield "make_multilabel_classification, 6 labels", make_multilabel_classification(
        n_samples=6000, n_features=20, n_classes=6, random_state=0)
    yield "digits, 5 properties of the digit", digit_properties()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, fewer models")
    args = parser.parse_args()
    seeds = [0] if args.quick else [0, 1, 2]
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
    for title, (X, Y) in data_sets():
        split = train_test_split(X, Y, test_size=0.25, random_state=0)
        print(f"\n{title}: {len(X)} rows, {X.shape[1]} features, seeds {seeds}")
        print(f"{'model':42s} {'subset acc':>15s} {'label acc':>10s} {'fit (s)':>8s} "
              f"{'predict us/row':>15s}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for name, make_model in models.items():
                (subset, label, fit_s, predict_us), spread = measure(make_model, *split, seeds)
                print(f"{name:42s} {subset:8.3f} ± {spread:.3f} {label:10.3f} {fit_s:8.2f} "
                      f"{predict_us:15.2f}", flush=True)


if __name__ == "__main__":
    main()
