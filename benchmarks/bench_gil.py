"""A fit in a background thread while another thread serves one-row predictions.

A web service that retrains a model in a thread while its request thread keeps predicting
meets this. The serving thread runs Python without pause; the training thread gives the
GIL up at every torch operation and must take it back each time. The table gives each
fit's best wall time alone and beside the serving thread, and the slowdown between them,
for FFFRegressor and for scikit-learn's ``MLPRegressor`` (the anchor, measured in the same
run, serving its own predictions).

    python bench_gil.py [--quick]
"""

import argparse
import statistics
import threading
import time
import warnings

from sklearn.datasets import make_friedman1
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPRegressor

from fffsklearn import FFFRegressor


def fit_time(make_model, X, y, server=None):
    """Wall time of one fit, beside a thread predicting one row with ``server`` if given."""
    stop = threading.Event()

    def serve():
        row = X[:1]
        while not stop.is_set():
            server.predict(row)

    thread = threading.Thread(target=serve) if server is not None else None
    if thread is not None:
        thread.start()
        time.sleep(0.05)
    start = time.perf_counter()
    make_model().fit(X, y)
    elapsed = time.perf_counter() - start
    stop.set()
    if thread is not None:
        thread.join()
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    rounds = 3 if args.quick else 7
    X, y = make_friedman1(n_samples=1000, random_state=0)
    models = {
        "FFFRegressor(depth=3, max_iter=20)":
            lambda: FFFRegressor(depth=3, max_iter=20, random_state=0),
        "MLPRegressor((64,), max_iter=20)":
            lambda: MLPRegressor(hidden_layer_sizes=(64,), max_iter=20, random_state=0),
    }
    print(f"{'model':38s} {'alone (s)':>10s} {'beside (s)':>11s} {'slowdown':>9s}")
    slowdowns = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name, make_model in models.items():
            server = make_model().fit(X, y)
            alone, beside = [], []
            for _ in range(rounds):  # alternated, so both see the machine alike
                alone.append(fit_time(make_model, X, y))
                beside.append(fit_time(make_model, X, y, server))
            slowdowns[name] = statistics.median(b / a for a, b in zip(alone, beside))
            print(f"{name:38s} {min(alone):10.3f} {min(beside):11.3f} "
                  f"{slowdowns[name]:8.1f}x")
    fff, mlp = slowdowns.values()
    print(f"\nratio: FFFRegressor's slowdown / MLPRegressor's = {fff / mlp:.2f} "
          "(target <= 1: a fit beside a serving thread suffers no more than scikit-learn's)")


if __name__ == "__main__":
    main()
