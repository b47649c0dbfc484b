"""
Quickstart: train an FFF on digits and compare it with an MLP
=============================================================

Trains :class:`fffsklearn.FFFClassifier` in a scikit-learn Pipeline on the digits data set that
ships with scikit-learn, then prints the hard-routed held-out accuracy and the prediction speed
next to :class:`~sklearn.neural_network.MLPClassifier` of the same training width.
"""

import time
import warnings

from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fffsklearn import FFFClassifier

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)

depth, leaf_width = 4, 16
models = {
    f"FFFClassifier(depth={depth}, leaf_width={leaf_width})": FFFClassifier(
        depth=depth, leaf_width=leaf_width, random_state=0
    ),
    f"MLPClassifier(({2**depth * leaf_width},))": MLPClassifier(
        hidden_layer_sizes=(2**depth * leaf_width,), max_iter=500, random_state=0
    ),
}

print(f"{'model':<38}{'accuracy':>10}{'fit s':>8}{'predict us/row':>16}")
for name, estimator in models.items():
    pipeline = make_pipeline(StandardScaler(), estimator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        pipeline.fit(X_train, y_train)
        fit_seconds = time.perf_counter() - start
    accuracy = pipeline.score(X_test, y_test)
    X_big = X_test.repeat(20, axis=0)  # 10,800 rows to time batched prediction
    pipeline.predict(X_big)
    start = time.perf_counter()
    pipeline.predict(X_big)
    per_row_us = (time.perf_counter() - start) / len(X_big) * 1e6
    print(f"{name:<38}{accuracy:>10.4f}{fit_seconds:>8.1f}{per_row_us:>16.2f}")

fff = models[f"FFFClassifier(depth={depth}, leaf_width={leaf_width})"]
print(f"\nTraining rows per leaf: {fff.leaf_sample_counts_.tolist()}")
print(f"Each row runs {depth} routing neurons, one leaf of {leaf_width} units and the master leaf "
      f"of {fff.master_leaf_width}, instead of {2**depth * leaf_width} hidden units.")
