"""Data preparation: what training needs to know of its rows, fitted once.

:class:`InputPreparation` reads the first fit's rows, as HistGradientBoosting's bin mapper
does, and keeps what every later fit and every prediction of the same model uses: the offset
that inputs far from zero lose before the cast to float32, each input's mean, scale and
standard deviation, and each input's share of the classifier's routing group lasso.
It also gives what only a fresh network needs (the principal directions its input projection
starts on) and the scale of the training noise. Every pass reads the rows in chunks, so a
memmap larger than memory is never loaded whole. NumPy only: loading a fitted estimator needs
no torch.
"""

import numpy as np
from scipy import sparse

# Values of X read at a time (the statistics' passes, an epoch's batches; 4 MiB in float32):
# bounds the memory of a pass over a memmap whatever its size.
CHUNK_VALUES = 2**20


# A column whose values lie this many times their range away from zero is centred in float64
# before the float32 cast: float32 keeps 24 bits, so a value's rounding error reaches
# 2**-14 of the column's range at this ratio.
OFFSET_RATIO = 2**10


def input_offset(X):
    """The offset to subtract from each column of ``X`` in float64 before the cast to
    float32: the centre of the column's range where the column lies more than
    ``OFFSET_RATIO`` times its range away from zero (a timestamp, a coordinate), else 0.
    None where no column needs one. Read in chunks, one pass.

    Returns
    -------
    ndarray of shape (n_features,), float64, or None
    """
    n, n_features = X.shape
    low, high = np.full(n_features, np.inf), np.full(n_features, -np.inf)
    for rows in _row_chunks(n, n_features):
        chunk = np.asarray(dense_rows(X, rows))
        np.minimum(low, chunk.min(axis=0, initial=np.inf), out=low)
        np.maximum(high, chunk.max(axis=0, initial=-np.inf), out=high)
    centre, spread = (low + high) / 2, high - low
    far = (spread > 0) & (np.abs(centre) > OFFSET_RATIO * spread)
    return np.where(far, centre, 0.0) if far.any() else None


# A later batch of partial_fit whose feature spreads this many times the first fit's, or
# whose mean lies this many spreads away, trains on statistics that no longer describe it.
DRIFT_RATIO = 10


def dense_rows(X, rows):
    """The rows ``rows`` of ``X`` as a dense array: a sparse ``X`` is densified one chunk
    at a time, never whole."""
    chunk = X[rows]
    return chunk.toarray() if sparse.issparse(chunk) else chunk


