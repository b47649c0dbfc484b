"""GPU figures of fffsklearn against the dense twin on the same device, in one run.

1. Device copy bandwidth (read + write of a large tensor).
2. Hard-routed inference (torch and Triton backends) of a device-resident batch, d=784,
   depth 8, leaf 16, master leaf 16, outputs left on the device, against the dense twin of
   training width 4096 in float32 and in TF32, and the bandwidth achieved for reading X once;
   then the same rows from and to host memory, as ``predict`` takes them.
3. One training epoch on 60,000 x 784 rows (10 classes, the default batch of 200) at depth 6
   and 8: the estimators' trainer with its steps replayed as CUDA graphs and launched one by
   one, against a plain torch loop training the dense twin with the same optimizer and batch.
4. ``FFFClassifier.fit`` on those rows at depth 6 on the GPU against the same fit on the CPU.

Targets (issue #16): inference at least 10x the float32 twin and at least 25% of the copy
bandwidth; a GPU epoch at most 1.5x the twin's; GPU fit at least 5x faster than CPU fit.

With --kernels, first: the Triton kernels' time under other launch settings.
With --profile, instead: where the time of hard inference and of a GPU fit goes (torch's
profiler, device time per operation), and the inference time under other settings of the
torch backend's chunk budget and densely routed nodes.

Usage: python benchmarks/bench_gpu.py [--device cuda] [--quick] [--kernels] [--profile]
(--device cpu runs the same measurements on the CPU, as a smoke test of the script.)
"""

import argparse
import time
import warnings

import numpy as np
import torch
from bench_training import dense_twin_epoch_seconds, random_rows

from fffsklearn import FFFClassifier, inference
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


def fff_backends(device):
    """forward_tensors of the torch backend, and of the Triton backend where it runs (the one
    predict uses there)."""
    backends = {"torch": _torch.forward_tensors}
    if device.type == "cuda" and inference.triton_available():
        from fffsklearn.inference import _triton

        backends["triton"] = _triton.forward_tensors
    return backends


def copy_bandwidth(device, rows):
    big = torch.empty(rows * D, device=device)
    seconds = timed(lambda: big.clone(), device)
    return 2 * big.numel() * 4 / seconds


def inference_figures(device, rows):
    copy_bw = copy_bandwidth(device, rows)
    print(f"\ndevice copy bandwidth (read + write): {copy_bw / 1e9:,.0f} GB/s")

    arrays = random_arrays(np.random.default_rng(0), DEPTH, D, LEAF, MASTER, O)
    X = torch.randn(rows, D, device=device)
    # The device's work alone, for both models: X on the device, outputs left there.
    backends = fff_backends(device)
    fff_s = {name: timed(lambda: forward(arrays, X), device) for name, forward in backends.items()}
    results = {name: forward(arrays, X) for name, forward in backends.items()}
    twin = dense_twin(2**DEPTH * LEAF, device).eval()
    twin_s = {}
    for precision, tf32 in (("float32", False), ("TF32", True)):
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        with torch.no_grad():
            twin_s[precision] = timed(lambda: twin(X), device)
        torch.backends.cuda.matmul.allow_tf32 = previous
    X_host = X.cpu().numpy()
    X = None  # frees the device memory before the next measurement
    fastest = min(fff_s, key=fff_s.get)
    host_s = timed(
        lambda: inference.hard_forward(arrays, X_host, backend=fastest, device=device),
        device,
        repeat=1,
    )
    print(
        f"\nhard inference, {rows:,} rows, d={D}, depth {DEPTH}, leaf {LEAF}, master {MASTER}"
        "\n(rows and outputs on the device)"
    )
    for name, seconds in fff_s.items():
        read_bw = X_host.nbytes / seconds
        print(
            f"  fffsklearn {name:<7} backend   {seconds * 1e3:10.2f} ms: reads X once at "
            f"{read_bw / 1e9:,.0f} GB/s = {read_bw / copy_bw:.0%} of the copy bandwidth"
        )
    for precision, seconds in twin_s.items():
        print(
            f"  dense twin (width {2**DEPTH * LEAF}), {precision:<7} {seconds * 1e3:10.2f} ms: "
            + ", ".join(f"{name} {seconds / fff:.1f}x faster" for name, fff in fff_s.items())
        )
    print("  (targets: >= 10x the float32 twin, >= 25% of the copy bandwidth)")
    if len(results) == 2:
        (out_t, leaves_t), (out_k, leaves_k) = results.values()
        error = ((out_k - out_t).norm() / out_t.norm()).item()
        print(
            f"  triton against torch: {(leaves_k != leaves_t).sum().item()} rows in another "
            f"leaf, outputs ||diff|| / ||torch|| = {error:.1e}"
        )
    print(
        f"  from and to host memory, {fastest} backend (NumPy rows in chunks, as predict "
        f"does): {host_s * 1e3:.2f} ms"
    )


