"""
Accuracy against what a prediction costs
========================================

What makes an FFF worth choosing over a dense MLP is its accuracy for what a prediction
costs. This example draws a 10-class problem with 40 features, of which 20 carry the signal,
and fits ``FFFClassifier`` at depths 2 to 6 (``leaf_width=16``) and ``MLPClassifier`` of
widths 8 to 256. For each model it measures the held-out accuracy, the time ``predict``
takes per row on 5,000 rows (best of three calls) and the time ``fit`` took, and plots
accuracy against prediction cost (left) and against fit time (right).

A model is worth having where no other is both cheaper and more accurate: the upper-left
edge of the left panel. Measure on your own data and machine, as here: the frontier moves
with the number of rows, the features and the cores. ``benchmarks/bench_frontier.py`` runs
the same comparison on larger data sets, deeper trees and wider MLPs, with three seeds.
"""

import time
import warnings

import matplotlib.pyplot as plt
from matplotlib.ticker import ScalarFormatter
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fffsklearn import FFFClassifier

X, y = make_classification(
    n_samples=10_000, n_features=40, n_informative=20, n_classes=10, random_state=0
)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=5_000, random_state=0)


def measure(model):
    """Held-out accuracy, predict microseconds per row and fit seconds of ``model``."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X_train, y_train)
    fit_seconds = time.perf_counter() - start
    predict_seconds = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        model.predict(X_test)
        predict_seconds = min(predict_seconds, time.perf_counter() - start)
    return model.score(X_test, y_test), predict_seconds / len(X_test) * 1e6, fit_seconds


families = {
    "FFFClassifier, depth 2 to 6": [
        (f"depth {depth}", FFFClassifier(depth=depth, random_state=0)) for depth in (2, 3, 4, 5, 6)
    ],
    "MLPClassifier, width 8 to 256": [
        (f"{width}", make_pipeline(StandardScaler(), MLPClassifier((width,), random_state=0)))
        for width in (8, 16, 32, 64, 128, 256)
    ],
}
results = {}
for family, models in families.items():
    results[family] = [(label, *measure(model)) for label, model in models]
    for label, accuracy, predict_us, fit_seconds in results[family]:
        print(f"{family.split(',')[0]} {label:>8}: accuracy {accuracy:.3f}, "
              f"predict {predict_us:.2f} us/row, fit {fit_seconds:.1f} s")

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
# The FFFs' labels go where their points spread out: the MLPs' prediction cost grows with
# the width, the FFFs' fit time with the depth.
for (family, rows), marker, labelled in zip(results.items(), ("o-", "s--"), (right, left)):
    labels, accuracy, predict_us, fit_seconds = zip(*rows)
    left.plot(predict_us, accuracy, marker, label=family)
    right.plot(fit_seconds, accuracy, marker, label=family)
    xs = fit_seconds if labelled is right else predict_us
    for label, x, y_ in zip(labels, xs, accuracy):
        labelled.annotate(label, (x, y_), textcoords="offset points", xytext=(4, -10),
                          fontsize=8)
left.set_xlabel("predict time per row (µs)")
left.set_ylabel("held-out accuracy")
right.set_xlabel("fit time (s)")
for ax in (left, right):
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.legend(loc="lower right")
fig.tight_layout()
plt.show()
