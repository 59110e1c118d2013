"""The README's code must run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("i", range(len(python_blocks())))
def test_readme_python_block_runs(i):
    block = python_blocks()[i]
    if "# needs the hub" in block:
        pytest.skip("example needs the Hugging Face hub, unreachable offline")
    exec(compile(block, f"README.md block {i}", "exec"), {})
