"""Fixtures shared by the test files."""

import pytest


@pytest.fixture
def one_thread():
    """One torch thread for the test: on a shared 2-core machine two spinning OpenMP threads made a
    training step up to 10x slower; results do not depend on it beyond float noise."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
