"""Fast feedforward networks for scikit-learn.

A fast feedforward network (FFF) is a differentiable binary tree of routing neurons that sends
each row to one small leaf MLP, plus a master leaf MLP that every row uses. Trained with a
load-balancing loss and then hardened, it predicts with hard decisions, so only ``depth``
routing neurons and one leaf run per row, however many leaves the tree has.
"""

from ._arrays import FFFArrays
from ._base import FitInterrupted, InconsistentFFFVersionWarning
from ._classes import FFFClassifier, FFFRegressor
from ._persistence import skops_trusted_types
from ._version import __version__

__all__ = [
    "FFFArrays",
    "FFFClassifier",
    "FFFRegressor",
    "FitInterrupted",
    "InconsistentFFFVersionWarning",
    "skops_trusted_types",
    "to_onnx",
    "__version__",
]


def __getattr__(name):
    # ONNX export needs the optional extra fffsklearn[onnx]: import it only when asked for.
    # Importing it also registers the converters with skl2onnx (for Pipelines).
    if name == "to_onnx":
        from ._onnx import to_onnx

        return to_onnx
    raise AttributeError(f"module 'fffsklearn' has no attribute {name!r}")
