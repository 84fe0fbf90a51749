#!/usr/bin/env bash
# In-place build of sabot/_core for development.
#   ./build_ext.sh               optimised build
#   SABOT_DEBUG=1 ./build_ext.sh debug build (bounds checks, line tracing, annotated HTML)
set -euo pipefail
cd "$(dirname "$0")"
# the build requirements of pyproject.toml ([build-system] requires), installed here because
# an in-place build runs setup.py in this environment rather than an isolated one
python -m pip install --quiet "setuptools>=77.0.3,<85" "cython>=3.0.8,<4" "numpy>=1.26,<3" 2>/dev/null || true
if [ "${SABOT_DEBUG:-}" = "1" ]; then
  # switching between debug and optimised builds must recompile everything
  python setup.py build_ext --inplace --force "$@"
else
  python setup.py build_ext --inplace "$@"
fi