def _sweep(kind, launch, variants, run, compare, device):
    """Time ``run()`` with each of ``variants`` (dicts of launch settings) merged into the
    ``launch`` dict, print it with ``compare(result)``, and restore ``launch``."""
    defaults = dict(launch)
    for variant in variants:
        launch.update(variant)
        label = " ".join(f"{name} {value}" for name, value in variant.items())
        try:
            seconds = timed(run, device)
            print(f"  {kind:<6} {label}: {seconds * 1e3:7.2f} ms, {compare(run())}")
        except Exception as error:  # a setting the compiler refuses: report, go on
            print(f"  {kind:<6} {label}: {error!r}")
    launch.clear()
    launch.update(defaults)


def kernel_figures(device, rows):
    """Inference time of the Triton kernels under other launch settings than the defaults."""
    from fffsklearn.inference import _triton

    arrays = random_arrays(np.random.default_rng(0), DEPTH, D, LEAF, MASTER, O)
    X = torch.randn(rows, D, device=device)
    w = _torch.device_weights(arrays, device, torch.float32)
    leaves = _triton.route(arrays, X, w)
    outputs = _triton.evaluate(arrays, X, leaves, w)
    print(
        f"\nTriton kernels, {rows:,} rows: launch settings (defaults "
        f"{_triton.ROUTE_LAUNCH}, {_triton.LEAF_LAUNCH})"
    )
    _sweep(
        "route",
        _triton.ROUTE_LAUNCH,
        [
            dict(BLOCK_ROWS=rows_, RESIDENT_MAX_FEATURES=resident, num_warps=warps, BLOCK_K=128)
            for rows_, resident, warps in (
                (2, 1024, 1),
                (2, 1024, 2),
                (1, 1024, 1),
                (4, 1024, 1),
                (4, 1024, 2),
                (4, 1024, 4),
                (8, 1024, 2),
                (16, 1024, 8),
                (8, 0, 2),
                (16, 0, 4),
            )
        ],
        lambda: _triton.route(arrays, X, w),
        lambda result: f"same leaves {bool((result == leaves).all())}",
        device,
    )
    _sweep(
        "leaves",
        _triton.LEAF_LAUNCH,
        [
            dict(
                BLOCK_ROWS=rows_, BLOCK_K=k, num_warps=warps, num_stages=stages, PRECISION=precision
            )
            for rows_, k, warps, stages, precision in (
                (64, 32, 2, 3, "tf32x3"),
                (64, 32, 2, 2, "tf32x3"),
                (64, 32, 2, 4, "tf32x3"),
                (64, 64, 2, 3, "tf32x3"),
                (128, 32, 4, 3, "tf32x3"),
                (32, 32, 1, 3, "tf32x3"),
                (64, 32, 4, 3, "tf32x3"),
                (64, 32, 4, 3, "ieee"),
                (64, 32, 2, 3, "tf32"),
            )
        ],
        lambda: _triton.evaluate(arrays, X, leaves, w),
        lambda result: (
            "outputs off the defaults' by "
            f"{((result - outputs).norm() / outputs.norm()).item():.1e}"
        ),
        device,
    )
    order_s = timed(lambda: _triton.leaf_order(leaves), device)
    print(f"  of which sorting the rows by leaf: {order_s * 1e3:.2f} ms")


