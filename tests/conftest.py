"""Shared test set-up."""

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
