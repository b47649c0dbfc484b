"""The accuracy frontier: held-out score against what a prediction costs per row.

An FFF is worth choosing over a dense MLP when, for what a prediction costs, it is more
accurate. For every data set this fits, with each seed:

- ``FFFClassifier`` / ``FFFRegressor`` at each depth (2 to 10) and leaf width (8, 16, 32),
  the other parameters at their defaults;
- ``MLPClassifier`` / ``MLPRegressor`` of each width (8 to 1,024), and of the training width
  of the depth-8 FFF of leaf width 16 (4,096), the width its fit time is held against, all
  with scikit-learn's defaults otherwise, as in ``bench_accuracy.py``;
- HistGradientBoosting with its defaults.

and reports the held-out score (accuracy, or R^2), the fit time and the prediction cost per
row: the best of three ``predict`` calls on 10,000 held-out rows (the FFFs through the
compiled kernel, with every core), as means over the seeds. The data sets are those of
``bench_accuracy.py`` with at least 40,000 training rows (``mnist1d_40k``,
``make_classification``, ``make_classification_400``) and one regression set
(``friedman1``), standardised on the training split.

The summary gives, per data set and leaf width, the mean scores at depths 4, 6 and 8 and
whether they grow with depth, and the depth-8 fit time over the MLP of the same training
width. ``--out`` appends every fitted model's figures to a JSON-lines file, so that a long
run can be split by data set or depth and summarised together (``--summarise FILE``).

The full grid takes hours on two cores; ``--quick`` takes one seed, at most 8,000 training
rows, depths 2, 4 and 6, leaf width 16 and MLP widths 8 to 256, in a few minutes. Usage::

    python benchmarks/bench_frontier.py [--quick] [--datasets make_classification]
        [--depths 2,4,6,8,10] [--leaf-widths 8,16,32] [--mlp-widths 8,16,...,1024,4096]
        [--seeds 3] [--train-rows 40000] [--params input_noise=0.3]
        [--out frontier.jsonl] [--summarise frontier.jsonl]
"""

import argparse
import json
import time
import warnings

import numpy as np
from _common import best_time, describe_threads
from bench_accuracy import DATASETS, _parameter_value, load
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier, MLPRegressor

from fffsklearn import FFFClassifier, FFFRegressor

FRONTIER_DATASETS = ("mnist1d_40k", "make_classification", "make_classification_400",
                     "friedman1")
DEPTHS, LEAF_WIDTHS = (2, 4, 6, 8, 10), (8, 16, 32)
# The MLPs of the frontier, and the training width of the depth-8 FFF of leaf width 16.
MLP_WIDTHS = (8, 16, 32, 64, 128, 256, 512, 1024, 4096)
QUICK = {"depths": (2, 4, 6), "leaf_widths": (16,), "mlp_widths": (8, 16, 32, 64, 128, 256),
         "seeds": 1, "max_train_rows": 8_000}
PREDICT_ROWS = 10_000


def contenders(task, depths, leaf_widths, mlp_widths, fff_params):
    """``(label, family, train width, make(seed))`` of every model of a data set; every FFF
    also gets ``fff_params``."""
    classification = task == "classification"
    FFF = FFFClassifier if classification else FFFRegressor
    MLP = MLPClassifier if classification else MLPRegressor
    HGB = HistGradientBoostingClassifier if classification else HistGradientBoostingRegressor
    for leaf_width in leaf_widths:
        for depth in depths:
            yield (f"FFF depth {depth} leaf {leaf_width}", "FFF", 2**depth * leaf_width,
                   lambda seed, d=depth, w=leaf_width: FFF(depth=d, leaf_width=w,
                                                           random_state=seed, **fff_params))
    for width in mlp_widths:
        yield (f"MLP ({width},)", "MLP", width,
               lambda seed, w=width: MLP(hidden_layer_sizes=(w,), random_state=seed))
    yield "HistGradientBoosting", "HGB", None, lambda seed: HGB(random_state=seed)


