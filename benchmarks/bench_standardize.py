"""Input standardisation inside the estimators against a StandardScaler in front.

Fits ``FFFClassifier`` with its defaults (``standardize=True``) on digits as ``load_digits``
returns them, and ``make_pipeline(StandardScaler(), FFFClassifier())`` on the same rows, at
depth 4 and 6 with three seeds, and prints how close the two models are: held-out accuracy,
the fraction of equal predictions and leaves, the largest difference of a probability, and
the epochs each trained. Usage::

    python benchmarks/bench_standardize.py
"""

import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fffsklearn import FFFClassifier


def main():
    warnings.simplefilter("ignore")
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, random_state=0, stratify=y
    )
    for depth in (4, 6):
        for seed in (0, 1, 2):
            inside = FFFClassifier(depth=depth, random_state=seed).fit(X_train, y_train)
            in_front = make_pipeline(
                StandardScaler(), FFFClassifier(depth=depth, random_state=seed)
            ).fit(X_train, y_train)
            same = np.mean(inside.predict(X_test) == in_front.predict(X_test))
            leaves = np.mean(
                inside.apply(X_test) == in_front[-1].apply(in_front[0].transform(X_test))
            )
            probability = np.abs(inside.predict_proba(X_test) - in_front.predict_proba(X_test))
            print(
                f"depth {depth} seed {seed}: accuracy {inside.score(X_test, y_test):.4f} "
                f"inside, {in_front.score(X_test, y_test):.4f} with a scaler in front; "
                f"same predictions {same:.4f}, same leaves {leaves:.4f}, largest probability "
                f"difference {probability.max():.2e}, epochs {inside.n_iter_} and "
                f"{in_front[-1].n_iter_}"
            )


if __name__ == "__main__":
    main()
