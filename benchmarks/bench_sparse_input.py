"""Sparse input: does an FFF on TF-IDF-like rows hold its own against MLPClassifier, both
given the sparse matrix as it is?

The data are bags of words: each of 5 classes has a word distribution over a 2,000-word
vocabulary (95% a shared Zipf background, 5% 100 words of its own), each document draws
40 words from its class's distribution, and the counts are TF-IDF weighted
(``TfidfTransformer``) into a CSR matrix, about 1.6% non-zero. Every model gets the CSR
matrix. Contenders: ``FFFClassifier`` at its defaults and with the settings the guide gives
for text (no standardisation, no input projection, early stopping);
``MLPClassifier((32,))``, of the FFF's active width, with early stopping and at its
defaults; ``MLPClassifier((256,))``, of the FFF's training width. Reports held-out accuracy,
fit time and predict time per row on the CSR matrix (the held-out rows repeated to 50,000),
as means over three seeds; for the FFFs also predict time per row on the same rows
densified, and the ratio of the two, which the compiled kernel's CSR path earns. Usage::

    python benchmarks/bench_sparse_input.py
"""

import time
import warnings

import numpy as np
import scipy.sparse as sp
from _common import describe_threads, interleaved_best_times
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from fffsklearn import FFFClassifier

SEEDS = (0, 1, 2)
N_ROWS, N_FEATURES, N_CLASSES, WORDS_PER_DOCUMENT = 10_000, 2_000, 5, 40
PREDICT_ROWS = 50_000
TEXT_SETTINGS = {"standardize": False, "projection_rank": None, "early_stopping": True}


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


CONTENDERS = {
    "FFFClassifier(depth=4)": lambda: FFFClassifier(depth=4),
    "FFFClassifier(depth=4), text settings": lambda: FFFClassifier(depth=4, **TEXT_SETTINGS),
    "MLPClassifier((32,), early_stopping)": lambda: MLPClassifier((32,), early_stopping=True),
    "MLPClassifier((32,))": lambda: MLPClassifier((32,)),
    "MLPClassifier((256,), early_stopping)": lambda: MLPClassifier((256,),
                                                                   early_stopping=True),
}


def measure(make, seed):
    """Accuracy, fit seconds, predict microseconds per row on CSR and (FFFs) on the same
    rows densified."""
    X, y = text_like(seed)
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=seed)
    model = make().set_params(random_state=seed)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X_train, y_train)
    fit_seconds = time.perf_counter() - start
    accuracy = np.mean(model.predict(X_test) == y_test)
    rows = sp.vstack([X_test] * (PREDICT_ROWS // X_test.shape[0])).tocsr()
    if isinstance(model, FFFClassifier):
        dense_rows = rows.toarray()
        sparse_s, dense_s = interleaved_best_times(
            [lambda: model.predict(rows), lambda: model.predict(dense_rows)], rounds=3)
        dense_us = dense_s / rows.shape[0] * 1e6
    else:
        (sparse_s,), dense_us = interleaved_best_times([lambda: model.predict(rows)],
                                                       rounds=3), np.nan
    return accuracy, fit_seconds, sparse_s / rows.shape[0] * 1e6, dense_us


def main():
    X, _ = text_like(0)
    print(
        f"{describe_threads()}; {N_ROWS} rows x {N_FEATURES} features, "
        f"{X.nnz / np.prod(X.shape):.1%} non-zero; seeds {SEEDS}; predict on "
        f"{PREDICT_ROWS} rows"
    )
    print(f"{'model':<40}{'accuracy':>14}{'fit s':>7}{'us/row CSR':>12}{'dense':>8}"
          f"{'dense/CSR':>11}")
    for name, make in CONTENDERS.items():
        results = np.array([measure(make, seed) for seed in SEEDS])
        accuracy, fit_seconds, sparse_us, dense_us = results.mean(axis=0)
        spread = results[:, 0].std()
        ratio = f"{dense_us / sparse_us:>11.1f}" if np.isfinite(dense_us) else f"{'':>11}"
        dense = f"{dense_us:>8.2f}" if np.isfinite(dense_us) else f"{'':>8}"
        print(f"{name:<40}{accuracy:>8.4f} ±{spread:.3f}{fit_seconds:>7.1f}{sparse_us:>12.3f}"
              f"{dense}{ratio}", flush=True)
    print(
        f"dense copy of the training rows: {X.shape[0] * 0.75 * X.shape[1] * 4 / 2**20:.0f} MiB"
        f" against {(X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) * 0.75 / 2**20:.0f}"
        " MiB as CSR"
    )


if __name__ == "__main__":
    main()
