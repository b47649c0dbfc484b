"""
Learning curves of an FFF and of dense MLPs
===========================================

``FFFClassifier`` records the same curves as scikit-learn's ``MLPClassifier``: ``loss_curve_``
holds the mean training objective of each epoch and, with ``early_stopping=True``,
``validation_scores_`` the accuracy of the held-out validation rows after each epoch. For an
FFF the curves have two phases: balancing, which ends at the plateau of the validation score
and restarts from its best epoch, then the ``hardening_epochs`` (16) of the hardening phase,
marked by dotted lines, in which the routing is frozen and sharpened while the leaves train on
the soft mixture. The training objective drops there because the frozen routing's
load-balancing and L2 terms leave it.

This example fits ``FFFClassifier(depth=4, leaf_width=16)`` with and without load balancing
on digits, next to the MLPs of the same active width (32 hidden units, what one FFF
prediction evaluates) and of the same training width (256), and plots both curves.
"""

import warnings

import matplotlib.pyplot as plt
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

common = {"early_stopping": True, "n_iter_no_change": 20, "max_iter": 150, "random_state": 0}
models = {
    "FFF depth 4, load balancing on": FFFClassifier(depth=4, leaf_width=16, **common),
    "FFF depth 4, load balancing off": FFFClassifier(
        depth=4, leaf_width=16, load_balancing=0.0, **common
    ),
    "MLP(32,): same active width": MLPClassifier(hidden_layer_sizes=(32,), **common),
    "MLP(256,): same training width": MLPClassifier(hidden_layer_sizes=(256,), **common),
}

fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
for name, model in models.items():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X_train, y_train)
    print(f"{name:<34} {model.n_iter_:>3} epochs, held-out accuracy "
          f"{model.score(X_test, y_test):.3f}")
    (line,) = left.plot(model.loss_curve_, label=name)
    right.plot(model.validation_scores_, label=name, color=line.get_color())
    if isinstance(model, FFFClassifier):
        for ax in (left, right):
            ax.axvline(model.n_iter_ - model.hardening_epochs, ls=":", color=line.get_color())
left.set_yscale("log")
left.set_ylabel("training objective (regularisers included)")
right.set_ylabel("validation accuracy")
right.set_ylim(0.8, 1.0)
for ax in (left, right):
    ax.set_xlabel("epoch")
    ax.legend()
fig.tight_layout()
plt.show()
