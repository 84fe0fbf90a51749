"""Build Sabot's compiled core (``sabot/_core/*.pyx``).

Every ``.pyx`` module in ``sabot/_core`` becomes one extension. A release build (the
default) is optimised and carries no debug symbols. ``SABOT_DEBUG=1`` gives a debug
build: bounds and wraparound checks on, line tracing, ``-O0 -g`` with symbols kept,
and annotated HTML next to each source. ``SABOT_ONLY=graph,slots`` builds just those
modules. Everything else (metadata, package data) is declared in pyproject.toml.

Cython runs when the extensions are built, not when this file is loaded, so making
an sdist needs no compiler and the sdist carries the ``.pyx`` sources (the generated
C never leaves the build tree).
"""

import glob
import json
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("SABOT_DEBUG", "") == "1"

# -pthread: the partition kernel runs its scatter on a few threads of its own.
# Release: -g0 cancels the -g that Python's own CFLAGS put first on the command line,
# and -s makes the linker drop the static symbol table (the dynamic one that Python
# imports PyInit_* from stays).
compile_args = (["-O0", "-g"] if DEBUG else ["-O3", "-g0"]) + ["-pthread"]
link_args = ["-pthread"] + ([] if DEBUG else ["-s"])
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
if DEBUG:
    macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]

# SABOT_ONLY=graph,slots builds just those modules (handy while one module is in progress).
only = {name for name in os.environ.get("SABOT_ONLY", "").split(",") if name}
sources = sorted(glob.glob(os.path.join("sabot", "_core", "*.pyx")))
if only:
    sources = [p for p in sources if os.path.splitext(os.path.basename(p))[0] in only]
if not sources:
    raise SystemExit(
        "setup.py: no sabot/_core/*.pyx to build"
        + (f" (SABOT_ONLY={','.join(sorted(only))} matches none)" if only else "")
        + "; a source tree or sdist without the Cython sources cannot build Sabot"
    )

extensions = [
    Extension(
        "sabot._core." + os.path.splitext(os.path.basename(path))[0],
        [path],
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


def _generated_for_another_flavour(ext):
    """Generated C/C++ of ``ext`` (next to its .pyx) that a build of the other flavour left.

    Cython regenerates only what is older than its sources, and a debug build's C
    (bounds checks, line tracing) would otherwise be compiled into a release build. The
    C records the settings it was generated with in its "Cython Metadata" header.
    """
    stale = []
    for pyx in (s for s in ext.sources if s.endswith(".pyx")):
        for path in (pyx[:-4] + ".c", pyx[:-4] + ".cpp"):
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    head = f.read(8192)
            except OSError:
                continue
            start, end = head.find("BEGIN: Cython Metadata"), head.find("END: Cython Metadata")
            try:
                settings = json.loads(head[start + len("BEGIN: Cython Metadata"):end])["distutils"]
            except (ValueError, KeyError):
                settings = {}
            if (settings.get("extra_compile_args") != ext.extra_compile_args
                    or settings.get("define_macros") != [list(m) for m in ext.define_macros]):
                stale.append(path)
    return stale


class BuildExt(build_ext):
    """Cythonizes at build time, then compiles the modules in parallel, linked without rpath."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:  # -j/--parallel on the command line wins
            self.parallel = os.cpu_count() or 1

    def run(self):
        import numpy
        from Cython.Build import cythonize

        pending = [ext for ext in self.extensions if any(s.endswith(".pyx") for s in ext.sources)]
        for ext in pending:
            for path in _generated_for_another_flavour(ext):
                os.remove(path)
        if pending:
            generated = cythonize(
                pending,
                compiler_directives=directives,
                annotate=DEBUG,
                force=DEBUG,  # a debug build must not reuse C generated without line tracing
                nthreads=os.cpu_count() or 1,
            )
            by_name = {ext.name: ext for ext in generated}
            for ext in pending:
                # keep setuptools' own bookkeeping (the _* attributes) on the original object;
                # take sources, language and any "# distutils:" settings from Cython's copy
                ext.__dict__.update({k: v for k, v in vars(by_name[ext.name]).items() if not k.startswith("_")})
        for ext in self.extensions:
            if numpy.get_include() not in ext.include_dirs:
                ext.include_dirs.append(numpy.get_include())
        super().run()

    def build_extensions(self):
        # Some Pythons (pyenv's, for one) link extensions with -Wl,-rpath,<their lib dir>:
        # a wheel would then search the build machine's directories for libraries. The
        # modules need nothing from there (extension modules do not link libpython).
        for attr in ("linker_so", "linker_so_cxx"):
            command = getattr(self.compiler, attr, None)
            if isinstance(command, list):
                setattr(self.compiler, attr, [arg for arg in command if not arg.startswith("-Wl,-rpath")])
        super().build_extensions()


setup(ext_modules=extensions, cmdclass={"build_ext": BuildExt})
