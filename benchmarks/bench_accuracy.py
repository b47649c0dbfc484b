"""Model quality: hard-routed held-out scores of FFF variants against dense MLPs and HGB.

For every data set, model and seed this fits on the training split and scores the held-out
split with the hard routing that ``predict`` uses (accuracy, or R^2 for regression). FFF rows
also report how evenly held-out rows spread over the leaves (entropy of the leaf histogram
divided by ``log(n_leaves)``) and the soft-minus-hard gap: the score of the path-probability
mixture that the published FFF code reports, minus the hard score, in points.

Models, at depth 4 and 6 with ``leaf_width=16``:

- FFF vanilla (no load balancing, no master leaf), +LB, +master leaf, and +both, which is
  the estimator with only ``depth`` and ``leaf_width`` set: the defaults; for the
  classification sets also the defaults with ``projection_rank=None`` (first layers trained
  on their own, without the shared input projection), with ``input_noise=0.0`` (no
  noise on the training rows) and with ``label_smoothing=0.0`` (plain log-loss throughout);
- the MLP of the same active width (``leaf_width + master_leaf_width`` = 32 hidden units) and
  of the same training width (``2**depth * leaf_width``), with scikit-learn's defaults;
- HistGradientBoosting with its defaults.

``mnist1d_40k`` (MNIST-1D at 50,000 samples), ``mnist1d_40k_unit`` (the same mapped to [0, 1])
and ``make_classification_400`` (50,000 rows of 400 features) give a depth-6 tree hundreds of
rows per leaf, and ``make_classification_200k`` (``make_classification``'s parameters at
200,000 rows) a depth-8 tree as many; they run only when ``--datasets`` names them. Inputs
are standardised on the training split, except for ``digits_raw`` (digits as scikit-learn
returns them, 0 to 16), ``digits_unit`` (divided by 16) and ``mnist1d_40k_unit``, which every
model gets as they are; MLPRegressor gets standardised targets too (FFFRegressor
standardises them itself). The data sets need no download. The split is fixed; the seeds
vary the models' initialisation and batch order. Usage::

    python benchmarks/bench_accuracy.py [--quick] [--datasets digits,diabetes] [--n-jobs 2]
                                        [--models +both] [--params alpha=10]
                                        [--seeds 10]

``--quick`` (what CI runs) takes one seed, depth 4 and at most 5,000 training rows per data
set. Needs the ``benchmark`` extra (``mnist1d``).
"""

import argparse
import ast
import functools
import json
import math
import time
import warnings

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.compose import TransformedTargetRegressor
from sklearn.datasets import load_diabetes, load_digits, make_classification, make_friedman1
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from fffsklearn import FFFClassifier, FFFRegressor
from fffsklearn._network import FFFNetwork

LEAF_WIDTH = 16
MASTER_LEAF_WIDTH = 16  # the estimators' default
QUICK_MAX_TRAIN_ROWS = 5000

FFF_VARIANTS = {
    "vanilla": {"load_balancing": 0.0, "master_leaf_width": 0},
    "+LB": {"master_leaf_width": 0},
    "+master": {"load_balancing": 0.0},
    "+both (defaults)": {},
}


def _mnist1d(num_samples=10_000):
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The mnist1d data set needs the mnist1d package: pip install fffsklearn[benchmark]"
        ) from exc
    args = get_dataset_args()
    args.num_samples = num_samples
    data = make_dataset(args)  # generated offline from the package's templates; 80/20 split
    return data["x"], data["x_test"], data["y"], data["y_test"]


def _split(X, y, test_size, stratify):
    return train_test_split(
        X, y, test_size=test_size, random_state=0, stratify=y if stratify else None
    )


def _unit_range(X_train, X_test, y_train, y_test):
    """Both splits mapped to [0, 1] by the training split's smallest and largest value."""
    low, high = X_train.min(), X_train.max()
    return (X_train - low) / (high - low), (X_test - low) / (high - low), y_train, y_test


def _digits(divisor=1.0):
    X, y = load_digits(return_X_y=True)
    return _split(X / divisor, y, 0.3, True)


