"""The methods are pure tensor functions: importing them must not import transformers (design.md)."""

import subprocess
import sys


def test_methods_do_not_import_transformers():
    code = "import sys, slimvlm, slimvlm.methods; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
