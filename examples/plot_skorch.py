"""
Training an FFF with skorch, predicting with the compiled kernel
================================================================

fffsklearn's estimators train with their own loop. When you would rather use skorch's (its
callbacks, LR schedulers, checkpoints, validation splits), give skorch the torch module
:class:`fffsklearn.nn.FFFNetwork` and the two callbacks of FFF training from
:mod:`fffsklearn.skorch`: ``LoadBalancing`` keeps every leaf in use, ``Hardening`` ends
training by sharpening the soft routing into the hard routing that prediction uses. Then
:func:`fffsklearn.skorch.to_estimator` turns the trained net into a fitted
:class:`~fffsklearn.FFFClassifier`, which predicts through the compiled C kernel, pickles and
exports to ONNX like any other. Needs ``pip install "fffsklearn[skorch]"``.

This example trains on digits with a cosine learning-rate schedule and a checkpoint of the
best epoch, converts the net, compares the two on held-out rows, then runs a GridSearchCV
over the depth of the tree with skorch's own cross-validation support.
"""

import tempfile
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.preprocessing import StandardScaler
from skorch import NeuralNetClassifier
from skorch.callbacks import Checkpoint, LRScheduler
from skorch.dataset import ValidSplit

from fffsklearn.nn import FFFNetwork
from fffsklearn.skorch import Hardening, LoadBalancing, to_estimator

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
scaler = StandardScaler().fit(X_train)
X_train = scaler.transform(X_train).astype(np.float32)
X_test = scaler.transform(X_test).astype(np.float32)

MAX_EPOCHS = 60
HARDENING_EPOCHS = 12


def fff_net(depth=3, max_epochs=MAX_EPOCHS, **params):
    """A skorch classifier training an FFF of this depth, with FFF training's callbacks."""
    return NeuralNetClassifier(
        FFFNetwork,
        module__n_features=X_train.shape[1],
        module__n_outputs=10,
        module__depth=depth,
        module__random_state=0,
        criterion=torch.nn.CrossEntropyLoss,  # the module returns logits
        optimizer=torch.optim.Adam,
        lr=3e-3,
        batch_size=200,
        max_epochs=max_epochs,
        # Adam's weight decay is an L2 penalty: FFFClassifier's alpha=3 per row of digits.
        optimizer__weight_decay=3.0 / len(X_train),
        verbose=0,
        **params,
    )


checkpoint_dir = tempfile.mkdtemp()
net = fff_net(
    depth=3,
    train_split=ValidSplit(0.2, stratified=True, random_state=0),
    callbacks=[
        LoadBalancing(weight=1.0),
        # A cosine schedule down to a tenth of the rate: it already gives the hardening
        # phase the lower rate that Hardening would otherwise set (learning_rate_factor).
        LRScheduler("CosineAnnealingLR", T_max=MAX_EPOCHS, eta_min=3e-4),
        Hardening(epochs=HARDENING_EPOCHS, learning_rate_factor=1.0),
        Checkpoint(monitor="valid_acc_best", dirname=checkpoint_dir, load_best=False),
    ],
)
torch.manual_seed(0)
net.fit(X_train, y_train)

# %%
# Converting the net
# ------------------
# ``to_estimator`` reads the trained module's weights into NumPy arrays and routes the
# training rows once to count the rows of each leaf. Prediction then walks the tree in the
# compiled kernel: one leaf per row.
model = to_estimator(net, X_train)
print(f"skorch net, held-out accuracy:      {net.score(X_test, y_test):.4f}")
print(f"converted FFFClassifier, accuracy:  {model.score(X_test, y_test):.4f}")
print(f"same predictions: {bool((model.predict(X_test) == net.predict(X_test)).all())}")
predictors = [("skorch (torch)", net.predict_proba), ("fffsklearn (C)", model.predict_proba)]
for name, predict in predictors:
    predict(X_test)
    start = time.perf_counter()
    for _ in range(20):
        predict(X_test)
    print(f"{name:>15} predict_proba: {(time.perf_counter() - start) / 20 * 1e3:.2f} ms")

history = net.history
fig, (loss_ax, balance_ax) = plt.subplots(1, 2, figsize=(10, 3.5))
loss_ax.plot(history[:, "train_loss"], label="train loss")
loss_ax.plot(history[:, "valid_loss"], label="validation loss")
loss_ax.axvline(
    MAX_EPOCHS - HARDENING_EPOCHS, color="grey", linestyle=":", label="hardening starts"
)
loss_ax.set_xlabel("epoch")
loss_ax.legend()
penalty = [np.mean([batch["load_balancing"] for batch in epoch["batches"]
                    if "load_balancing" in batch]) for epoch in history]
balance_ax.plot(penalty)
balance_ax.set_xlabel("epoch")
balance_ax.set_title("load-balancing loss (1 = even leaves)")
fig.tight_layout()
plt.show()

# %%
# A grid search over the depth
# ----------------------------
# skorch nets are scikit-learn estimators: GridSearchCV clones and refits them, callbacks
# included. Each depth doubles the leaves, not the cost of a prediction.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    search = GridSearchCV(
        fff_net(train_split=None, max_epochs=20,
                callbacks=[LoadBalancing(), Hardening(epochs=4)]),
        {"module__depth": [1, 2, 3]},
        cv=3,
    )
    search.fit(X_train, y_train)
for depth, score in zip(search.cv_results_["param_module__depth"],
                        search.cv_results_["mean_test_score"]):
    print(f"depth {depth}: cross-validated accuracy {score:.4f}")
best = to_estimator(search.best_estimator_, X_train)
print(f"best depth {best.depth}: held-out accuracy of the converted model "
      f"{best.score(X_test, y_test):.4f}")