def epoch_figures(device, X, y):
    weights = np.ones(len(X), np.float32)
    print(f"\none training epoch, {len(X):,} x {D}, batch {BATCH} (seconds)")
    print(f"{'depth':>7}{'FFF graphs':>12}{'FFF eager':>11}{'twin':>9}{'graphs/twin':>13}")
    for depth in (6, 8):
        estimator = FFFClassifier(depth=depth, leaf_width=LEAF, master_leaf_width=MASTER)
        recipe = estimator._recipe(len(X), incremental=False)
        seconds = []
        for graphs in (True, False):
            trainer = Trainer.create(D, O, recipe, device, seed=0)
            trainer.use_cuda_graphs = graphs
            with trainer.rows_on_device(X):
                seconds.append(timed(lambda: trainer.run_epoch(X, y, weights, BATCH), device))
        twin = min(
            dense_twin_epoch_seconds(X, y, depth, BATCH, torch.optim.Adam, epochs=1, device=device)
            for _ in range(3)
        )
        print(
            f"{depth:>7}{seconds[0]:>12.3f}{seconds[1]:>11.3f}{twin:>9.3f}"
            f"{seconds[0] / twin:>13.2f}   (target <= 1.5)"
        )


def fit_figures(device, X, y):
    fit_s = {}
    for where in dict.fromkeys([str(device), "cpu"]):
        estimator = FFFClassifier(
            depth=6,
            leaf_width=LEAF,
            master_leaf_width=MASTER,
            max_iter=FIT_EPOCHS,
            device=where,
            random_state=0,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            estimator.fit(X, y)
            fit_s[where] = time.perf_counter() - start
    print(
        f"\nFFFClassifier(depth=6).fit, {FIT_EPOCHS} epochs on {len(X):,} x {D}, "
        f"{torch.get_num_threads()} CPU threads: "
        + ", ".join(f"{where} {seconds:.2f} s" for where, seconds in fit_s.items())
        + (
            f"; GPU {fit_s['cpu'] / fit_s[str(device)]:.1f}x faster (target >= 5x)"
            if len(fit_s) == 2
            else ""
        )
    )


def profile_figures(device, rows, X, y):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    arrays = random_arrays(np.random.default_rng(0), DEPTH, D, LEAF, MASTER, O)
    X_big = torch.randn(rows, D, device=device)
    name, forward = list(fff_backends(device).items())[-1]  # what predict uses
    for _ in range(2):  # the first call compiles
        with profile(activities=activities) as prof:
            forward(arrays, X_big)
            if device.type == "cuda":
                torch.cuda.synchronize()
    print(f"\nhard inference, {rows:,} rows, {name} backend: operations by device time")
    print(prof.key_averages().table(sort_by=sort_by, row_limit=14, max_name_column_width=60))

    print("torch backend settings (inference time, ms)")
    defaults = _torch._TEMPORARY_BUDGET, _torch._DENSE_ROUTING_NODES
    for budget, dense in (
        (defaults[0], defaults[1]),
        (defaults[0] * 4, defaults[1]),
        (defaults[0], 63),
        (defaults[0], 15),
    ):
        _torch._TEMPORARY_BUDGET, _torch._DENSE_ROUTING_NODES = budget, dense
        seconds = timed(lambda: _torch.forward_tensors(arrays, X_big), device)
        print(
            f"  budget {budget >> 20:>5} MiB, dense routing nodes {dense:>3}: "
            f"{seconds * 1e3:8.2f} ms"
        )
    _torch._TEMPORARY_BUDGET, _torch._DENSE_ROUTING_NODES = defaults
    X_big = None  # frees the device memory

    estimator = FFFClassifier(
        depth=6,
        leaf_width=LEAF,
        master_leaf_width=MASTER,
        max_iter=5,
        device=str(device),
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator.fit(X, y)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            estimator.fit(X, y)
            seconds = time.perf_counter() - start
    print(
        f"\nFFFClassifier(depth=6).fit, 5 epochs on {len(X):,} x {D}: {seconds:.2f} s; "
        "host time by operation"
    )
    print(
        prof.key_averages().table(sort_by="cpu_time_total", row_limit=20, max_name_column_width=60)
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="smaller data")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="where the time goes, instead of the figures against the targets",
    )
    parser.add_argument(
        "--kernels",
        action="store_true",
        help="the Triton kernels under other launch settings, then the figures",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "torch sees no CUDA device here; run on a GPU machine or pass --device cpu"
        )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}")
    rows = 20_000 if args.quick else 1_000_000
    X, y = random_rows(3_000 if args.quick else 60_000)
    if args.profile:
        profile_figures(device, rows, X, y)
        return
    if args.kernels:
        kernel_figures(device, rows)
    inference_figures(device, rows)
    epoch_figures(device, X, y)
    fit_figures(device, X, y)


if __name__ == "__main__":
    main()
