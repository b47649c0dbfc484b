"""Fast feedforward networks for scikit-learn.

A fast feedforward network (FFF) is a differentiable binary tree of routing neurons that sends
each row to one small leaf MLP, plus a master leaf MLP that every row uses. Trained with a
load-balancing loss and then hardened, it predicts with hard decisions, so only ``depth``
routing neurons and one leaf run per row, however many leaves the tree has.
"""

from ._arrays import FFFArrays
from ._base import FitInterrupted
from ._classes import FFFClassifier, FFFRegressor, skops_trusted_types
from ._persistence import InconsistentFFFVersionWarning
from ._version import __version__

__all__ = [
    "FFFArrays",
    "FFFClassifier",
    "FFFRegressor",
    "FitInterrupted",
    "InconsistentFFFVersionWarning",
    "__version__",
    "register_onnx_converters",
    "skops_trusted_types",
    "to_onnx",
]


def to_onnx(estimator, n_features=None, target_opset=None):
    """Export a fitted FFFClassifier, FFFRegressor or a Pipeline holding one to ONNX.

    Needs the optional extra ``fffsklearn[onnx]``. It registers fffsklearn's converters with
    skl2onnx (see :func:`register_onnx_converters`) and converts with skl2onnx, so a Pipeline
    converts as long as skl2onnx can convert its other steps.

    Parameters
    ----------
    estimator : estimator
        Fitted FFFClassifier or FFFRegressor, or a fitted Pipeline whose steps skl2onnx can
        convert.
    n_features : int, default=None
        Number of input features; defaults to the estimator's ``n_features_in_``.
    target_opset : int, default=None
        ONNX opset; at least 13. None lets skl2onnx choose.

    Returns
    -------
    onnx.ModelProto
        Takes a float32 input ``X`` of shape (n_samples, n_features). A classifier returns
        ``label`` (of the type of ``classes_``) and ``probabilities`` (an array, not a
        ZipMap); a regressor ``variable``.

    Raises
    ------
    ImportError
        If the optional dependencies of ``fffsklearn[onnx]`` are not installed.
    sklearn.exceptions.NotFittedError
        If the estimator is not fitted.
    ValueError
        If ``n_features`` is not the number the estimator was fitted on, or a regressor
        predicts targets beyond the range of float32. skl2onnx's ``to_onnx(model, X[:1])``
        with float64 rows gives a graph of a float64 input, whose regressor outputs are
        float64 and take such targets.
    """
    from ._onnx import export

    return export(estimator, n_features=n_features, target_opset=target_opset)


def register_onnx_converters():
    """Register the converters of FFFClassifier and FFFRegressor with skl2onnx.

    Afterwards skl2onnx's own ``to_onnx`` and ``convert_sklearn`` convert FFF estimators and
    the Pipelines that hold them. :func:`to_onnx` calls it itself; ``import fffsklearn``
    does not, so that the package loads without skl2onnx. Needs ``fffsklearn[onnx]``.

    Raises
    ------
    ImportError
        If the optional dependencies of ``fffsklearn[onnx]`` are not installed.
    """
    from ._onnx import register

    register()
