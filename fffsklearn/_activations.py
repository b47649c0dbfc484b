"""The activations of the hidden layers: one registry read by the training network, every
inference backend and the ONNX exporter.

Adding one means one entry in each table here, its case in the compiled kernel's
``activate`` (``inference/_kernel.c``), in the training kernel's ``activation_slope``
(``_training_kernel.c``) and in the Triton kernels' ``_activate`` (``inference/_triton.py``);
all three read their codes from ``ACTIVATIONS`` here (the C builds through ``setup.py``) and
refuse a code they have no case for;
``tests/test_inference.py::test_every_backend_covers_every_activation`` and
``tests/test_network.py`` (float32 against the formulas) check them all.
This module imports no torch, so that NumPy inference does not need it loaded.
"""

from functools import cache

import numpy as np
from scipy.special import expit

ACTIVATIONS = ("relu", "tanh", "logistic", "identity")

# In place on a float array.
NUMPY_ACTIVATIONS = {
    "relu": lambda h: np.maximum(h, 0, out=h),
    "tanh": lambda h: np.tanh(h, out=h),
    "logistic": lambda h: expit(h, out=h),
    "identity": lambda h: h,
}

ONNX_OPERATORS = {"relu": "Relu", "tanh": "Tanh", "logistic": "Sigmoid", "identity": "Identity"}


@cache
def torch_activation(name):
    """``(activate, activate_in_place, backward)`` of activation ``name`` in torch.

    ``backward(grad_output, output)`` is the gradient with respect to the activation's
    input, computed from its output: the ATen kernels that autograd itself runs.
    """
    import torch

    return {
        "relu": (torch.relu, torch.relu_,
                 lambda grad, out: torch.ops.aten.threshold_backward(grad, out, 0.0)),
        "tanh": (torch.tanh, torch.tanh_, torch.ops.aten.tanh_backward),
        "logistic": (torch.sigmoid, torch.sigmoid_, torch.ops.aten.sigmoid_backward),
        "identity": (lambda t: t, lambda t: t, lambda grad, out: grad),
    }[name]
