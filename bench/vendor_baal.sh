#!/usr/bin/env bash
# Copy baal and the pure-Python packages it needs that a GPU machine without PyPI may lack
# (structlog<23) from the bench venv into .gpu/site/ (git-ignored, carried to the GPU machine).
# There: PYTHONPATH=.gpu/site python bench/baal_side_by_side.py ... --device cuda
# The GPU machine brings torch, transformers, numpy, scipy, scikit-learn, torchmetrics itself.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${BENCH_VENV:-.bench-venv}"
DEST="${1:-.gpu/site}"
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$DEST"
for pkg in baal structlog; do
    rm -rf "${DEST:?}/$pkg"
    cp -r "$SITE/$pkg" "$DEST/$pkg"
    cp -r "$SITE/$pkg"-*.dist-info "$DEST/"
done
find "$DEST" -name __pycache__ -prune -exec rm -rf {} +
echo "vendored into $DEST: $(ls "$DEST" | tr '\n' ' ')"
