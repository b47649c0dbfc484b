"""ONNX export: a skl2onnx converter for FFFClassifier and FFFRegressor.

The graph walks the tree level by level exactly as the other backends do: the input (less
the model's input offset, in double, where it has one) is cast to float32 and then to
double, node logits are summed in double, and a row goes right iff its logit is > 0. The
chosen leaf's weights are gathered per row, so the graph evaluates only that leaf plus the
master leaf. :func:`register` makes skl2onnx's own ``to_onnx`` and ``convert_sklearn``
convert FFF estimators (and Pipelines holding them) too."""

import numpy as np
from sklearn.utils.validation import check_is_fitted

try:
    from onnx import TensorProto
    from onnx.helper import make_tensor
    from skl2onnx import to_onnx as _skl2onnx_to_onnx
    from skl2onnx import update_registered_converter
    from skl2onnx.common.data_types import (
        BooleanTensorType,
        DoubleTensorType,
        FloatTensorType,
        Int64TensorType,
        StringTensorType,
    )
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "ONNX export needs the optional dependencies of fffsklearn[onnx]: "
        "pip install 'fffsklearn[onnx]'"
    ) from exc

from ._activations import ONNX_OPERATORS
from ._classes import FFFClassifier, FFFRegressor

_MIN_OPSET = 13  # ReduceSum and Squeeze take their axes as inputs from opset 13 on


def export(estimator, n_features=None, target_opset=None):
    """The implementation of :func:`fffsklearn.to_onnx`, which documents it."""
    register()
    check_is_fitted(estimator)
    fitted_features = getattr(estimator, "n_features_in_", None)
    n_features = fitted_features if n_features is None else n_features
    if fitted_features is not None and n_features != fitted_features:
        raise ValueError(
            f"n_features={n_features}, but {type(estimator).__name__} was fitted on "
            f"{fitted_features} features."
        )
    options = None
    if getattr(estimator, "_estimator_type", None) == "classifier" or hasattr(
        estimator, "predict_proba"
    ):
        options = {"zipmap": False}
    return _skl2onnx_to_onnx(
        estimator,
        initial_types=[("X", FloatTensorType([None, n_features]))],
        target_opset=target_opset,
        options=options,
    )


class _Graph:
    """Adds nodes and constants to the skl2onnx graph of one converter call."""

    _TYPES = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE,
              np.int64: TensorProto.INT64, np.bool_: TensorProto.BOOL}

    def __init__(self, scope, container):
        self.scope, self.container = scope, container

    def op(self, op_type, *inputs, output=None, **attrs):
        output = output or self.scope.get_unique_variable_name(op_type.lower())
        self.container.add_node(op_type, list(inputs), [output],
                                name=self.scope.get_unique_operator_name(op_type), **attrs)
        return output

    def const(self, name, value, dtype):
        value = np.asarray(value, dtype=dtype)
        var = self.scope.get_unique_variable_name(name)
        self.container.add_initializer(var, self._TYPES[dtype], list(value.shape),
                                       value.ravel().tolist())
        return var

    def activate(self, name, activation):
        return self.op(ONNX_OPERATORS[activation], name)


def _row_zeros(g, x):
    """An int64 zero for each row of ``x`` (the batch size is only known at run time)."""
    n_rows = g.op("Slice", g.op("Shape", x), g.const("start", [0], np.int64),
                  g.const("stop", [1], np.int64))
    return g.op("ConstantOfShape", n_rows, value=make_tensor("zero", TensorProto.INT64, [1], [0]))


def _route(g, arrays, x):
    """Leaf index of each row of float32 ``x``: logits summed in double, right iff > 0."""
    axis1 = g.const("axis1", [1], np.int64)
    x64 = g.op("Cast", x, to=TensorProto.DOUBLE)
    node_weights = g.const("node_weights", arrays.node_weights, np.float64)
    node_biases = g.const("node_biases", arrays.node_biases, np.float64)
    one, two = g.const("one", 1, np.int64), g.const("two", 2, np.int64)
    zero = g.const("zero", 0.0, np.float64)
    node = _row_zeros(g, x)  # every row starts at the root
    for _ in range(arrays.depth):
        products = g.op("Mul", x64, g.op("Gather", node_weights, node, axis=0))
        logits = g.op("Add", g.op("ReduceSum", products, axis1, keepdims=0),
                      g.op("Gather", node_biases, node, axis=0))
        right = g.op("Cast", g.op("Greater", logits, zero), to=TensorProto.INT64)
        node = g.op("Add", g.op("Add", g.op("Mul", node, two), one), right)
    # Named, so that a test (or a user) can expose the leaves as an extra graph output.
    return g.op("Sub", node, g.const("first_leaf", arrays.n_leaves - 1, np.int64),
                output=g.scope.get_unique_variable_name("fff_leaves"))


