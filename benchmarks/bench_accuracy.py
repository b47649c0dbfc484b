"""Hard-routed held-out accuracy of FFFClassifier against MLPClassifier on digits.

Fixed split (30% test, stratified, seed 0), inputs standardised. Compares
FFFClassifier(depth=4, leaf_width=16) with load balancing on and off against
MLPClassifier(hidden_layer_sizes=(16,)) and (256,), and reports the training rows of each leaf.
Usage:

    python benchmarks/bench_accuracy.py [--quick]
"""

import argparse
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from fffsklearn import FFFClassifier


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed instead of three")
    args = parser.parse_args()
    seeds = [0] if args.quick else [0, 1, 2]
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, random_state=0, stratify=y
    )
    scaler = StandardScaler().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)

    models = {
        "FFF depth 4 leaf 16, load balancing on": lambda s: FFFClassifier(depth=4, leaf_width=16, random_state=s),
        "FFF depth 4 leaf 16, load balancing off": lambda s: FFFClassifier(depth=4, leaf_width=16, load_balancing=0.0, random_state=s),
        "MLPClassifier(16,)": lambda s: MLPClassifier(hidden_layer_sizes=(16,), max_iter=500, random_state=s),
        "MLPClassifier(256,)": lambda s: MLPClassifier(hidden_layer_sizes=(256,), max_iter=500, random_state=s),
    }
    print(f"digits: {len(X_train)} training rows, {len(X_test)} test rows, seeds {seeds}")
    print(f"{'model':<42}{'test accuracy':>16}{'fit s':>8}  {'empty leaves':>12}  training rows per leaf")
    for name, make in models.items():
        scores, seconds, counts = [], [], None
        for seed in seeds:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                start = time.perf_counter()
                model = make(seed).fit(X_train, y_train)
                seconds.append(time.perf_counter() - start)
            scores.append(model.score(X_test, y_test))
            counts = getattr(model, "leaf_sample_counts_", None)
        spread = f"{np.mean(scores):.4f} ± {np.std(scores):.4f}"
        leaves = "" if counts is None else f"{int((counts == 0).sum()):>12}  {counts.tolist()}"
        print(f"{name:<42}{spread:>16}{np.mean(seconds):>8.1f}  {leaves}")


if __name__ == "__main__":
    main()
