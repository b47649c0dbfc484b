"""Cold start: a fresh process that imports, loads a pickled model and predicts one row.

What a batch job or a serverless function pays before its first prediction. Each model is
fitted and pickled here; then, for each, a fresh Python process imports its package, loads
the pickle and predicts one row, several times in alternation. The table gives the best wall
time of such a process (interpreter start included), its peak resident memory, and both as
ratios to scikit-learn's ``MLPClassifier`` and ``HistGradientBoostingClassifier`` doing the
same, measured in the same run.

    python bench_cold_start.py [--quick]
"""

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time
import warnings

from sklearn.datasets import load_digits
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from fffsklearn import FFFClassifier

# Runs in the fresh process: load, predict one row, report peak memory (in KiB) and whether
# torch was imported. The peak is Linux's VmHWM, which the exec of the process starts
# afresh; ru_maxrss would carry over this parent's peak from the fork.
_CHILD = """
import pickle, resource, sys
import numpy as np
with open(sys.argv[1], "rb") as f:
    model = pickle.load(f)
model.predict(np.zeros((1, model.n_features_in_)))
try:
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(peak, "torch" in sys.modules)
"""


def _models():
    X, y = load_digits(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return {
            "FFFClassifier": FFFClassifier(depth=4, max_iter=20, random_state=0).fit(X, y),
            "MLPClassifier": MLPClassifier((64,), max_iter=50, random_state=0).fit(X, y),
            "HistGradientBoosting": HistGradientBoostingClassifier(max_iter=20).fit(X, y),
        }


def _cold_start(path):
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, path], capture_output=True, text=True, check=True
    ).stdout.split()
    return time.perf_counter() - start, int(out[0]) * 1024, out[1] == "True"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else 7
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, model in _models().items():
            paths[name] = os.path.join(tmp, name + ".pkl")
            with open(paths[name], "wb") as f:
                pickle.dump(model, f)
        best = {name: (float("inf"), 0, False) for name in paths}
        for _ in range(rounds):  # alternated, so a burst of load hits every model alike
            for name, path in paths.items():
                seconds, rss, torch_loaded = _cold_start(path)
                best[name] = (min(best[name][0], seconds), max(best[name][1], rss), torch_loaded)
    print(
        f"Fresh process: import, unpickle, predict one row; best of {rounds} "
        f"(Python {sys.version.split()[0]})"
    )
    mlp, hgb = best["MLPClassifier"], best["HistGradientBoosting"]
    print(
        f"{'model':22s} {'seconds':>8s} {'peak MiB':>9s} {'torch':>6s} "
        f"{'time/MLP':>9s} {'time/HGB':>9s} {'mem/MLP':>8s} {'mem/HGB':>8s}"
    )
    for name, (seconds, rss, torch_loaded) in best.items():
        print(
            f"{name:22s} {seconds:8.2f} {rss / 2**20:9.0f} {torch_loaded!s:>6s} "
            f"{seconds / mlp[0]:9.2f} {seconds / hgb[0]:9.2f} "
            f"{rss / mlp[1]:8.2f} {rss / hgb[1]:8.2f}"
        )


if __name__ == "__main__":
    main()
