"""Inference speed of fffsklearn against its anchors, measured side by side in one run.

Prints time per row of FFFClassifier.predict, the dense torch twin of the same training width,
MLPClassifier of that width, a vectorised torch gathered-bmm hard-routing baseline, and the
compute-bound limit (active FLOPs / this machine's float32 GEMM rate), at several batch sizes;
then a depth sweep; then the thread scaling. Usage:

    python benchmarks/bench_inference.py [--quick]
"""

import argparse
import time

import numpy as np
import torch
from _common import (
    classifier_from_arrays,
    describe_threads,
    gemm_flops_per_second,
    interleaved_best_times,
    leaf_usage_entropy,
    routed_arrays,
)
from sklearn.neural_network import MLPClassifier
from sklearn.utils.validation import validate_data

from fffsklearn.inference import _kernel

D, O, DEPTH, LEAF, MASTER = 784, 10, 6, 16, 16


def dense_twin(width, d=D, o=O):
    model = torch.nn.Sequential(
        torch.nn.Linear(d, width), torch.nn.ReLU(), torch.nn.Linear(width, o)
    )
    return model.eval()


def torch_dense_predict(model, X):
    with torch.no_grad():
        return model(torch.from_numpy(X)).argmax(1).numpy()


def torch_tensors(arrays):
    """The fitted arrays as torch tensors, converted once, outside the timed calls."""
    return {name: torch.from_numpy(np.array(getattr(arrays, name))) for name in arrays.ARRAY_NAMES}


def torch_gathered_bmm(arrays, t, X, chunk=2048):
    """What a competent engineer writes in an afternoon: per-level gather, gathered bmm.
    ``t`` holds the arrays as torch tensors (:func:`torch_tensors`)."""
    out = []
    with torch.no_grad():
        for start in range(0, X.shape[0], chunk):
            x = torch.from_numpy(X[start : start + chunk])
            node = torch.zeros(x.shape[0], dtype=torch.long)
            for _ in range(arrays.depth):
                z = (x * t["node_weights"][node]).sum(1) + t["node_biases"][node]
                node = 2 * node + 1 + (z > 0).long()
            leaf = node - (arrays.n_leaves - 1)
            h = torch.relu(
                torch.bmm(x[:, None], t["leaf_hidden_weights"][leaf])[:, 0]
                + t["leaf_hidden_biases"][leaf]
            )
            y = (
                torch.bmm(h[:, None], t["leaf_output_weights"][leaf])[:, 0]
                + t["leaf_output_biases"][leaf]
            )
            m = torch.relu(x @ t["master_hidden_weights"] + t["master_hidden_biases"])
            y = y + m @ t["master_output_weights"] + t["master_output_biases"]
            out.append(y.argmax(1))
    return torch.cat(out).numpy()


def predict_with(model, X, instruction_set):
    previous = _kernel.use_instruction_set(instruction_set)
    try:
        return model.predict(X)
    finally:
        _kernel.use_instruction_set(previous)


