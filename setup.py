"""Build of the compiled inference kernel; the package metadata lives in pyproject.toml.

The kernel is built with OpenMP where the compiler has it and without where it does not. If it
cannot be compiled at all, the package still installs and predicts through the NumPy
reference path (with a warning at import); set FFFSKLEARN_REQUIRE_KERNEL=1 to make that an
error instead, as CI does.
"""

import os
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

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
            # GCC prints for them in the baseline (non-AVX) clone does not apply.
            compile_flag, link_flag = "-fopenmp", "-fopenmp"
            optimise = ["-O3", "-std=gnu11", "-ffp-contract=fast", "-Wno-psabi"]
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
    ext_modules=[Extension("fffsklearn.inference._kernel", ["fffsklearn/inference/_kernel.c"])],
    cmdclass={"build_ext": OptionalOpenMPBuildExt},
)
