"""Safe persistence with skops: the fffsklearn types that a skops file needs trusted."""

from ._arrays import FFFArrays
from ._classes import FFFClassifier, FFFRegressor


def skops_trusted_types():
    """Names of the fffsklearn types to trust when loading a model with ``skops.io.load``.

    The fitted state of the estimators is plain NumPy arrays, so a skops file holds no torch
    objects and no code; loading rebuilds the model through its validating constructors, and
    a damaged or edited file raises ``ValueError``.

    Returns
    -------
    types : list of str
        Pass them, with any types of your own pipeline, as ``trusted=`` to
        :func:`skops.io.load`.

    Examples
    --------
    >>> import skops.io as sio  # doctest: +SKIP
    >>> model = sio.load("model.skops", trusted=skops_trusted_types())  # doctest: +SKIP
    """
    return [f"{cls.__module__}.{cls.__qualname__}" for cls in (FFFArrays, FFFClassifier, FFFRegressor)]
