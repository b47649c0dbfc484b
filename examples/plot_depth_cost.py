"""
Accuracy and inference cost across depths
=========================================

A deeper tree has more leaves and so the capacity of a wider network, while a prediction still
evaluates one routing neuron per level and a single leaf. This example trains
``FFFClassifier(leaf_width=8, master_leaf_width=8)`` at depths 1 to 6 on digits, next to
``MLPClassifier`` of the same training width ``2**depth * leaf_width``, and plots held-out
accuracy (left) and the hidden units evaluated per row at prediction (right).
"""

import warnings

import matplotlib.pyplot as plt
from matplotlib.ticker import ScalarFormatter
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from fffsklearn import FFFClassifier

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
scaler = StandardScaler().fit(X_train)
X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)

leaf_width, master = 8, 8
depths = range(1, 7)
widths = [2**depth * leaf_width for depth in depths]
fff_scores, mlp_scores = [], []
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    for depth, width in zip(depths, widths):
        fff = FFFClassifier(depth=depth, leaf_width=leaf_width, master_leaf_width=master,
                            random_state=0).fit(X_train, y_train)
        mlp = MLPClassifier(hidden_layer_sizes=(width,), max_iter=500, random_state=0)
        fff_scores.append(fff.score(X_test, y_test))
        mlp_scores.append(mlp.fit(X_train, y_train).score(X_test, y_test))
        print(f"training width {width:>3}: FFF depth {depth} {fff_scores[-1]:.3f}, "
              f"MLP {mlp_scores[-1]:.3f}")

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
left.plot(widths, fff_scores, "o-", label="FFFClassifier")
left.plot(widths, mlp_scores, "s--", label="MLPClassifier")
left.set_ylabel("held-out accuracy")
right.plot(widths, [d + leaf_width + master for d in depths], "o-", label="FFFClassifier")
right.plot(widths, widths, "s--", label="MLPClassifier")
right.set_ylabel("hidden units evaluated per row")
right.set_yscale("log", base=2)
right.yaxis.set_major_formatter(ScalarFormatter())
for ax in (left, right):
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("training width (2**depth * leaf_width)")
    ax.legend()
fig.tight_layout()
plt.show()
