"""A feature selector in front of the FFF on data whose features are mostly noise.

make_classification_400 (400 features, 40 informative; ``bench_accuracy.py``'s split and
scaling): ``FFFClassifier`` at depth 4 and 6 on its defaults, alone and behind
``SelectKBest(f_classif, k)``, and ``MLPClassifier((32,))``, the MLP of the same active
width, alone and behind the same selector. Three seeds, two fits at a time, one thread each
(about 4 minutes on 2 cores).

Usage: python benchmarks/bench_feature_selection.py [--k 40 100]
"""

import argparse
import time
import warnings

import numpy as np
import torch
from bench_accuracy import load
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import SelectKBest, f_classif
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from threadpoolctl import threadpool_limits

from fffsklearn import FFFClassifier

DATASET = "make_classification_400"
SEEDS = (0, 1, 2)


def score(model_name, k, seed):
    X_train, X_test, y_train, y_test = load(DATASET, False)
    if model_name == "MLP(32,)":
        model = MLPClassifier((32,), random_state=seed)
    else:
        model = FFFClassifier(depth=int(model_name[-1]), random_state=seed)
    if k:
        model = make_pipeline(SelectKBest(f_classif, k=k), model)
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        torch.set_num_threads(1)
        return model_name, k, model.fit(X_train, y_train).score(X_test, y_test)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--k", type=int, nargs="+", default=[40, 100], help="features SelectKBest keeps"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    cases = [(name, k) for name in ("FFF depth 4", "FFF depth 6") for k in [0, *args.k]]
    cases += [("MLP(32,)", k) for k in (0, args.k[0])]
    results = Parallel(n_jobs=2)(
        delayed(score)(name, k, seed) for name, k in cases for seed in SEEDS
    )
    print(f"{DATASET}: held-out accuracy, mean ± std over seeds {SEEDS}")
    for name, k in cases:
        scores = [s for n, kk, s in results if (n, kk) == (name, k)]
        selector = f"SelectKBest(k={k})" if k else "all 400 features"
        print(f"  {name:<12} {selector:<20} {np.mean(scores):.4f} ± {np.std(scores):.4f}")
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
