"""The vLLM bridge's rules that need no vLLM: which families and methods it serves, and `slimvlm serve`'s help and
refusals before anything loads. (The bridge itself is tested in tests/test_serve.py, in the serving environment.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

import slimvlm
from slimvlm.integrations.vllm.support import FAMILY_SUPPORT, check_family, check_method, servable_methods
from slimvlm.methods import available, get


def test_every_supported_family_has_a_serving_verdict():
    assert set(FAMILY_SUPPORT) == set(slimvlm.supported_models())
    servable = {k for k, v in FAMILY_SUPPORT.items() if v.vllm_arch}
    assert servable == {
        "LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration", "LlavaOnevisionForConditionalGeneration"
    }
    for name in FAMILY_SUPPORT.keys() - servable:
        with pytest.raises(ValueError, match=f"{name} cannot be served with reduced visual tokens.*no.*fall back"):
            check_family(name)
    with pytest.raises(ValueError, match="not a model slimvlm can serve"):
        check_family("GPT2LMHeadModel")


def test_in_llm_methods_are_refused_and_the_rest_are_servable():
    in_llm = [m for m in available() if get(m).prunes_in_llm]
    assert in_llm and set(servable_methods()) == set(available()) - set(in_llm)
    for method in in_llm:
        with pytest.raises(ValueError, match="inside the language model.*vLLM .*cannot run it"):
            check_method(method)
    for method in servable_methods():
        check_method(method)
    with pytest.raises(ValueError, match="unknown method 'nope'; methods vLLM can serve: none"):
        check_method("nope")
    with pytest.raises(ValueError, match="prumerge\\+: unknown option"):
        check_method("prumerge+", {"kep": 3})


def test_importing_slimvlm_or_the_support_rules_does_not_import_vllm():
    code = "import sys, slimvlm, slimvlm.cli, slimvlm.integrations.vllm; print('vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slimvlm.cli", *args], capture_output=True, text=True, timeout=120)


def test_serve_help_shows_an_example():
    out = _cli("serve", "--help")
    assert out.returncode == 0
    assert "slimvlm serve llava-hf/llava-1.5-7b-hf --method prumerge+ --keep 144" in out.stdout
    assert "/v1/chat/completions" in out.stdout and "image_url" in out.stdout


def test_serve_refuses_an_in_llm_method_before_loading_anything(tmp_path):
    out = _cli("serve", str(tmp_path / "no-model"), "--method", "fastv")
    assert out.returncode == 2
    assert "fastv prunes visual tokens inside the language model" in out.stderr
