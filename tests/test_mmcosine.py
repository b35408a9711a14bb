"""MMCosine: cosine head built by the method, loss = CE on scaled summed cosines."""

import pytest
import torch
import torch.nn.functional as F

from avb_testing import tiny_batch, tiny_spec
from avbalance.methods import get_method
from avbalance.models import build_model


@pytest.mark.parametrize("fusion, head", [("concat", "CosineFusion"), ("film_sym", "SymmetricFiLMFusion"),
                                          ("gated_sym", "SymmetricGatedFusion")])
def test_loss_is_cross_entropy_of_scaled_cosines(fusion, head):
    method = get_method("mmcosine", scaling=12.0)
    torch.manual_seed(0)
    model = build_model(method.adapt_model_spec(tiny_spec(fusion)))
    assert type(model.head).__name__ == head
    method.setup(model)
    batch = tiny_batch()
    output = model(batch)
    streams = model.head.streams(output.features)
    blocks = model.head.weight_blocks()
    expected_logits = sum(12.0 * F.normalize(streams[m]) @ F.normalize(blocks[m]).t() for m in streams)
    torch.testing.assert_close(output.logits, expected_logits)
    torch.testing.assert_close(method.loss(output, batch), F.cross_entropy(expected_logits, batch["label"]))


def test_bias_gets_no_gradient():
    method = get_method("mmcosine")
    model = build_model(method.adapt_model_spec(tiny_spec()))
    batch = tiny_batch()
    method.loss(model(batch), batch).backward()
    assert model.head.fc_out.bias.grad is None
    assert model.head.fc_out.weight.grad.abs().sum() > 0


def test_optional_nce_term():
    method = get_method("mmcosine", lam=0.5)
    model = build_model(method.adapt_model_spec(tiny_spec()))
    batch = tiny_batch(batch_size=8)
    output = model(batch)
    a, v = F.normalize(output.features["audio"]), F.normalize(output.features["visual"])
    logits = a @ v.t() / 0.1
    target = torch.arange(8)
    nce = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    expected = F.cross_entropy(output.logits, batch["label"]) + 0.5 * nce
    torch.testing.assert_close(method.loss(output, batch), expected)


def test_refuses_heads_without_blocks_and_models_without_cosine_head():
    with pytest.raises(ValueError, match="needs a head split in per-modality blocks"):
        get_method("mmcosine").adapt_model_spec(tiny_spec("sum"))
    with pytest.raises(ValueError, match="needs a cosine head"):
        get_method("mmcosine").setup(build_model(tiny_spec("concat")))
