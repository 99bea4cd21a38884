import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """Small tensors: one intra-op thread avoids oversubscription slowdowns on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
