"""Peak memory of predict on a large float32 memmap: the output plus a bounded working set.

Writes a (rows x features) float32 file, maps it read-only, and samples the process's anonymous
resident memory (RssAnon: file-backed pages of the memmap are not counted) while
FFFRegressor.predict and FFFClassifier.predict run over it. Usage:

    python benchmarks/bench_memory.py [--rows 10000000] [--features 100]
"""

import argparse
import os
import tempfile
import time

import numpy as np
from _common import classifier_from_arrays, routed_arrays

from fffsklearn._testing import PeakSampler, anonymous_rss_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--features", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "X.f32")
        writer = np.lib.format.open_memmap(
            path, mode="w+", dtype=np.float32, shape=(args.rows, args.features)
        )
        for start in range(0, args.rows, 1_000_000):
            stop = min(start + 1_000_000, args.rows)
            writer[start:stop] = rng.standard_normal((stop - start, args.features), np.float32)
        writer.flush()
        del writer
        X = np.load(path, mmap_mode="r")
        arrays = routed_arrays(np.asarray(X[:10_000]), 8, 16, 16, 10)
        model = classifier_from_arrays(arrays)
        print(
            f"X: {args.rows:,} x {args.features} float32 memmap "
            f"({X.nbytes / 2**20:,.0f} MiB on disk); "
            f"model depth 8, leaf 16, master 16, 10 classes"
        )
        for method, output_bytes in [
            ("predict", args.rows * 8),
            ("predict_proba", args.rows * 10 * 8),
        ]:
            baseline = anonymous_rss_bytes()
            start = time.perf_counter()
            with PeakSampler() as sampler:
                result = getattr(model, method)(X)
            seconds = time.perf_counter() - start
            above = sampler.peak - baseline
            print(
                f"{method:<14} output {output_bytes / 2**20:>8,.0f} MiB   peak above baseline "
                f"{above / 2**20:>8,.0f} MiB   working set beyond output "
                f"{(above - output_bytes) / 2**20:>6,.0f} MiB   {seconds:.1f} s"
            )
            del result


if __name__ == "__main__":
    main()
