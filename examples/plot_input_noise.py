"""
Noise on the training rows
==========================

Each leaf of an FFF trains on about ``1 / 2**depth`` of the rows, and the routing gives each
leaf a region of the input space with a hard edge. ``input_noise`` adds Gaussian noise to
every training row, drawn afresh for every batch, with a standard deviation of that fraction
of each feature's standard deviation. A leaf then cannot fit its rows point by point, and
the rows near an edge of its region also train the leaf on the other side. Prediction is
unchanged: the noise only exists while training.

This example draws a 10-class problem with 40 features, of which 20 carry the signal, and
plots the training and cross-validated accuracy of ``FFFClassifier(depth=5)`` against
``input_noise`` (0.1 is the classifier's default, 0 turns it off). Too much noise blurs
what the rows say; where the best amount lies depends on the data, so choose it the way
this example does: by cross-validation.
"""

import warnings

import matplotlib.pyplot as plt
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import validation_curve

from fffsklearn import FFFClassifier

X, y = make_classification(
    n_samples=8000, n_features=40, n_informative=20, n_classes=10, random_state=0
)
noises = [0.0, 0.1, 0.2, 0.4, 0.8]

with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    train_scores, test_scores = validation_curve(
        FFFClassifier(depth=5, random_state=0), X, y,
        param_name="input_noise", param_range=noises, cv=3,
    )

print("input_noise  training accuracy  cross-validated accuracy")
for noise, train, test in zip(noises, train_scores, test_scores):
    print(f"{noise:11g}  {train.mean():17.3f}  {test.mean():24.3f}")

# Evenly spaced, so that the labels of the small values do not overlap.
positions = range(len(noises))
fig, ax = plt.subplots(figsize=(6, 3.5))
for scores, label in [(train_scores, "training rows"), (test_scores, "held-out folds")]:
    mean, std = scores.mean(axis=1), scores.std(axis=1)
    ax.errorbar(positions, mean, yerr=std, marker="o", capsize=3, label=label)
ax.set_xticks(positions, [f"{n:g}" + ("\n(default)" if n == 0.1 else "") for n in noises])
ax.set_xlabel("input_noise (fraction of each feature's standard deviation)")
ax.set_ylabel("accuracy")
ax.set_title("FFFClassifier(depth=5), 5,333 training rows per fold")
ax.legend()
fig.tight_layout()
plt.show()
