"""GPU figures of fffsklearn against the dense twin on the same device, in one run.

1. Device copy bandwidth (read + write of a large tensor).
2. Hard-routed inference (torch backend) of a device-resident batch, d=784, depth 8, leaf 16,
   master leaf 16, against the dense twin of training width 4096 (default float32 matmul
   settings), and the bandwidth achieved for reading X once.
3. One training epoch on 60,000 x 784 rows against the dense twin's epoch at the same batch
   size, and fit on the device against fit on the CPU.

Usage: python benchmarks/bench_gpu.py [--device cuda] [--quick]
(--device cpu runs the same measurements on the CPU, as a smoke test of the script.)
"""

import argparse
import time
import warnings

import numpy as np
import torch

from fffsklearn import FFFClassifier
from fffsklearn._testing import random_arrays
from fffsklearn._training import Trainer
from fffsklearn.inference import _torch

D, O, DEPTH, LEAF, MASTER = 784, 10, 8, 16, 16


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="smaller batches")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA device here; run on a GPU machine or pass --device cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows = 20_000 if args.quick else 1_000_000
    train_rows = 6_000 if args.quick else 60_000
    print(f"device: {name}; TF32 matmul allowed: {torch.backends.cuda.matmul.allow_tf32}")

    big = torch.empty(rows * D, device=device)
    copy_s = timed(lambda: big.clone(), device)
    copy_bw = 2 * big.numel() * 4 / copy_s
    print(f"\ndevice copy bandwidth (read + write): {copy_bw / 1e9:,.0f} GB/s")

    rng = np.random.default_rng(0)
    arrays = random_arrays(rng, DEPTH, D, LEAF, MASTER, O)
    X = torch.randn(rows, D, device=device)
    fff_s = timed(lambda: _torch.forward(arrays, X, device), device)
    twin = dense_twin(2**DEPTH * LEAF, device).eval()
    with torch.no_grad():
        twin_s = timed(lambda: twin(X).argmax(1).cpu(), device)
    read_bw = X.numel() * 4 / fff_s
    print(f"\nhard inference, {rows:,} rows, d={D}, depth {DEPTH}, leaf {LEAF}, master {MASTER}")
    print(f"  fffsklearn torch backend  {fff_s * 1e3:10.2f} ms")
    print(f"  dense twin (width {2**DEPTH * LEAF})  {twin_s * 1e3:10.2f} ms")
    print(f"  speed-up {twin_s / fff_s:.1f}x (target >= 10x); reading X once at "
          f"{read_bw / 1e9:,.0f} GB/s = {read_bw / copy_bw:.0%} of the copy bandwidth (target >= 25%)")

    X_train = rng.standard_normal((train_rows, D)).astype(np.float32)
    y_train = rng.integers(0, O, train_rows)
    weights = np.ones(train_rows, np.float32)
    params = FFFClassifier(depth=DEPTH, leaf_width=LEAF, master_leaf_width=MASTER).get_params()
    trainer = Trainer.create(D, O, params, "classification", device, seed=0)
    fff_epoch = timed(lambda: trainer.run_epoch(X_train, y_train, weights, 256), device, repeat=1)
    model = dense_twin(2**DEPTH * LEAF, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def twin_epoch():
        for start in range(0, train_rows, 256):
            xb = torch.from_numpy(X_train[start : start + 256]).to(device)
            yb = torch.from_numpy(y_train[start : start + 256]).to(device)
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    twin_epoch_s = timed(twin_epoch, device, repeat=1)
    print(f"\none training epoch, {train_rows:,} x {D}, batch 256")
    print(f"  fffsklearn {fff_epoch:.2f} s, dense twin {twin_epoch_s:.2f} s: "
          f"{fff_epoch / twin_epoch_s:.2f}x the twin (target <= 1.5x)")

    fit_rows = slice(0, train_rows // 3)
    fit_times = {}
    for where in dict.fromkeys([str(device), "cpu"]):
        estimator = FFFClassifier(depth=DEPTH, leaf_width=LEAF, max_iter=2, device=where,
                                  random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_times[where] = timed(lambda: estimator.fit(X_train[fit_rows], y_train[fit_rows]),
                                     device, repeat=1)
    print(f"\nfit, depth {DEPTH}, leaf {LEAF}, 2 epochs on {train_rows // 3:,} rows: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in fit_times.items())
          + (f"; {fit_times['cpu'] / fit_times[str(device)]:.1f}x (target >= 5x)"
             if len(fit_times) == 2 else ""))


if __name__ == "__main__":
    main()
