"""Settings for every test tree (tests/, plugins/*/tests, examples/*/tests)."""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def single_thread():
    """Tiny models run several times faster on one thread than with intra-op threads fighting over 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
