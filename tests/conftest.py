import os

import numpy as np
import pytest
import torch

# Without a GPU, Triton kernels run under Triton's interpreter (NumPy), so that the CPU tests
# check them too (tests/test_triton.py); it must be set before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
