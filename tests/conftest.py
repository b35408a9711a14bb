import pytest
import torch

from avb_testing import tiny_spec
from avbalance.models import build_model

torch.set_num_threads(1)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return build_model(tiny_spec())
