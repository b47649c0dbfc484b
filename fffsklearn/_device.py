"""Device policy: where training and prediction run, for the estimators' ``device`` parameter.

Training runs where ``device`` says and fails early when that device is missing. Prediction
runs on the CUDA device that ``device`` names or ("auto") finds if this machine has it, and
otherwise on the CPU: a model trained on a GPU predicts on a CPU-only machine.
"""

import re

import torch

from . import inference

_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def training_device(device):
    """The :class:`torch.device` that ``fit`` trains on, for the ``device`` parameter.

    Raises
    ------
    ValueError
        If ``device`` is not "auto", "cpu", "cuda" or "cuda:N", or a CUDA device is asked for
        and torch sees none, or not that one.
    """
    if not _DEVICE_PATTERN.fullmatch(device):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} was requested but torch sees no CUDA device on this machine; "
                "use device='cpu' or device='auto'."
            )
        index = resolved.index or 0
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} was requested but only {torch.cuda.device_count()} CUDA "
                "device(s) are visible."
            )
    return resolved


def prediction_options(device, n_jobs):
    """Keyword arguments of :mod:`fffsklearn.inference` for a ``predict`` call.

    The CUDA device that ``device`` names or ("auto") finds, if it is available here, through
    the torch backend; else the CPU through the default backend with ``n_jobs`` threads.
    ``device="cpu"`` chooses the CPU on any machine.
    """
    if device != "cpu" and torch.cuda.is_available():
        resolved = torch.device("cuda" if device == "auto" else device)
        if (resolved.index or 0) < torch.cuda.device_count():
            return {"backend": "torch", "device": resolved}
    return {"backend": inference.default_backend(),
            "n_threads": inference.effective_n_threads(n_jobs)}
