"""Device policy: where training and prediction run, for the estimators' ``device`` parameter.

Training runs where ``device`` says and fails early when that device is missing; on the CPU,
small training steps run on one of torch's threads (:func:`training_threads`), and a
training thread waits briefly for the GIL beside busy threads (:func:`short_gil_waits`). Prediction
runs on the CUDA device that ``device`` names or ("auto") finds if this machine has it
(Triton kernels where Triton is installed, torch operations otherwise), and otherwise on the
CPU: a model trained on a GPU predicts on a CPU-only machine.

Prediction on the CPU needs no torch: where torch is not loaded yet and the machine has no
NVIDIA driver, no CUDA device can be visible, and torch stays unloaded.
"""

import os
import re
import sys
import threading
from contextlib import contextmanager
from functools import cache

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
    import torch

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


# A CPU training step whose largest product, rows x features x training width, has fewer
# multiply-adds than this runs on one thread: its dozen small products and operations each
# cost a wake-up of torch's thread pool, more than a second thread saves on them.
SINGLE_THREAD_STEP_MULTIPLY_ADDS = 4_000_000


@contextmanager
def training_threads(device, step_multiply_adds):
    """Within this context, torch runs on one CPU thread if ``device`` is the CPU and a
    training step's largest product has fewer than ``SINGLE_THREAD_STEP_MULTIPLY_ADDS``
    multiply-adds; the previous thread count comes back on exit. It never raises the count.
    """
    import torch

    previous = torch.get_num_threads()
    if (device.type != "cpu" or previous == 1
            or step_multiply_adds >= SINGLE_THREAD_STEP_MULTIPLY_ADDS):
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# Every torch operation releases the GIL and takes it back. Beside a thread that runs Python
# without pause (a server answering one-row predictions), taking it back waits for the
# interpreter's switch interval, 5 ms by default: a training step of a hundred small
# operations then waits half a second. During training the interval is at most this.
TRAINING_SWITCH_INTERVAL = 2e-5

_switch_interval_lock = threading.Lock()
_switch_interval_users = 0
_switch_interval_saved = None


@contextmanager
def short_gil_waits():
    """Within this context, the interpreter's switch interval (:func:`sys.setswitchinterval`)
    is at most ``TRAINING_SWITCH_INTERVAL``; the interval of before comes back when the last
    of the fits running in this process leaves it."""
    global _switch_interval_users, _switch_interval_saved
    with _switch_interval_lock:
        if _switch_interval_users == 0:
            _switch_interval_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_interval_saved, TRAINING_SWITCH_INTERVAL))
        _switch_interval_users += 1
    try:
        yield
    finally:
        with _switch_interval_lock:
            _switch_interval_users -= 1
            if _switch_interval_users == 0:
                sys.setswitchinterval(_switch_interval_saved)


def prediction_options(device, n_jobs):
    """Keyword arguments of :mod:`fffsklearn.inference` for a ``predict`` call.

    The CUDA device that ``device`` names or ("auto") finds, if it is available here, through
    the Triton backend where Triton is installed, else the torch backend; else the CPU
    through the default backend with ``n_jobs`` threads. ``device="cpu"`` chooses the CPU on
    any machine.
    """
    if device != "cpu" and _cuda_visible():
        import torch

        resolved = torch.device("cuda" if device == "auto" else device)
        if (resolved.index or 0) < torch.cuda.device_count():
            backend = "triton" if inference.triton_available() else "torch"
            return {"backend": backend, "device": resolved}
    return {"backend": inference.default_backend(),
            "n_threads": inference.effective_n_threads(n_jobs)}


def _cuda_visible():
    """Whether torch sees a CUDA device, asked of torch only where it is loaded already or
    this machine has an NVIDIA driver."""
    if "torch" not in sys.modules and not _nvidia_driver_present():
        return False
    import torch

    return torch.cuda.is_available()


@cache
def _nvidia_driver_present():
    """Whether this machine has the NVIDIA driver, which CUDA needs (its kernel module on
    Linux, its user-mode library on Windows; macOS has no CUDA)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if sys.platform.startswith("linux"):  # /dev/dxg: the GPU of a WSL2 machine
        return any(map(os.path.exists, ("/proc/driver/nvidia/version", "/dev/dxg")))
    if sys.platform == "win32":
        system = os.path.join(os.environ.get("SystemRoot", r"C:\Windows"), "System32")
        return os.path.exists(os.path.join(system, "nvcuda.dll"))
    return False