DATASETS = {
    "digits": ("classification", _digits),
    # Digits as scikit-learn returns them (pixel counts 0 to 16) and divided by 16 (images in
    # [0, 1]): what users bring, fed to every model without a scaler.
    "digits_raw": ("classification", _digits),
    "digits_unit": ("classification", lambda: _digits(16.0)),
    "mnist1d": ("classification", _mnist1d),
    # 40,000 training rows: enough for about 600 rows per leaf of a depth-6 tree, where
    # depth 6 should not lose to depth 4; also mapped to [0, 1] as images are, no scaler.
    "mnist1d_40k": ("classification", lambda: _mnist1d(50_000)),
    "mnist1d_40k_unit": ("classification", lambda: _unit_range(*_mnist1d(50_000))),
    "make_classification": (
        "classification",
        lambda: _split(
            *make_classification(
                n_samples=50_000, n_features=40, n_informative=20, n_classes=10, random_state=0
            ),
            0.2,
            True,
        ),
    ),
    # make_classification's parameters at 160,000 training rows, where each leaf of a depth-8
    # tree gets as many rows as a depth-6 tree's at 40,000. Not the same classes: the
    # clusters' covariances are drawn after the rows.
    "make_classification_200k": (
        "classification",
        lambda: _split(
            *make_classification(
                n_samples=200_000, n_features=40, n_informative=20, n_classes=10, random_state=0
            ),
            0.2,
            True,
        ),
    ),
    "make_classification_400": (
        "classification",
        lambda: _split(
            *make_classification(
                n_samples=50_000,
                n_features=400,
                n_informative=40,
                n_classes=10,
                random_state=0,
            ),
            0.2,
            True,
        ),
    ),
    "friedman1": (
        "regression",
        lambda: _split(*make_friedman1(n_samples=20_000, random_state=0), 0.2, False),
    ),
    # Half the rows are held out so that a depth-6 tree sees about 3 held-out rows per leaf:
    # with fewer, even perfectly balanced routing would show a low leaf-usage entropy.
    "diabetes": ("regression", lambda: _split(*load_diabetes(return_X_y=True), 0.5, False)),
}


UNSCALED = {"digits_raw", "digits_unit", "mnist1d_40k_unit"}
# Tens of thousands of rows on which depth 6 must not lose to depth 4: about 20 minutes each
# for every model and seed, so they run only when --datasets names them.
LARGE = {"mnist1d_40k", "mnist1d_40k_unit", "make_classification_400", "make_classification_200k"}


@functools.cache
def load(name, quick):
    """Float32 training and held-out splits of data set ``name``, standardised on the
    training split unless the data set is one of ``UNSCALED``."""
    X_train, X_test, y_train, y_test = DATASETS[name][1]()
    if quick and len(X_train) > QUICK_MAX_TRAIN_ROWS:
        X_train, y_train = X_train[:QUICK_MAX_TRAIN_ROWS], y_train[:QUICK_MAX_TRAIN_ROWS]
    if name not in UNSCALED:
        scaler = StandardScaler().fit(X_train)
        X_train, X_test = (scaler.transform(X) for X in (X_train, X_test))
    return X_train.astype(np.float32), X_test.astype(np.float32), y_train, y_test


def make_model(task, family, params, seed):
    classification = task == "classification"
    if family == "FFF":
        return (FFFClassifier if classification else FFFRegressor)(**params, random_state=seed)
    if family == "MLP":
        if classification:
            return MLPClassifier(**params, random_state=seed)
        return TransformedTargetRegressor(
            MLPRegressor(**params, random_state=seed), transformer=StandardScaler()
        )
    return (HistGradientBoostingClassifier if classification else HistGradientBoostingRegressor)(
        random_state=seed
    )


def soft_score(model, X, y):
    """Held-out score of the soft path-probability mixture of a fitted FFF."""
    with torch.no_grad():
        outputs = (
            FFFNetwork.from_arrays(model.arrays_)
            .soft_forward(torch.from_numpy(X), straight_through=False)
            .outputs.numpy()
        )
    return model._score_outputs(outputs, model._encode_targets(y, first_call=False))


def run_job(dataset, quick, label, family, params, seed):
    """Fit one model with one seed on one data set, single-threaded; return its figures."""
    task = DATASETS[dataset][0]
    X_train, X_test, y_train, y_test = load(dataset, quick)
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        torch.set_num_threads(1)
        model = make_model(task, family, params, seed)
        start = time.perf_counter()
        model.fit(X_train, y_train)
        fit_seconds = time.perf_counter() - start
        result = {
            "dataset": dataset,
            "model": label,
            "seed": seed,
            "score": model.score(X_test, y_test),
            "fit_s": fit_seconds,
        }
        if family == "FFF":
            n_leaves = 2 ** params["depth"]
            counts = np.bincount(model.apply(X_test), minlength=n_leaves)
            p = counts[counts > 0] / counts.sum()
            result["entropy"] = float(-(p * np.log(p)).sum() / math.log(n_leaves))
            result["gap"] = 100 * (soft_score(model, X_test, y_test) - result["score"])
            result["epochs"] = model.n_iter_
    return result


