"""GPU figures of fffsklearn against the dense twin on the same device, in one run.

1. Device copy bandwidth (read + write of a large tensor).
2. Hard-routed inference (torch backend) of a device-resident batch, d=784, depth 8, leaf 16,
   master leaf 16, against the dense twin of training width 4096 in float32 and in TF32, and
   the bandwidth achieved for reading X once.
3. One training epoch on 60,000 x 784 rows (10 classes, the default batch of 200) at depth 6
   and 8: the estimators' trainer with its steps replayed as CUDA graphs and launched one by
   one, against a plain torch loop training the dense twin with the same optimizer and batch.
4. ``FFFClassifier.fit`` on those rows at depth 6 on the GPU against the same fit on the CPU.

Targets (issue #16): inference at least 10x the float32 twin and at least 25% of the copy
bandwidth; a GPU epoch at most 1.5x the twin's; GPU fit at least 5x faster than CPU fit.

Usage: python benchmarks/bench_gpu.py [--device cuda] [--quick]
(--device cpu runs the same measurements on the CPU, as a smoke test of the script.)
"""

import argparse
import time
import warnings

import numpy as np
import torch

from bench_training import dense_twin_epoch_seconds, random_rows
from fffsklearn import FFFClassifier
from fffsklearn._testing import random_arrays
from fffsklearn._training import Trainer
from fffsklearn.inference import _torch

D, O, DEPTH, LEAF, MASTER = 784, 10, 8, 16, 16
BATCH = 200  # the estimators' default
FIT_EPOCHS = 20


def timed(fn, device, repeat=3):
    """Best wall time of fn() over ``repeat`` runs after a warm-up, synchronising CUDA."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def dense_twin(width, device):
    return torch.nn.Sequential(
        torch.nn.Linear(D, width), torch.nn.ReLU(), torch.nn.Linear(width, O)
    ).to(device)


def inference_figures(device, rows):
    big = torch.empty(rows * D, device=device)
    copy_s = timed(lambda: big.clone(), device)
    copy_bw = 2 * big.numel() * 4 / copy_s
    del big
    print(f"\ndevice copy bandwidth (read + write): {copy_bw / 1e9:,.0f} GB/s")

    arrays = random_arrays(np.random.default_rng(0), DEPTH, D, LEAF, MASTER, O)
    X = torch.randn(rows, D, device=device)
    fff_s = timed(lambda: _torch.forward(arrays, X, device), device)
    twin = dense_twin(2**DEPTH * LEAF, device).eval()
    twin_s = {}
    for precision, tf32 in (("float32", False), ("TF32", True)):
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        with torch.no_grad():
            twin_s[precision] = timed(lambda: twin(X).argmax(1).cpu(), device)
        torch.backends.cuda.matmul.allow_tf32 = previous
    read_bw = X.numel() * 4 / fff_s
    print(f"\nhard inference, {rows:,} rows, d={D}, depth {DEPTH}, leaf {LEAF}, master {MASTER}")
    print(f"  fffsklearn torch backend       {fff_s * 1e3:10.2f} ms")
    for precision, seconds in twin_s.items():
        print(f"  dense twin (width {2**DEPTH * LEAF}), {precision:<7} {seconds * 1e3:10.2f} ms: "
              f"FFF {seconds / fff_s:.1f}x faster")
    print(f"  reading X once at {read_bw / 1e9:,.0f} GB/s = {read_bw / copy_bw:.0%} of the copy "
          "bandwidth (targets: >= 10x the float32 twin, >= 25%)")


def epoch_figures(device, X, y):
    weights = np.ones(len(X), np.float32)
    print(f"\none training epoch, {len(X):,} x {D}, batch {BATCH} (seconds)")
    print(f"{'depth':>7}{'FFF graphs':>12}{'FFF eager':>11}{'twin':>9}{'graphs/twin':>13}")
    for depth in (6, 8):
        params = FFFClassifier(depth=depth, leaf_width=LEAF, master_leaf_width=MASTER).get_params()
        seconds = []
        for graphs in (True, False):
            trainer = Trainer.create(D, O, params, "classification", device, seed=0)
            trainer.use_cuda_graphs = graphs
            with trainer.rows_on_device(X):
                seconds.append(timed(lambda: trainer.run_epoch(X, y, weights, BATCH), device))
        twin = min(dense_twin_epoch_seconds(X, y, depth, BATCH, torch.optim.Adam, epochs=1,
                                            device=device) for _ in range(3))
        print(f"{depth:>7}{seconds[0]:>12.3f}{seconds[1]:>11.3f}{twin:>9.3f}"
              f"{seconds[0] / twin:>13.2f}   (target <= 1.5)")


def fit_figures(device, X, y):
    fit_s = {}
    for where in dict.fromkeys([str(device), "cpu"]):
        estimator = FFFClassifier(depth=6, leaf_width=LEAF, master_leaf_width=MASTER,
                                  max_iter=FIT_EPOCHS, device=where, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            estimator.fit(X, y)
            fit_s[where] = time.perf_counter() - start
    print(f"\nFFFClassifier(depth=6).fit, {FIT_EPOCHS} epochs on {len(X):,} x {D}, "
          f"{torch.get_num_threads()} CPU threads: "
          + ", ".join(f"{where} {seconds:.2f} s" for where, seconds in fit_s.items())
          + (f"; GPU {fit_s['cpu'] / fit_s[str(device)]:.1f}x faster (target >= 5x)"
             if len(fit_s) == 2 else ""))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="smaller data")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA device here; run on a GPU machine or pass --device cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}")
    inference_figures(device, 20_000 if args.quick else 1_000_000)
    X, y = random_rows(3_000 if args.quick else 60_000)
    epoch_figures(device, X, y)
    fit_figures(device, X, y)


if __name__ == "__main__":
    main()
