"""Build Sabot's compiled core (``sabot/_core/*.pyx``).

Every ``.pyx`` module in ``sabot/_core`` becomes one extension. ``SABOT_DEBUG=1``
gives a debug build: bounds and wraparound checks on, line tracing, ``-O0 -g`` and
annotated HTML next to each source.
"""

import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("SABOT_DEBUG", "") == "1"

# -pthread: the partition kernel runs its scatter on a few threads of its own
compile_args = (["-O0", "-g"] if DEBUG else ["-O3"]) + ["-pthread"]
link_args = ["-pthread"]
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
if DEBUG:
    macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]

# SABOT_ONLY=graph,slots builds just those modules (handy while one module is in progress).
only = {name for name in os.environ.get("SABOT_ONLY", "").split(",") if name}
sources = sorted(glob.glob(os.path.join("sabot", "_core", "*.pyx")))
if only:
    sources = [p for p in sources if os.path.splitext(os.path.basename(p))[0] in only]

extensions = [
    Extension(
        "sabot._core." + os.path.splitext(os.path.basename(path))[0],
        [path],
        include_dirs=[numpy.get_include()],
        define_macros=macros,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    for path in sources
]

directives = {
    "language_level": 3,
    "embedsignature": True,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "linetrace": DEBUG,
}

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=DEBUG,
        force=DEBUG,  # a debug build must not reuse C generated without line tracing
        nthreads=os.cpu_count() or 1,
    ),
)