def jobs_for(dataset, depths, seeds, quick):
    task = DATASETS[dataset][0]
    specs = [
        (
            f"MLP({LEAF_WIDTH + MASTER_LEAF_WIDTH},) same active width",
            "MLP",
            {"hidden_layer_sizes": (LEAF_WIDTH + MASTER_LEAF_WIDTH,)},
        )
    ]
    for depth in depths:
        width = 2**depth * LEAF_WIDTH
        specs += [
            (
                f"depth {depth} FFF {variant}",
                "FFF",
                {"depth": depth, "leaf_width": LEAF_WIDTH, **extra},
            )
            for variant, extra in FFF_VARIANTS.items()
        ]
        if dataset in UNSCALED:  # what the estimators' own standardisation buys
            specs.append(
                (
                    f"depth {depth} FFF defaults, standardize=False",
                    "FFF",
                    {"depth": depth, "leaf_width": LEAF_WIDTH, "standardize": False},
                )
            )
        if task == "classification":
            # What the classifier's input projection, noise and label smoothing buy.
            specs += [
                (
                    f"depth {depth} FFF defaults, {name}={value}",
                    "FFF",
                    {"depth": depth, "leaf_width": LEAF_WIDTH, name: value},
                )
                for name, value in [
                    ("projection_rank", None),
                    ("input_noise", 0.0),
                    ("label_smoothing", 0.0),
                ]
            ]
        specs.append(
            (
                f"depth {depth} MLP({width},) same training width",
                "MLP",
                {"hidden_layer_sizes": (width,)},
            )
        )
    specs.append(
        (
            f"HistGradientBoosting{'Classifier' if task == 'classification' else 'Regressor'}",
            "HGB",
            {},
        )
    )
    return [
        (dataset, quick, label, family, params, seed)
        for label, family, params in specs
        for seed in seeds
    ]


def _expected_cost(dataset, quick, label, family, params, seed):
    n_train = len(load(dataset, quick)[0])
    width = 2 ** params.get("depth", 0) * LEAF_WIDTH if family == "FFF" else 64
    return n_train * width


def summarise(results, datasets, depths, quick, checks=True):
    def pick(dataset, model, key="score"):
        return np.array(
            [r[key] for r in results if r["dataset"] == dataset and r["model"] == model]
        )

    for dataset in datasets:
        task, _ = DATASETS[dataset]
        X_train, X_test, *_ = load(dataset, quick)
        metric = "accuracy" if task == "classification" else "R^2"
        print(
            f"\n## {dataset}: {len(X_train)} training rows, {len(X_test)} held out, "
            f"{X_train.shape[1]} features; held-out {metric} (mean ± std over seeds)"
        )
        print(
            f"{'model':<46}{metric:>17}{'leaf entropy':>14}{'soft-hard':>11}{'epochs':>8}"
            f"{'fit s':>8}"
        )
        for model in dict.fromkeys(r["model"] for r in results if r["dataset"] == dataset):
            scores = pick(dataset, model)
            line = f"{model:<46}{scores.mean():>9.4f} ± {scores.std():.4f}"
            if model.startswith("depth") and " FFF " in model:
                line += (
                    f"{pick(dataset, model, 'entropy').mean():>14.3f}"
                    f"{pick(dataset, model, 'gap').mean():>+11.2f}"
                    f"{pick(dataset, model, 'epochs').mean():>8.0f}"
                )
            else:
                line += " " * 33
            print(line + f"{pick(dataset, model, 'fit_s').mean():>8.1f}")

    if not checks:
        return
    print("\n## Acceptance checks")
    entropy_lb = min(
        pick(ds, f"depth {d} FFF {v}", "entropy").min()
        for ds in datasets
        for d in depths
        for v in ("+LB", "+both (defaults)")
    )
    entropy_off = min(
        pick(ds, f"depth {d} FFF {v}", "entropy").min()
        for ds in datasets
        for d in depths
        for v in ("vanilla", "+master")
    )
    print(
        f"leaf entropy with load balancing, lowest over data sets, depths, seeds: "
        f"{entropy_lb:.3f} (>= 0.9); without: {entropy_off:.3f}"
    )
    classification = [ds for ds in datasets if DATASETS[ds][0] == "classification"]
    if classification:
        gain = np.mean(
            [
                pick(ds, f"depth {d} FFF +both (defaults)") - pick(ds, f"depth {d} FFF vanilla")
                for ds in classification
                for d in depths
            ]
        )
        print(
            f"+both minus vanilla, mean over classification data sets, depths and seeds: "
            f"{100 * gain:+.2f} points (> 0)"
        )
    worst_gap = max(
        pick(ds, f"depth {d} FFF +both (defaults)", "gap").mean() for ds in datasets for d in depths
    )
    print(
        f"soft-minus-hard gap of the defaults, largest over data sets and depths: "
        f"{worst_gap:+.2f} points (<= 1)"
    )
    active = f"MLP({LEAF_WIDTH + MASTER_LEAF_WIDTH},) same active width"
    print(
        "defaults minus MLP of the same active width (> 0) | minus MLP of the same training "
        "width, in points:"
    )
    for ds in datasets:
        cells = []
        for d in depths:
            defaults = pick(ds, f"depth {d} FFF +both (defaults)").mean()
            training = pick(ds, f"depth {d} MLP({2**d * LEAF_WIDTH},) same training width").mean()
            cells.append(
                f"depth {d}: {100 * (defaults - pick(ds, active).mean()):+6.2f} | "
                f"{100 * (defaults - training):+6.2f}"
            )
        print(f"  {ds:<22}" + "    ".join(cells))


