"""Sparse input: does an FFF on TF-IDF-like rows hold its own against MLPClassifier, both
given the sparse matrix as it is?

The data are bags of words: each of 5 classes has a word distribution over a 2,000-word
vocabulary (95% a shared Zipf background, 5% 100 words of its own), each document draws
40 words from its class's distribution, and the counts are TF-IDF weighted
(``TfidfTransformer``) into a CSR matrix, about 2% non-zero. Every model gets the CSR
matrix (the FFF densifies it a block of rows at a time); ``MLPClassifier`` is of the FFF's
active width and of its training width. Reports held-out accuracy, fit time and predict time
per row, as means over three seeds, and the memory a dense copy would take. Usage::

    python benchmarks/bench_sparse_input.py
"""

import time
import warnings

import numpy as np
import scipy.sparse as sp
from _common import describe_threads
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from fffsklearn import FFFClassifier

SEEDS = (0, 1, 2)
N_ROWS, N_FEATURES, N_CLASSES, WORDS_PER_DOCUMENT = 10_000, 2_000, 5, 40


def text_like(seed):
    rng = np.random.default_rng(seed)
    background = 1.0 / np.arange(1, N_FEATURES + 1)
    background /= background.sum()
    profiles = []
    for _ in range(N_CLASSES):
        own = np.zeros(N_FEATURES)
        own[rng.choice(N_FEATURES, 100, replace=False)] = 1.0 / 100
        profiles.append(0.95 * background + 0.05 * own)
    y = rng.integers(0, N_CLASSES, N_ROWS)
    counts = np.stack([rng.multinomial(WORDS_PER_DOCUMENT, profiles[label]) for label in y])
    X = TfidfTransformer().fit_transform(sp.csr_matrix(counts))
    return X.astype(np.float32), y


def main():
    X, _ = text_like(0)
    print(
        f"{describe_threads()}; {N_ROWS} rows x {N_FEATURES} features, "
        f"{X.nnz / np.prod(X.shape):.1%} non-zero; seeds {SEEDS}"
    )
    contenders = {
        "FFFClassifier(depth=4), CSR": lambda: FFFClassifier(depth=4),
        "MLPClassifier((32,)), CSR": lambda: MLPClassifier((32,), early_stopping=True),
        "MLPClassifier((256,)), CSR": lambda: MLPClassifier((256,), early_stopping=True),
    }
    print(f"{'model':<40}{'accuracy':>10}{'fit s':>8}{'predict us/row':>16}")
    for name, make in contenders.items():
        scores, seconds, predict_us = [], [], []
        for seed in SEEDS:
            X, y = text_like(seed)
            X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=seed)
            model = make().set_params(random_state=seed)
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(X_train, y_train)
            seconds.append(time.perf_counter() - start)
            start = time.perf_counter()
            predicted = model.predict(X_test)
            predict_us.append((time.perf_counter() - start) / X_test.shape[0] * 1e6)
            scores.append(np.mean(predicted == y_test))
        print(f"{name:<40}{np.mean(scores):>10.4f}{np.mean(seconds):>8.1f}"
              f"{np.mean(predict_us):>16.2f}", flush=True)
    print(
        f"dense copy of the training rows: {X.shape[0] * 0.75 * X.shape[1] * 4 / 2**20:.0f} MiB"
        f" against {(X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) * 0.75 / 2**20:.0f}"
        " MiB as CSR"
    )


if __name__ == "__main__":
    main()