def measure(dataset, label, family, width, make, seed, max_train_rows):
    """One fit: its held-out score, fit seconds and predict microseconds per row."""
    X_train, X_test, y_train, y_test = load(dataset, False)
    X_train, y_train = X_train[:max_train_rows], y_train[:max_train_rows]
    if DATASETS[dataset][0] == "regression" and family == "MLP":
        # MLPRegressor trains on standardised targets, as FFFRegressor does by itself.
        mean, std = y_train.mean(), y_train.std()
        y_train, y_test = (y_train - mean) / std, (y_test - mean) / std
    model = make(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        model.fit(X_train, y_train)
        fit_seconds = time.perf_counter() - start
    rows = X_test[:PREDICT_ROWS]
    predict_seconds = best_time(lambda: model.predict(rows), repeat=3, min_time=0.05)
    return {"dataset": dataset, "model": label, "family": family, "train_width": width,
            "seed": seed, "score": float(model.score(X_test, y_test)), "fit_s": fit_seconds,
            "predict_us": predict_seconds / len(rows) * 1e6}


def summarise(results):
    """Print the frontier of each data set and the issue's depth and fit-time checks."""
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        rows = [r for r in results if r["dataset"] == dataset]
        by_model = {}
        for r in rows:
            by_model.setdefault(r["model"], []).append(r)
        seeds = max(len(v) for v in by_model.values())
        print(f"\n{dataset} ({DATASETS[dataset][0]}), {seeds} seed(s)")
        print(f"{'model':<26}{'train width':>12}{'score':>16}{'fit s':>9}{'us/row':>9}")
        mean = {}
        for label, runs in sorted(by_model.items(), key=lambda kv: kv[1][0]["predict_us"]):
            scores = [r["score"] for r in runs]
            mean[label] = {"score": np.mean(scores), "fit_s": np.mean([r["fit_s"] for r in runs])}
            width = runs[0]["train_width"] or ""
            print(f"{label:<26}{width:>12}{np.mean(scores):>9.4f} ±{np.std(scores):.4f}"
                  f"{mean[label]['fit_s']:>9.1f}"
                  f"{np.mean([r['predict_us'] for r in runs]):>9.2f}")
        leaf_widths = sorted({int(label.split()[-1]) for label in mean if label.startswith("FFF")})
        for leaf_width in leaf_widths:
            scores = [mean.get(f"FFF depth {d} leaf {leaf_width}", {}).get("score")
                      for d in (4, 6, 8)]
            if None not in scores:
                grows = scores[2] >= scores[1] >= scores[0]
                print(f"  leaf {leaf_width}: depth 4 {scores[0]:.4f}, 6 {scores[1]:.4f}, "
                      f"8 {scores[2]:.4f}: {'grows' if grows else 'does not grow'} with depth")
            deep, dense = (mean.get(f"FFF depth 8 leaf {leaf_width}"),
                           mean.get(f"MLP ({2**8 * leaf_width},)"))
            if deep and dense:
                print(f"  leaf {leaf_width}: depth-8 fit {deep['fit_s']:.1f} s over the MLP of "
                      f"its training width {dense['fit_s']:.1f} s = "
                      f"{deep['fit_s'] / dense['fit_s']:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--datasets", default=",".join(FRONTIER_DATASETS))
    parser.add_argument("--depths")
    parser.add_argument("--leaf-widths")
    parser.add_argument("--mlp-widths")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--train-rows", type=int,
                        help="train on the first TRAIN_ROWS training rows of each data set")
    parser.add_argument("--params", help="parameters of every FFF on top of the defaults, "
                        "for example 'input_noise=0.3,alpha=10'")
    parser.add_argument("--out", help="append each fit's figures to this JSON-lines file")
    parser.add_argument("--summarise", help="only summarise this JSON-lines file")
    args = parser.parse_args()
    if args.summarise:
        with open(args.summarise) as f:
            summarise([json.loads(line) for line in f])
        return

    def numbers(text, default):
        return tuple(int(v) for v in text.split(",")) if text else default

    quick = QUICK if args.quick else {}
    depths = numbers(args.depths, quick.get("depths", DEPTHS))
    leaf_widths = numbers(args.leaf_widths, quick.get("leaf_widths", LEAF_WIDTHS))
    mlp_widths = numbers(args.mlp_widths, quick.get("mlp_widths", MLP_WIDTHS))
    seeds = range(args.seeds or quick.get("seeds", 3))
    max_train_rows = args.train_rows or quick.get("max_train_rows")
    fff_params = {key: _parameter_value(value) for key, value in
                  (item.split("=") for item in args.params.split(","))} if args.params else {}
    print(f"{describe_threads()}; seeds {list(seeds)}; predict on {PREDICT_ROWS} rows"
          + (f"; at most {max_train_rows} training rows" if max_train_rows else "")
          + (f"; every FFF also with {args.params}" if args.params else ""))
    results = []
    for dataset in args.datasets.split(","):
        task = DATASETS[dataset][0]
        for label, family, width, make in contenders(task, depths, leaf_widths, mlp_widths,
                                                     fff_params):
            for seed in seeds:
                result = measure(dataset, label, family, width, make, seed, max_train_rows)
                results.append(result)
                print(f"  {dataset} {label} seed {seed}: score {result['score']:.4f}, fit "
                      f"{result['fit_s']:.1f} s, {result['predict_us']:.2f} us/row", flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(result) + "\n")
    summarise(results)


if __name__ == "__main__":
    main()