def _check_operator(operator):
    """Refuse an unfitted estimator, and an input whose width is not the fitted one (a
    graph onnxruntime would reject only when it runs)."""
    model = operator.raw_operator
    check_is_fitted(model, "arrays_")
    shape = operator.inputs[0].type.shape
    if len(shape) == 2 and isinstance(shape[1], int) and shape[1] != model.n_features_in_:
        raise ValueError(
            f"The ONNX input has {shape[1]} features, but {type(model).__name__} was fitted "
            f"on {model.n_features_in_}."
        )


def _output_dtype(operator):
    """A regressor graph's output dtype: double for a double input, as scikit-learn's own
    converters give, float32 otherwise."""
    return np.float64 if isinstance(operator.inputs[0].type, DoubleTensorType) else np.float32


def _raw_outputs(scope, operator, container):
    """Graph of the hard-routed raw outputs (chosen leaf plus master leaf) of ``X``."""
    if container.target_opset < _MIN_OPSET:
        raise RuntimeError(f"fffsklearn's ONNX export needs target_opset >= {_MIN_OPSET}.")
    g = _Graph(scope, container)
    arrays = operator.raw_operator.arrays_
    x = operator.inputs[0].full_name
    offset = operator.raw_operator._preparation.offset_
    if offset is not None:  # subtracted in double before the float32 cast, as predict does
        x = g.op("Sub", g.op("Cast", x, to=TensorProto.DOUBLE),
                 g.const("input_offset", offset, np.float64))
    x = g.op("Cast", x, to=TensorProto.FLOAT)
    leaves = _route(g, arrays, x) if arrays.depth else _row_zeros(g, x)

    def per_row(name):
        """A leaf parameter gathered for each row's leaf: shape (N, ...)."""
        return g.op("Gather", g.const(name, getattr(arrays, name), np.float32), leaves, axis=0)

    axis1 = g.const("axis1", [1], np.int64)
    # (N, 1, d) @ (N, d, l) -> (N, 1, l): only the chosen leaf is evaluated.
    hidden = g.op("Squeeze", g.op("MatMul", g.op("Unsqueeze", x, axis1),
                                  per_row("leaf_hidden_weights")), axis1)
    hidden = g.activate(g.op("Add", hidden, per_row("leaf_hidden_biases")), arrays.activation)
    outputs = g.op("Squeeze", g.op("MatMul", g.op("Unsqueeze", hidden, axis1),
                                   per_row("leaf_output_weights")), axis1)
    outputs = g.op("Add", outputs, per_row("leaf_output_biases"))
    if arrays.master_leaf_width:
        master = g.op("Add", g.op("MatMul", x, g.const("master_hidden_weights",
                                                      arrays.master_hidden_weights, np.float32)),
                      g.const("master_hidden_biases", arrays.master_hidden_biases, np.float32))
        master = g.activate(master, arrays.activation)
        outputs = g.op("Add", outputs, g.op("MatMul", master, g.const(
            "master_output_weights", arrays.master_output_weights, np.float32)))
    return g, g.op("Add", outputs, g.const("master_output_biases", arrays.master_output_biases,
                                           np.float32))


# The ONNX type of the label output for each kind of classes_ that fit accepts: booleans,
# integers, floats and strings (kind codes of numpy dtypes).
_LABEL_TYPES = {
    "b": (BooleanTensorType, np.bool_),
    "i": (Int64TensorType, np.int64),
    "u": (Int64TensorType, np.int64),
    "f": (DoubleTensorType, np.float64),
    "U": (StringTensorType, None),
    "S": (StringTensorType, None),
}