def active_flops(depth, d, leaf, master, o):
    return 2 * (depth * d + d * leaf + leaf * o + d * master + master * o)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches, fewer depths")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    gemm = gemm_flops_per_second()
    print(
        f"float32 GEMM rate: {gemm / 1e9:.0f} GFLOP/s; {describe_threads()}; "
        f"kernel instruction sets: {', '.join(_kernel.instruction_sets())} (first in use)"
    )

    batches = [1, 256, 10_000] + ([] if args.quick else [1_000_000])
    X_all = rng.standard_normal((max(batches), D)).astype(np.float32)
    arrays = routed_arrays(X_all[:5000], DEPTH, LEAF, MASTER, O)
    model = classifier_from_arrays(arrays)
    tensors = torch_tensors(arrays)
    width = 2**DEPTH * LEAF
    twin = dense_twin(width)
    mlp = MLPClassifier(hidden_layer_sizes=(width,), max_iter=1).fit(
        X_all[:200], np.arange(200) % O
    )
    limit_us = active_flops(DEPTH, D, LEAF, MASTER, O) / gemm * 1e6

    print(
        f"\nd={D}, o={O}, depth {DEPTH}, leaf {LEAF}, master leaf {MASTER}, training width {width}"
    )
    header = f"{'per row (us)':<34}" + "".join(f"{f'batch {b:,}':>16}" for b in batches)
    print(header)
    rows = {
        "fffsklearn predict": lambda X: model.predict(X),
        "dense torch twin": lambda X: torch_dense_predict(twin, X),
        f"MLPClassifier({width}).predict": lambda X: mlp.predict(X),
        "torch gathered-bmm hard routing": lambda X: torch_gathered_bmm(arrays, tensors, X),
    }
    results = {name: [] for name in rows}
    for b in batches:
        # Anchors are timed on 100,000 rows when the batch is a million.
        inputs = [
            X_all[:b] if b < 1_000_000 or name == "fffsklearn predict" else X_all[:100_000]
            for name in rows
        ]
        times = interleaved_best_times(
            [lambda fn=fn, X=X: fn(X) for fn, X in zip(rows.values(), inputs)],
            rounds=1 if b >= 1_000_000 else 3,
            min_time=0.02 if b < 1000 else 0.0,
        )
        for name, X, t in zip(rows, inputs, times):
            results[name].append(t / len(X) * 1e6)
    for name, times in results.items():
        print(f"{name:<34}" + "".join(f"{t:>16.3f}" for t in times))
    print(f"{'compute-bound limit':<34}" + "".join(f"{limit_us:>16.3f}" for _ in batches))
    one_row, validate = interleaved_best_times(
        [lambda: model.predict(X_all[:1]), lambda: validate_data(model, X_all[:1], reset=False)]
    )
    validate *= 1e6
    print(f"{'validate_data alone':<34}{validate:>16.3f}")
    print(f"{'fffsklearn predict, interleaved':<34}{one_row * 1e6:>16.3f}")

    fff = results["fffsklearn predict"]
    i10k = batches.index(10_000)
    print("\nratios")
    print(
        "  batch 10,000: speed-up over dense torch twin "
        f"{results['dense torch twin'][i10k] / fff[i10k]:.1f}x"
        " (target >= 12x); fraction of compute-bound limit "
        f"{limit_us / fff[i10k]:.0%} (target >= 35%)"
    )
    print(
        "  batch 10,000: speed-up over torch gathered-bmm "
        f"{results['torch gathered-bmm hard routing'][i10k] / fff[i10k]:.1f}x"
    )
    print(
        f"  batch 1: predict / validate_data = {one_row * 1e6 / validate:.2f} (target <= 1.6; "
        "both timed in alternating rounds)"
    )

    X10k = X_all[:10_000]
    serial, parallel = (
        classifier_from_arrays(arrays, n_jobs=1),
        classifier_from_arrays(arrays, n_jobs=2),
    )
    t1, t2 = (
        t / len(X10k) * 1e6
        for t in interleaved_best_times(
            [lambda: serial.predict(X10k), lambda: parallel.predict(X10k)], rounds=7, min_time=0.0
        )
    )
    print(
        f"  batch 10,000: n_jobs=1 {t1:.3f} us/row, n_jobs=2 {t2:.3f} us/row, "
        f"speed-up {t1 / t2:.2f}x (target >= 1.6x)"
    )
    # OpenBLAS's workers spin for a while after a matrix product, on the cores predict wants.
    after_blas, _ = interleaved_best_times(
        [lambda: parallel.predict(X10k), lambda: mlp.predict(X10k)], rounds=5, min_time=0.0
    )
    after_blas *= 1e6 / len(X10k)
    print(
        f"  batch 10,000: n_jobs=2 right after MLPClassifier.predict {after_blas:.3f} us/row, "
        f"{after_blas / t2:.2f}x the time alone"
    )
    instruction_sets = _kernel.instruction_sets()
    if len(instruction_sets) > 1:
        # What a CPU without the widest instruction set gets from the same build.
        widest, narrowest = instruction_sets[0], instruction_sets[-1]
        wide, narrow = (
            t / len(X10k) * 1e6
            for t in interleaved_best_times(
                [
                    lambda: predict_with(model, X10k, widest),
                    lambda: predict_with(model, X10k, narrowest),
                ],
                rounds=3,
                min_time=0.0,
            )
        )
        print(
            f"  batch 10,000: kernel with {widest} {wide:.3f} us/row, "
            f"with {narrowest} {narrow:.3f} us/row; "
            f"speed-up of the {narrowest} kernel over the twin "
            f"{results['dense torch twin'][i10k] / narrow:.1f}x"
        )

    depths = range(2, 15, 2 if args.quick else 1)
    print(
        f"\ndepth sweep: leaf {LEAF}, master leaf {MASTER}, batch 10,000 "
        "(dense twin timed on 1,000 rows)"
    )
    print(
        f"{'depth':>5}{'train width':>12}{'leaf entropy':>14}{'fff us/row':>12}"
        f"{'twin us/row':>13}{'speed-up':>10}{'% of limit':>12}"
    )
    for depth in depths:
        arrays_d = routed_arrays(X_all[:20_000], depth, LEAF, MASTER, O, seed=depth)
        model_d = classifier_from_arrays(arrays_d)
        width_d = 2**depth * LEAF
        twin_d = dense_twin(width_d)
        fff_s, twin_s = interleaved_best_times(
            [lambda: model_d.predict(X10k), lambda: torch_dense_predict(twin_d, X_all[:1000])],
            rounds=3,
            min_time=0.0,
        )
        fff_us, twin_us = fff_s / len(X10k) * 1e6, twin_s / 1000 * 1e6
        entropy = leaf_usage_entropy(model_d.apply(X10k), arrays_d.n_leaves)
        limit_d = active_flops(depth, D, LEAF, MASTER, O) / gemm * 1e6
        print(
            f"{depth:>5}{width_d:>12,}{entropy:>14.3f}{fff_us:>12.3f}{twin_us:>13.2f}"
            f"{twin_us / fff_us:>9.1f}x{limit_d / fff_us:>11.0%}"
        )


if __name__ == "__main__":
    start = time.time()
    main()
    print(f"\n(total {time.time() - start:.0f} s)")