def _row_chunks(n_samples, n_features):
    """Slices of rows holding about ``CHUNK_VALUES`` values each."""
    step = max(1, CHUNK_VALUES // max(1, n_features))
    return [slice(start, start + step) for start in range(0, n_samples, step)]


def input_statistics(X, sample_weight):
    """Weighted mean and standard deviation of every column of ``X``, in float64.

    Read in chunks of about ``CHUNK_VALUES`` values (twice: the mean, then the
    squared deviations from it), so a memmap larger than memory is never loaded whole. A
    column whose variance is zero, or too small against its mean to be told from rounding,
    gets standard deviation 0 (see :func:`standardizing_scale`).

    Returns
    -------
    mean, std : ndarray of shape (n_features,)
    """
    weight = np.asarray(sample_weight, dtype=np.float64)
    n, n_features = X.shape
    chunks = _row_chunks(n, n_features)
    mean = _weighted_column_mean(X, weight, chunks)
    variance = np.zeros(n_features)
    for rows in chunks:
        deviation = dense_rows(X, rows).astype(np.float64)
        deviation -= mean
        variance += weight[rows] @ np.square(deviation, out=deviation)
    variance /= weight.sum()
    return mean, np.where(_constant(variance, mean, n), 0.0, np.sqrt(variance))


def _weighted_column_mean(X, weight, chunks):
    """The ``weight``-weighted mean of every column of ``X``, in float64, read by ``chunks``."""
    return sum(weight[rows] @ dense_rows(X, rows).astype(np.float64)
               for rows in chunks) / weight.sum()


def _constant(variance, mean, n_samples):
    """Whether float64 columns of ``variance`` and ``mean`` over ``n_samples`` rows are
    constant: the bound on the rounding error of a variance that StandardScaler uses."""
    eps = np.finfo(np.float64).eps
    return variance <= n_samples * eps * variance + (n_samples * mean * eps) ** 2


def standardizing_scale(std):
    """The divisor that standardises columns of standard deviation ``std``: a constant
    column gets 1, as in scikit-learn's ``StandardScaler``, and is then only centred."""
    return np.where(std > 0, std, 1.0)


# Randomized subspace iteration (Halko, Martinsson and Tropp, 2011): directions tracked
# beyond those asked for, and passes over the rows that refine them. Only the start of the
# input projection reads them, so an approximate subspace is enough.
_PRINCIPAL_OVERSAMPLING = 10
_PRINCIPAL_POWER_ITERATIONS = 3


def principal_directions(X, sample_weight, rank, seed, input_scaling=None):
    """The ``rank`` directions along which the network's inputs vary most: the leading
    eigenvectors of their weighted covariance, by decreasing variance.

    The inputs are the rows of ``X`` scaled by ``input_scaling`` (``(mean, scale)``, as the
    trainer scales them) or, without it, the rows as given. The covariance is never formed:
    randomized subspace iteration multiplies it into ``rank`` plus a few directions, one
    pass over the rows in chunks at a time (as :func:`input_statistics` reads), so memory
    grows with ``n_features * rank``, not ``n_features ** 2``.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    sample_weight : ndarray of shape (n_samples,)
    rank : int
        Directions wanted; at most ``n_features`` are returned.
    seed : int
        Seeds the random start of the iteration.
    input_scaling : tuple of ndarray or None

    Returns
    -------
    ndarray of shape (n_features, min(rank, n_features))
        Orthonormal columns, float64.
    """
    weight = np.asarray(sample_weight, dtype=np.float64)
    weight = weight / weight.sum()
    n, n_features = X.shape
    chunks = _row_chunks(n, n_features)
    if input_scaling is None:
        mean = _weighted_column_mean(X, weight, chunks)
        scale = np.ones(n_features)
    else:
        mean, scale = input_scaling

    # The chunks' products in float32, at the speed of float32 BLAS, summed in float64: the
    # rows are centred first, so little is lost.
    mean, scale, weight32 = (np.asarray(a, dtype=np.float32) for a in (mean, scale, weight))

    def covariance_times(basis):
        basis32 = basis.astype(np.float32)
        product = np.zeros_like(basis)
        for rows in chunks:
            inputs = np.subtract(dense_rows(X, rows), mean, dtype=np.float32)
            inputs /= scale
            product += inputs.T @ (weight32[rows, None] * (inputs @ basis32))
        return product

    width = min(n_features, rank + _PRINCIPAL_OVERSAMPLING)
    start = np.random.RandomState(seed).standard_normal((n_features, width))
    basis = np.linalg.qr(start)[0]
    for _ in range(_PRINCIPAL_POWER_ITERATIONS):
        basis = np.linalg.qr(covariance_times(basis))[0]
    # Rayleigh-Ritz: the covariance within the subspace, diagonalised.
    _, vectors = np.linalg.eigh(basis.T @ covariance_times(basis))
    return basis @ vectors[:, ::-1][:, : min(rank, n_features)]


def routing_feature_penalties(X, y, sample_weight, n_classes):
    """Each feature's share of the classifier's routing group lasso: ``min(1, 1 / F)**2``.

    ``F`` is the feature's one-way ANOVA F statistic across the classes, as
    :func:`sklearn.feature_selection.f_classif` computes it, with the rows weighted by
    ``sample_weight`` scaled to a mean of 1 (so that scaling the weights changes nothing). A
    feature whose class means differ no more than chance makes (``F`` near 1 or below) takes
    the whole penalty, one that separates the classes almost none; a constant feature takes
    all of it. Read in chunks, twice (class means, then the spread about them), as
    :func:`input_statistics` reads.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,)
        Class indices in ``range(n_classes)``.
    sample_weight : ndarray of shape (n_samples,)
    n_classes : int

    Returns
    -------
    ndarray of shape (n_features,) with values in [0, 1], or None
        None where F is undefined: fewer than 2 classes with weight, or no more rows than
        such classes.
    """
    weight = np.asarray(sample_weight, dtype=np.float64)
    weight = weight / weight.mean()
    n, n_features = X.shape
    chunks = _row_chunks(n, n_features)
    class_weight = np.bincount(y, weights=weight, minlength=n_classes)
    present = class_weight > 0
    k = int(present.sum())
    if k < 2 or n <= k:
        return None
    class_means = np.zeros((n_classes, n_features))
    for rows in chunks:
        labels = y[rows]
        weighted_labels = np.zeros((labels.shape[0], n_classes))
        weighted_labels[np.arange(labels.shape[0]), labels] = weight[rows]
        class_means += weighted_labels.T @ dense_rows(X, rows).astype(np.float64)
    class_means[present] /= class_weight[present, None]
    mean = class_weight @ class_means / n
    between = class_weight @ np.square(class_means - mean)
    within = np.zeros(n_features)
    for rows in chunks:
        deviation = dense_rows(X, rows).astype(np.float64)
        deviation -= class_means[y[rows]]
        within += weight[rows] @ np.square(deviation, out=deviation)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (between / (k - 1)) / (within / (n - k))
    # A constant feature is taken as noise; one constant within each class (x / 0)
    # separates the classes exactly.
    f[_constant((between + within) / n, mean, n)] = 0.0
    return np.square(np.minimum(1.0, 1.0 / np.maximum(f, np.finfo(np.float64).tiny)))


class InputPreparation:
    """What training needs to know of its input rows, fitted once on a first fit's rows.

    Parameters
    ----------
    standardize : bool
        Whether the network's inputs are the rows standardised with the fitted statistics.
    statistics : bool
        Whether to take each input's statistics even without ``standardize`` (the scale of
        the training noise needs the standard deviations).

    Attributes
    ----------
    n_features_in_ : int
    offset_ : ndarray of shape (n_features_in_,) or None
        What :meth:`network_rows` subtracts from the rows in float64 before their cast to
        float32 (see :func:`input_offset`); None for nothing. The statistics below are of
        the rows less this offset.
    mean_, scale_ : ndarray of shape (n_features_in_,) or None
        The standardisation of the rows into the network's inputs; None without it.
    std_ : ndarray of shape (n_features_in_,) or None
        Weighted standard deviation of each input; None where no statistics were taken.
    routing_feature_penalties_ : ndarray of shape (n_features_in_,) or None
        Each input's share of the routing group lasso (see
        :func:`routing_feature_penalties`); None for none.
    """

    def __init__(self, standardize=True, statistics=True):
        self.standardize = standardize
        self.statistics = statistics

    def fit_offset(self, X):
        """Take the offset of the rows (:func:`input_offset`), from all the rows of a first
        fit as given (float64 where they are), before anything casts them."""
        self.n_features_in_ = X.shape[1]
        # A sparse column holds zeros: its range reaches zero, so it never needs an offset.
        self.offset_ = None if sparse.issparse(X) else input_offset(X)
        return self

    def network_rows(self, X):
        """The rows as the network reads them: ``X`` less the offset, computed in float64
        and cast to float32 in chunks (densified, where ``X`` is sparse); ``X`` itself where
        there is no offset."""
        if self.offset_ is None:
            return X
        rows = np.empty(X.shape, dtype=np.float32)
        for chunk in _row_chunks(*X.shape):
            rows[chunk] = np.subtract(dense_rows(X, chunk), self.offset_, dtype=np.float64)
        return rows

    def network_row_blocks(self, X):
        """:meth:`network_rows` of ``X`` block by block, as ``(slice of rows, rows)``
        pairs, so that a prediction's memory stays bounded: one block, ``X`` itself, dense
        or sparse, where there is no offset."""
        if self.offset_ is None:
            yield slice(0, X.shape[0]), X
            return
        for rows in _row_chunks(*X.shape):
            yield rows, self.network_rows(X[rows])

    def fit(self, X, sample_weight, y=None, n_classes=None):
        """Take the statistics of ``X`` (rows as :meth:`network_rows` gives them), and of
        its classes ``y`` (indices in ``range(n_classes)``) where the routing penalties are
        wanted."""
        self.n_features_in_ = X.shape[1]
        self.mean_ = self.scale_ = self.std_ = None
        if self.standardize or self.statistics:
            mean, self.std_ = input_statistics(X, sample_weight)
            if self.standardize:
                self.mean_, self.scale_ = mean, standardizing_scale(self.std_)
        self.routing_feature_penalties_ = None
        if y is not None:
            self.routing_feature_penalties_ = routing_feature_penalties(
                X, y, sample_weight, n_classes
            )
        return self

    def drifted_features(self, X, sample_weight):
        """Indices of the features of ``X`` (rows as :meth:`network_rows` gives them) whose
        spread exceeds ``DRIFT_RATIO`` times the fitted one, or whose mean lies more than
        ``DRIFT_RATIO`` spreads from the fitted mean (where one was fitted): the fitted
        statistics no longer describe them.
        Empty where no statistics were taken."""
        if self.std_ is None:
            return np.array([], dtype=np.intp)
        mean, std = input_statistics(X, sample_weight)
        drifted = std > DRIFT_RATIO * self.std_
        if self.mean_ is not None:
            spread = np.maximum(np.maximum(std, self.std_), np.finfo(np.float32).tiny)
            drifted |= np.abs(mean - self.mean_) > DRIFT_RATIO * spread
        return np.flatnonzero(drifted)

    @classmethod
    def identity(cls, n_features):
        """A fitted preparation that passes the rows on as they are (a network trained
        outside fffsklearn takes raw rows), without statistics."""
        preparation = cls(standardize=False, statistics=False)
        preparation.n_features_in_ = n_features
        preparation.offset_ = preparation.mean_ = preparation.scale_ = preparation.std_ = None
        preparation.routing_feature_penalties_ = None
        return preparation

    @property
    def scaling(self):
        """``(mean, scale)`` that turn the rows of :meth:`network_rows` into the network's
        inputs, or None."""
        return None if self.mean_ is None else (self.mean_, self.scale_)

    @property
    def raw_scaling(self):
        """``(mean, scale)`` that turn the rows as given into the network's inputs (the
        offset and the standardisation together), or None for none."""
        if self.offset_ is None:
            return self.scaling
        if self.mean_ is None:
            return self.offset_, np.ones(self.n_features_in_)
        return self.mean_ + self.offset_, self.scale_

    def noise_std(self, input_noise, X, sample_weight):
        """Standard deviation of the training noise on each network input: ``input_noise``
        times the input's standard deviation, scaled as the input is (float32), or None
        for no noise. Where the fit took no statistics they are taken from ``X``."""
        if not input_noise:
            return None
        std = self.std_ if self.std_ is not None else input_statistics(X, sample_weight)[1]
        if self.scale_ is not None:
            std = std / self.scale_
        return (input_noise * std).astype(np.float32)

    def principal_directions(self, X, sample_weight, rank, seed):
        """The ``rank`` leading principal directions of the network's inputs (see
        :func:`principal_directions`)."""
        return principal_directions(X, sample_weight, rank, seed, self.scaling)

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._check()

    def _check(self):
        """Refuse statistics that no fit could have produced (an edited or corrupt file)."""
        where = "Corrupt input preparation"
        n = self.__dict__.get("n_features_in_")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"{where}: n_features_in_ must be a positive int, got {n!r}.")

        def is_feature_vector(value):
            return (isinstance(value, np.ndarray) and value.dtype.kind == "f"
                    and value.shape == (n,) and np.isfinite(value).all())

        if "offset_" not in self.__dict__ or (
            self.offset_ is not None and not is_feature_vector(self.offset_)
        ):
            raise ValueError(
                f"{where}: offset_ must be None or a finite float array of shape ({n},)."
            )
        mean, scale = self.__dict__.get("mean_"), self.__dict__.get("scale_")
        if mean is not None or scale is not None:
            if not (is_feature_vector(mean) and is_feature_vector(scale)) or (scale <= 0).any():
                raise ValueError(
                    f"{where}: mean_ and scale_ must be finite float arrays of shape ({n},), "
                    "the scale positive."
                )
        std = self.__dict__.get("std_")
        if std is not None and (not is_feature_vector(std) or (std < 0).any()):
            raise ValueError(
                f"{where}: std_ must be a finite float array of shape ({n},), non-negative."
            )
        penalties = self.__dict__.get("routing_feature_penalties_")
        if penalties is not None and (
            not is_feature_vector(penalties) or (penalties < 0).any() or (penalties > 1).any()
        ):
            raise ValueError(
                f"{where}: routing_feature_penalties_ must be a finite float array of shape "
                f"({n},), within [0, 1]."
            )
