#!/usr/bin/env bash
# Download the wheels an offline GPU machine lacks (pure Python, or builds for its Python and
# platform) into ./.whl of this checkout (git-ignored), to copy along with the checkout.
# See docs/gpu.md, "Running the GPU check".
#
#   scripts/fetch-wheels.sh [NAME[==VERSION] ...]    # extra wheels as arguments
#
# The GPU machine is assumed to have Python 3.12 with torch, torchvision, numpy, pandas,
# pyarrow, pillow and cupy, but neither dask nor open_clip. On it, install the wheels with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
# PYTHON picks the interpreter that runs pip here (default python3); PYTHON_VERSION and
# PLATFORM_TAGS describe the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
PLATFORM_TAGS=${PLATFORM_TAGS:-"manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 any"}

# dask and distributed must match each other; these are the versions the tests ran with. Only
# what the GPU machine lacks: a wheel of a package it has (toolz, cloudpickle, pyyaml, psutil,
# msgpack, packaging, click, sortedcontainers, pytest ...) would shadow its own. dask-cuda
# pinned: an unpinned one may need a newer dask than the one above.
packages=(dask==2026.8.0 distributed==2026.8.0 open_clip_torch==3.3.0 ftfy wcwidth tornado zict tblib
    partd locket braceexpand dask-cuda==26.10.0 "$@")
platforms=()
for tag in $PLATFORM_TAGS; do platforms+=(--platform "$tag"); done

mkdir -p .whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
    --implementation cp "${platforms[@]}" --dest .whl "${packages[@]}"
ls .whl
du -sh .whl
