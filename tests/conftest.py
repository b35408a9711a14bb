import sys
from pathlib import Path

import pytest
import torch

from avb_testing import tiny_spec
from avbalance.models import build_model

torch.set_num_threads(1)
sys.path.append(str(Path(__file__).parent / "data"))  # the raw-dataset fixtures serve the contract tests too


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return build_model(tiny_spec())
