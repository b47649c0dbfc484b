"""Training speed: seconds per epoch of FFFClassifier.fit against the dense twin and MLPClassifier.

For each data set and depth, with ``leaf_width=16``, ``master_leaf_width=16`` and the default
batch size, this times:

- ``FFFClassifier.fit`` with ``max_iter=8`` (6 balancing and 2 hardening epochs), divided by
  the epochs it ran: set-up, validation and the final leaf count included, with the defaults;
- a plain torch loop that trains the dense twin (one hidden layer of the training width
  ``2**depth * 16``, ReLU) with Adam, the same learning rate, weight decay and batch size,
  the data held as one tensor and indexed per mini-batch: "twin" uses
  ``torch.optim.Adam(fused=True)``, as a torch user would, "twin F" the FFF trainer's
  ``FusedAdam`` (the same kernel without torch.optim's per-step Python);
- ``MLPClassifier`` of the training width, one epoch (``max_iter=1``).

Contenders run in alternating rounds and the best round counts, so that a burst of load on
a shared machine slows all of them rather than one. Every contender uses torch's and the BLAS's
default threads. Usage::

    python benchmarks/bench_training.py [--quick] [--rounds 3]

Targets (issue #13): FFF at most 1.3x the dense twin and at most MLPClassifier per epoch.
"""

import argparse
import time
import warnings

import numpy as np
import torch
from _common import describe_threads
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from torch import nn

from fffsklearn import FFFClassifier
from fffsklearn._optim import FusedAdam

LEAF_WIDTH = MASTER_LEAF_WIDTH = 16
FFF_EPOCHS = 8
N_CLASSES = 10


def random_rows(n_rows, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_rows, 784)).astype(np.float32)
    return X, rng.integers(0, N_CLASSES, n_rows)


def classification_rows(n_rows):
    X, y = make_classification(
        n_samples=n_rows, n_features=40, n_informative=20, n_classes=N_CLASSES, random_state=0
    )
    return StandardScaler().fit_transform(X).astype(np.float32), y


def fff_epoch_seconds(X, y, depth, **params):
    model = FFFClassifier(
        depth=depth,
        leaf_width=LEAF_WIDTH,
        master_leaf_width=MASTER_LEAF_WIDTH,
        max_iter=FFF_EPOCHS,
        n_iter_no_change=FFF_EPOCHS,
        device="cpu",
        random_state=0,
        **params,
    )
    start = time.perf_counter()
    model.fit(X, y)
    return (time.perf_counter() - start) / model.n_iter_


def dense_twin_epoch_seconds(X, y, depth, batch_size, optimizer_class, epochs=2, device="cpu"):
    """A plain torch training loop of the dense MLP an FFF of this depth replaces, its data
    held on ``device`` as one tensor."""
    width = 2**depth * LEAF_WIDTH
    generator = torch.Generator(device=device).manual_seed(0)
    net = nn.Sequential(nn.Linear(X.shape[1], width), nn.ReLU(), nn.Linear(width, N_CLASSES)).to(
        device
    )
    defaults = FFFClassifier().get_params()
    weight_decay = defaults["alpha"] / len(X)  # the FFF's L2 penalty per row, as Adam's decay
    weights, biases = [net[0].weight, net[2].weight], [net[0].bias, net[2].bias]
    if optimizer_class is FusedAdam:
        optimizer = FusedAdam(
            [{"params": weights, "decay_factor": 1.0}, {"params": biases, "decay_factor": 0.0}],
            lr=defaults["learning_rate_init"],
        )
        optimizer.set_weight_decay(weight_decay)
    else:
        groups = [
            {"params": weights, "weight_decay": weight_decay},
            {"params": biases, "weight_decay": 0.0},
        ]
        optimizer = torch.optim.Adam(groups, lr=defaults["learning_rate_init"], fused=True)
    X_tensor, y_tensor = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)
    synchronize = torch.cuda.synchronize if torch.device(device).type == "cuda" else lambda: None
    synchronize()
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(X), generator=generator, device=device)
        for first in range(0, len(X), batch_size):
            rows = order[first : first + batch_size]
            loss = nn.functional.cross_entropy(net(X_tensor[rows]), y_tensor[rows])
            for parameter in net.parameters():
                parameter.grad = None
            loss.backward()
            optimizer.step()
    synchronize()
    return (time.perf_counter() - start) / epochs


def mlp_epoch_seconds(X, y, depth):
    model = MLPClassifier((2**depth * LEAF_WIDTH,), max_iter=1, random_state=0)
    start = time.perf_counter()
    model.fit(X, y)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 rows, one round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per contender")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    datasets = {
        "random d=784": random_rows(2_000 if args.quick else 20_000),
        "make_classification d=40": classification_rows(2_000 if args.quick else 40_000),
    }
    # One batch for every contender, so that an epoch is the same work for each: the
    # classifier's batch_size="auto" would take more rows at depths 4 and 6 on these data sets.
    batch_size = min(200, len(next(iter(datasets.values()))[0]))
    print(
        f"{describe_threads()}; batch {batch_size}; FFF fits of {FFF_EPOCHS} epochs; "
        f"best of {rounds} alternating rounds"
    )
    print(
        f"{'data':<26}{'depth':>6}{'width':>7}{'FFF s/epoch':>13}{'twin':>9}"
        f"{'twin F':>9}{'MLP':>9}{'FFF/twin':>10}{'FFF/twin F':>12}{'FFF/MLP':>9}"
    )
    worst_twin = worst_fused_twin = worst_mlp = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name, (X, y) in datasets.items():
            for depth in (4, 6):
                contenders = (
                    lambda: fff_epoch_seconds(X, y, depth, batch_size=batch_size),
                    lambda: dense_twin_epoch_seconds(X, y, depth, batch_size, torch.optim.Adam),
                    lambda: dense_twin_epoch_seconds(X, y, depth, batch_size, FusedAdam),
                    lambda: mlp_epoch_seconds(X, y, depth),
                )
                best = [np.inf] * len(contenders)
                for _ in range(rounds):
                    for i, contender in enumerate(contenders):
                        best[i] = min(best[i], contender())
                fff, twin, fused_twin, mlp = best
                worst_twin = max(worst_twin, fff / twin)
                worst_fused_twin = max(worst_fused_twin, fff / fused_twin)
                worst_mlp = max(worst_mlp, fff / mlp)
                print(
                    f"{name:<26}{depth:>6}{2**depth * LEAF_WIDTH:>7}{fff:>13.3f}"
                    f"{twin:>9.3f}{fused_twin:>9.3f}{mlp:>9.3f}"
                    f"{fff / twin:>10.2f}{fff / fused_twin:>12.2f}{fff / mlp:>9.2f}",
                    flush=True,
                )
    print(f"\nFFF epoch / dense twin epoch, largest: {worst_twin:.2f} (<= 1.3)")
    print(f"FFF epoch / dense twin epoch with the FFF's optimizer, largest: {worst_fused_twin:.2f}")
    print(f"FFF epoch / MLPClassifier epoch, largest: {worst_mlp:.2f} (<= 1)")


if __name__ == "__main__":
    main()
