"""
Leaf usage with and without load balancing
==========================================

Without a load-balancing loss, the routing of an FFF tends to collapse onto a few leaves: the
others receive no training rows and the model's capacity is wasted. The Switch-style
load-balancing loss (``load_balancing``, on by default) keeps every leaf in use. This example
trains ``FFFClassifier(depth=4)`` on digits both ways and plots the number of held-out rows
that hard routing (``apply``) sends to each of the 16 leaves, with the entropy of that
histogram divided by ``log(16)``: 1 when every leaf gets the same share.
"""

import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from fffsklearn import FFFClassifier

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
scaler = StandardScaler().fit(X_train)
X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
for ax, weight in zip(axes, [1.0, 0.0]):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = FFFClassifier(depth=4, load_balancing=weight, random_state=0).fit(X_train, y_train)
    counts = np.bincount(model.apply(X_test), minlength=2**model.depth)
    p = counts[counts > 0] / counts.sum()
    entropy = -(p * np.log(p)).sum() / np.log(len(counts))
    ax.bar(np.arange(len(counts)), counts)
    ax.set_xlabel("leaf")
    ax.set_title(
        f"load_balancing={weight}: accuracy {model.score(X_test, y_test):.3f}\n"
        f"normalised leaf entropy {entropy:.2f}, empty leaves {int((counts == 0).sum())}"
    )
axes[0].set_ylabel("held-out rows")
fig.tight_layout()
plt.show()
