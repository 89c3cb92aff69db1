#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine (and for CI): Python packages with a
# PyTorch that fits the machine, the compiled extensions, and the built-in dataset.
# Re-running it only checks; nothing is downloaded twice.
set -euo pipefail
PYTHON=${PYTHON:-python3}
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# 1. The built-in dataset: Debian's packaged Fashion-MNIST (no downloads at run time).
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "setup: installing Debian's dataset-fashion-mnist"
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; }
fi

# 2. PyTorch that fits the machine: keep an installed torch (a CUDA build on a GPU box);
#    otherwise the pinned CPU build (an unpinned 'torch' would pull several GB of CUDA).
if ! $PYTHON -c "import torch" 2>/dev/null; then
  echo "setup: installing torch==2.13.0 (CPU build)"
  $PYTHON -m pip install -q "torch==2.13.0"
fi

# 3. Python dependencies (the constraint keeps pip from replacing the torch chosen above).
TORCH_VERSION=$($PYTHON -c "import torch; print(torch.__version__.split('+')[0])")
CONSTRAINT=$(mktemp); echo "torch==${TORCH_VERSION}" > "$CONSTRAINT"
$PYTHON -m pip install -q -c "$CONSTRAINT" numpy scipy safetensors pyyaml tqdm matplotlib pillow \
  pytest pytest-benchmark "triton>=3.1" tensorboard "jsonargparse>=4.40"
# test-only independent attack implementation; its torchvision requirement is unused by us
$PYTHON -c "import torchattacks" 2>/dev/null || $PYTHON -m pip install -q --no-deps "torchattacks==3.5.1"
# optional: NVIDIA DALI (CPU-only pipelines here, GPU pipelines on a GPU). RRM_FAST_NO_DALI=1 skips it.
if [ "${RRM_FAST_NO_DALI:-0}" != 1 ] && ! $PYTHON -c "import nvidia.dali" 2>/dev/null; then
  $PYTHON -m pip install -q nvidia-dali-cuda130 || echo "setup: DALI not installed (optional; --loader dali unavailable)"
fi
rm -f "$CONSTRAINT"

# 4. rrm_fast itself, editable, with its compiled extensions (rebuilt only when csrc/ changes).
STAMP=build/.ext-stamp
SRC_HASH=$(cat setup.py $(find csrc -type f 2>/dev/null | sort) 2>/dev/null | sha256sum | cut -c1-16)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$SRC_HASH" ] || ! $PYTHON -c "import rrm_fast" 2>/dev/null; then
  echo "setup: building rrm_fast (pip install --no-build-isolation -e .)"
  $PYTHON -m pip install -q --no-build-isolation --no-deps -e .
  mkdir -p build && echo "$SRC_HASH" > "$STAMP"
fi
echo "setup: ok ($($PYTHON -c 'import torch; print("torch", torch.__version__)'))"
