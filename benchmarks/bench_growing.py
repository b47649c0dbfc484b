"""Research: growing the tree while training, against training the deep tree from scratch.

A grown tree starts at depth 2 and deepens one level at a time: every leaf is split into two
copies of itself, under a new routing neuron that cuts the rows reaching the leaf through
their median along their principal direction (its weights scaled to a unit spread of the
logit), and training goes on from there. The stages before the last train for
``--stage-iter`` epochs without hardening; the last trains with the defaults (hardening
included). A deep tree thus refines a shallow one instead of training ``2**depth`` leaves
from scratch.

It uses the estimators' warm start: between stages the fitted ``arrays_`` are replaced by
the grown ones and ``depth`` is raised. Held-out accuracy and fit time of
``FFFClassifier(depth=D)`` trained from scratch and grown, with the same seeds. Usage::

    python benchmarks/bench_growing.py [--datasets make_classification,mnist1d_40k]
        [--depths 4,6,8] [--seeds 3] [--rows 40000] [--stage-iter 20] [--final-iter 40]
"""

import argparse
import time
import warnings

import numpy as np
from bench_accuracy import load
from sklearn.exceptions import ConvergenceWarning

from fffsklearn import FFFArrays, FFFClassifier


def split_leaves(arrays, X, leaves):
    """``arrays`` one level deeper: each leaf copied into its two children, under a routing
    neuron through the median of its rows ``X[leaves == j]`` along their principal
    direction."""
    weights, biases = [], []
    for leaf in range(arrays.n_leaves):
        rows = X[leaves == leaf].astype(np.float64)
        weight = np.zeros(X.shape[1])
        weight[0] = 1e-3
        bias = 0.0
        if len(rows) >= 4:
            centred = rows - rows.mean(axis=0)
            direction = np.linalg.svd(centred, full_matrices=False)[2][0]
            weight = direction / max(np.std(centred @ direction), 1e-12)
            bias = -np.median(rows @ weight)
        weights.append(weight)
        biases.append(bias)

    def children(name):
        return np.repeat(getattr(arrays, name), 2, axis=0)

    return FFFArrays(
        arrays.depth + 1,
        arrays.activation,
        node_weights=np.concatenate([arrays.node_weights, np.array(weights)]),
        node_biases=np.concatenate([arrays.node_biases, np.array(biases)]),
        **{name: children(name) for name in ("leaf_hidden_weights", "leaf_hidden_biases",
                                            "leaf_output_weights", "leaf_output_biases")},
        **{name: getattr(arrays, name) for name in ("master_hidden_weights",
                                                   "master_hidden_biases",
                                                   "master_output_weights",
                                                   "master_output_biases")},
    )


def grown(depth, X, y, seed, stage_iter, final_iter=None, start_depth=2):
    """An FFFClassifier of ``depth`` grown from ``start_depth``; its last stage runs at most
    ``final_iter`` epochs (None: the estimator's default)."""
    model = FFFClassifier(depth=start_depth, hardening_epochs=0, max_iter=stage_iter,
                          warm_start=True, random_state=seed).fit(X, y)
    for level in range(start_depth + 1, depth + 1):
        model.arrays_ = split_leaves(model.arrays_, X, model.apply(X))
        last = level == depth
        defaults = FFFClassifier()
        model.set_params(depth=level,
                         hardening_epochs=defaults.hardening_epochs if last else 0,
                         max_iter=(final_iter or defaults.max_iter) if last else stage_iter)
        model.fit(X, y)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="make_classification,mnist1d_40k")
    parser.add_argument("--depths", default="4,6,8")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=40_000, help="training rows at most")
    parser.add_argument("--stage-iter", type=int, default=20)
    parser.add_argument("--final-iter", type=int, help="epochs of the last stage at most")
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    warnings.simplefilter("ignore", ConvergenceWarning)
    for dataset in args.datasets.split(","):
        X_train, X_test, y_train, y_test = load(dataset, False)
        X_train, y_train = X_train[: args.rows], y_train[: args.rows]
        print(f"\n{dataset}: {len(X_train)} training rows, seeds {list(range(args.seeds))}")
        print(f"{'depth':>5}{'from scratch':>22}{'fit s':>8}{'grown':>22}{'fit s':>8}")
        for depth in depths:
            results = []
            for seed in range(args.seeds):
                start = time.perf_counter()
                scratch = FFFClassifier(depth=depth, random_state=seed).fit(X_train, y_train)
                middle = time.perf_counter()
                deepened = grown(depth, X_train, y_train, seed, args.stage_iter,
                                 args.final_iter)
                end = time.perf_counter()
                results.append((scratch.score(X_test, y_test), middle - start,
                                deepened.score(X_test, y_test), end - middle))
            r = np.array(results)
            print(f"{depth:>5}{r[:, 0].mean():>14.4f} ±{r[:, 0].std():.4f}{r[:, 1].mean():>8.1f}"
                  f"{r[:, 2].mean():>14.4f} ±{r[:, 2].std():.4f}{r[:, 3].mean():>8.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