def _label_kind(classes):
    """The kind code of ``classes_`` for the label output; object arrays of str are strings."""
    kind = classes.dtype.kind
    if kind == "O" and all(isinstance(c, str) for c in classes):
        return "U"
    if kind not in _LABEL_TYPES:
        raise ValueError(
            f"ONNX export supports boolean, integer, float and string class labels; this "
            f"model's classes_ have dtype {classes.dtype} ({classes[:3].tolist()}...)."
        )
    return kind


def _classifier_output_shapes(operator):
    _check_operator(operator)
    calculate_linear_classifier_output_shapes(operator)
    n_rows = operator.inputs[0].get_first_dimension()
    model = operator.raw_operator
    label_type, _ = _LABEL_TYPES[_label_kind(model.classes_)]
    # Multi-label: the 0/1 indicator matrix, as predict returns it.
    operator.outputs[0].type = (Int64TensorType([n_rows, len(model.classes_)])
                                if model._multilabel else label_type([n_rows]))
    # float32 whatever the input's type: the network computes in float32, and onnxruntime's
    # ZipMap (skl2onnx's default after a classifier) takes float32 probabilities only.
    operator.outputs[1].type = FloatTensorType([n_rows, len(operator.raw_operator.classes_)])


def _convert_classifier(scope, operator, container):
    classes = operator.raw_operator.classes_
    g, logits = _raw_outputs(scope, operator, container)
    if operator.raw_operator._multilabel:  # a sigmoid per label; a label where it is > 1/2
        g.op("Sigmoid", logits, output=operator.outputs[1].full_name)
        above = g.op("Greater", logits, g.const("zero", 0.0, np.float32))
        g.op("Cast", above, output=operator.outputs[0].full_name, to=TensorProto.INT64)
        return
    g.op("Softmax", logits, output=operator.outputs[1].full_name, axis=1)
    index = g.op("ArgMax", logits, axis=1, keepdims=0)
    _, dtype = _LABEL_TYPES[_label_kind(classes)]
    if dtype is not None:
        table = g.const("classes", classes, dtype)
    else:
        table = scope.get_unique_variable_name("classes")
        container.add_initializer(table, TensorProto.STRING, [len(classes)],
                                  [str(c).encode() for c in classes])
    g.op("Gather", table, index, output=operator.outputs[0].full_name, axis=0)


def _convert_regressor(scope, operator, container):
    model = operator.raw_operator
    dtype = _output_dtype(operator)
    g, outputs = _raw_outputs(scope, operator, container)
    if dtype == np.float64:
        outputs = g.op("Cast", outputs, to=TensorProto.DOUBLE)
    scaled = g.op("Mul", outputs, g.const("target_scale", model._target_scale, dtype))
    g.op("Add", scaled, g.const("target_mean", model._target_mean, dtype),
         output=operator.outputs[0].full_name)


# A float32 graph must hold the targets within this many standard deviations of their mean.
_FLOAT32_TARGET_SPREAD = 100


def _regressor_output_shapes(operator):
    _check_operator(operator)
    model = operator.raw_operator
    dtype = _output_dtype(operator)
    reach = np.abs(model._target_mean) + _FLOAT32_TARGET_SPREAD * model._target_scale
    if dtype == np.float32 and (reach > np.finfo(np.float32).max).any():
        raise ValueError(
            f"This {type(model).__name__} predicts targets beyond the range of float32, "
            "which a float32 graph would return as infinities: export it with a float64 "
            "input (skl2onnx.to_onnx(model, X[:1]) with float64 X, or initial_types="
            "[('X', DoubleTensorType([None, n_features]))]), whose outputs are float64."
        )
    calculate_linear_regressor_output_shapes(operator)
    n_rows = operator.inputs[0].get_first_dimension()
    output_type = DoubleTensorType if dtype == np.float64 else FloatTensorType
    operator.outputs[0].type = output_type([n_rows, model.n_outputs_])


def register():
    """Register the converters of FFFClassifier and FFFRegressor with skl2onnx (again: a
    repeated call replaces them with the same)."""
    update_registered_converter(
        FFFClassifier, "FffsklearnFFFClassifier", _classifier_output_shapes,
        _convert_classifier,
        options={"zipmap": [True, False, "columns"], "nocl": [True, False]},
    )
    update_registered_converter(
        FFFRegressor, "FffsklearnFFFRegressor", _regressor_output_shapes, _convert_regressor
    )
