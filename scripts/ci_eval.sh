#!/usr/bin/env bash
# CI for the lmms-eval bridge: build the separate eval environment (.venv-eval, scripts/install_eval.sh), then
# run the bridge's tests there, offline: one lmms-eval evaluation end to end on the demo VLM (none and PruMerge+,
# batch 4 and 1, the multiple-choice task, the command line), a Hugging Face checkpoint through its processor,
# and the bad model_args. The main environment and its test suite never need lmms-eval.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
bash scripts/install_eval.sh
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv-eval/bin/python -m pytest -q -rA -s -p no:cacheprovider \
    tests/test_lmms_eval.py tests/test_lmms_eval_task.py
echo "ci_eval.sh: $((SECONDS - start)) s"