def _parameter_value(text):
    """A Python literal (``3``, ``None``, ``'tanh'``), or the text itself (``tanh``)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one seed, depth 4, at most 5,000 training rows per data set",
    )
    parser.add_argument(
        "--datasets",
        default=",".join(ds for ds in DATASETS if ds not in LARGE),
        help="comma-separated subset of: " + ", ".join(DATASETS) + " (default: "
        "all but " + ", ".join(sorted(LARGE)) + ")",
    )
    parser.add_argument(
        "--n-jobs", type=int, default=2, help="fits run in parallel, one thread each"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        help="seeds 0 to SEEDS - 1 (default: 3, or 1 with "
        "--quick); ten separate a change from rounding noise on the small sets",
    )
    parser.add_argument(
        "--models",
        help="only the models whose name contains one of these "
        "comma-separated strings, for example '+LB,+both'",
    )
    parser.add_argument(
        "--params",
        help="estimator parameters for every FFF fit, on top of "
        "each variant's, for example 'alpha=10,activation=tanh'",
    )
    parser.add_argument("--json", help="also write every fit's figures to this file")
    parser.add_argument(
        "--from-json",
        help="fit nothing: summarise the figures saved in these "
        "comma-separated files; a later file's figures of a data set and model "
        "replace an earlier file's",
    )
    args = parser.parse_args()
    datasets = args.datasets.split(",")
    unknown = set(datasets) - set(DATASETS)
    if unknown:
        parser.error(f"unknown data sets {sorted(unknown)}; choose from {list(DATASETS)}")
    seeds, depths = ([0], [4]) if args.quick else ([0, 1, 2], [4, 6])
    if args.seeds is not None:
        seeds = list(range(args.seeds))
    start = time.perf_counter()
    if args.from_json:
        saved = {}
        for path in args.from_json.split(","):
            with open(path) as file:
                figures = json.load(file)
            for key in {(r["dataset"], r["model"]) for r in figures}:
                saved[key] = [r for r in figures if (r["dataset"], r["model"]) == key]
        summarise([r for group in saved.values() for r in group], datasets, depths, args.quick)
        return
    jobs = [job for ds in datasets for job in jobs_for(ds, depths, seeds, args.quick)]
    if args.models:
        wanted = args.models.split(",")
        jobs = [job for job in jobs if any(part in job[2] for part in wanted)]
    if args.params:
        extra = {
            key: _parameter_value(value)
            for key, value in (item.split("=") for item in args.params.split(","))
        }
        jobs = [(*job[:4], {**job[4], **extra}, job[5]) if job[3] == "FFF" else job for job in jobs]
    # Longest fits first, so that the processes finish together.
    jobs.sort(key=lambda job: -_expected_cost(*job))
    print(
        f"{len(jobs)} fits on {args.n_jobs} processes; seeds {seeds}, depths {depths}, "
        f"leaf width {LEAF_WIDTH}, master leaf width {MASTER_LEAF_WIDTH}"
        + (f"; every FFF also with {args.params}" if args.params else "")
    )
    # Workers import this file as a module, so that each keeps its own cache of data sets.
    from bench_accuracy import run_job as imported_run_job

    results = Parallel(n_jobs=args.n_jobs)(delayed(imported_run_job)(*job) for job in jobs)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)
    summarise(results, datasets, depths, args.quick, checks=not args.models)
    print(f"\nwall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
