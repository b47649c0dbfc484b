"""Limits that every part of fffsklearn enforces: one place, read by the estimators, the
fitted arrays, the inference backends and the compiled kernel's build (``setup.py`` reads
``MAX_DEPTH`` from this file without importing it, so its values stay literals)."""

import os

# Depth 20 already means a million leaves; anything deeper in a file is corrupt or hostile.
MAX_DEPTH = 20

# Threads of one predict call. More than this is a typo (n_jobs=2**40), not a machine.
MAX_THREADS = 1024

# Largest magnitude of a fitted weight. Training keeps weights many orders of magnitude below
# (routing sharpening stops at 1e4); a larger one comes from an edited file, and its products
# with ordinary inputs would overflow float32.
MAX_ABS_WEIGHT = 1e30

# Fraction of the machine's physical memory that one fit's estimated working set may take
# before fit refuses to start (see fffsklearn._training.training_memory_bytes).
TRAINING_MEMORY_FRACTION = 0.5


def physical_memory_bytes():
    """Physical memory of this machine, or None where the OS does not tell."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
