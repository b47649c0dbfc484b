"""
Leaves shared along the tree when leaves overfit
================================================

Each leaf of an FFF trains on about ``1 / 2**depth`` of the rows. When a leaf's first layer
has about as many weights as its share has rows, it learns the noise of its share: the
training score climbs while the held-out score stays low.

``leaf_shrinkage`` trains each leaf as the sum of one term per node of its path from the
root, with the terms below the root held to the shared ones by an L2 penalty
``leaf_shrinkage`` times as strong as ``alpha``'s. A leaf then departs from its neighbours
only as far as its own rows ask. Prediction is unchanged: the fitted leaves are plain leaves.

This example draws a 10-class problem with 60 features, of which 20 carry the signal, and
plots the training and cross-validated accuracy of ``FFFClassifier(depth=5)``, whose 32
leaves see about 170 rows each, against ``leaf_shrinkage`` (0 is the default: every leaf on
its own; a very large value makes every leaf the same). Whether sharing pays depends on the
data (on some, leaves that specialise are worth more), so choose it the way this example
does: by cross-validation.
"""

import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import validation_curve

from fffsklearn import FFFClassifier

X, y = make_classification(
    n_samples=8000, n_features=60, n_informative=20, n_classes=10, random_state=0
)
shrinkages = [0.0, 3.0, 30.0, 300.0, 3000.0]

with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    train_scores, test_scores = validation_curve(
        FFFClassifier(depth=5, random_state=0), X, y,
        param_name="leaf_shrinkage", param_range=shrinkages, cv=3,
    )

print("leaf_shrinkage  training accuracy  cross-validated accuracy")
for shrinkage, train, test in zip(shrinkages, train_scores, test_scores):
    print(f"{shrinkage:14g}  {train.mean():17.3f}  {test.mean():24.3f}")

# 0 has no place on a log axis: draw it one step left of the smallest positive value.
positions = np.array([1.0] + shrinkages[1:])
fig, ax = plt.subplots(figsize=(6, 3.5))
for scores, label in [(train_scores, "training rows"), (test_scores, "held-out folds")]:
    mean, std = scores.mean(axis=1), scores.std(axis=1)
    ax.errorbar(positions, mean, yerr=std, marker="o", capsize=3, label=label)
ax.set_xscale("log")
ax.set_xticks(positions, ["0 (default)"] + [f"{s:g}" for s in shrinkages[1:]])
ax.set_xlabel("leaf_shrinkage")
ax.set_ylabel("accuracy")
ax.set_title("FFFClassifier(depth=5), 5,333 training rows per fold")
ax.legend()
fig.tight_layout()
plt.show()
