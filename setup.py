"""Build of the compiled extensions; the package metadata lives in pyproject.toml.

Two extensions: the inference kernel, and the kernel of the CPU training step (routing and
the hard leaf's layers). They are built with OpenMP where the compiler has it and without
where it does not. If they cannot be compiled at all, the package still installs: it
predicts through the NumPy reference path (with a warning at import) and trains with torch
operations alone. Set
FFFSKLEARN_REQUIRE_KERNEL=1 to make that an error instead, as CI does.
"""

import ast
import os
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _package_constant(module, name):
    """The literal value of ``name`` in ``fffsklearn/<module>.py``, read without importing it
    (the build runs before the package's dependencies are importable)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fffsklearn", module + ".py")
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in node.targets
        ):
            return ast.literal_eval(node.value)
    raise RuntimeError(f"{name} not found in {path}")


def kernel_macros():
    """The kernels' depth limit and activation codes, from the Python modules that define
    them: ``MAX_DEPTH`` of ``_limits.py``, and ``FFF_ACT_<NAME>`` = the position of each name in
    ``ACTIVATIONS`` of ``_activations.py``, with the names themselves as ``FFF_ACTIVATIONS``."""
    activations = _package_constant("_activations", "ACTIVATIONS")
    return [
        ("FFF_MAX_DEPTH", str(_package_constant("_limits", "MAX_DEPTH"))),
        ("FFF_ACTIVATIONS", ",".join(f'"{name}"' for name in activations)),
    ] + [(f"FFF_ACT_{name.upper()}", str(code)) for code, name in enumerate(activations)]


OPENMP_TEST = "#include <omp.h>\nint max_threads(void) { return omp_get_max_threads(); }\n"


def _compiler_has_openmp(compiler, compile_flag, link_flag):
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "openmp_test.c")
        with open(source, "w") as f:
            f.write(OPENMP_TEST)
        try:
            objects = compiler.compile([source], output_dir=tmp, extra_postargs=[compile_flag])
            # A shared object, linked like the extension itself (with LDSHARED and LDFLAGS).
            compiler.link_shared_object(
                objects, os.path.join(tmp, "openmp_test.so"), extra_postargs=[link_flag]
            )
        except Exception:
            return False
    return True


class OptionalOpenMPBuildExt(build_ext):
    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            compile_flag, link_flag, optimise = "/openmp", "", ["/O2"]
        else:
            # -Wno-psabi: the 256-bit vector helpers are always inlined, so the ABI note that
            # GCC prints for them in the kernel's baseline (non-AVX) instance does not apply.
            # -fno-math-errno: no code reads errno, and setting it keeps sqrtf out of vectors.
            compile_flag, link_flag = "-fopenmp", "-fopenmp"
            optimise = ["-O3", "-std=gnu11", "-ffp-contract=fast", "-fno-math-errno",
                        "-Wno-psabi"]
        openmp = _compiler_has_openmp(self.compiler, compile_flag, link_flag)
        if not openmp:
            print("fffsklearn: no OpenMP in this compiler; the kernel will run on one thread.")
        for ext in self.extensions:
            ext.extra_compile_args = optimise + ([compile_flag] if openmp else [])
            ext.extra_link_args = [link_flag] if openmp and link_flag else []
        super().build_extensions()

    def run(self):
        try:
            super().run()
        except Exception as exc:
            if os.environ.get("FFFSKLEARN_REQUIRE_KERNEL") == "1":
                raise
            print(f"fffsklearn: the C kernel was not built ({exc}); using NumPy inference.",
                  file=sys.stderr)


setup(
    ext_modules=[
        Extension(
            "fffsklearn.inference._kernel",
            ["fffsklearn/inference/_kernel.c"],
            depends=["fffsklearn/_kernel_common.h"],
            define_macros=kernel_macros(),
        ),
        # The CPU training step's routing and hard-leaf layers; without it training computes
        # the same with torch operations. It reads the same activation codes as the kernel.
        Extension(
            "fffsklearn._training_kernel",
            ["fffsklearn/_training_kernel.c"],
            depends=["fffsklearn/_kernel_common.h"],
            define_macros=kernel_macros(),
        ),
    ],
    cmdclass={"build_ext": OptionalOpenMPBuildExt},
)
