"""AMCo: the mask schedule, the dependence test, the masked co-optimisation loss and the AMCo head."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avb_testing import tiny_batch, tiny_spec
from avbalance.methods import get_method
from avbalance.methods.amco import mask_ratio, modality_shares
from avbalance.methods.base import PlainStep
from avbalance.models import build_model
from avbalance.models.amco_head import AMCoHead

torch.set_num_threads(1)
AVF = ("audio", "visual", "flow")


def amco_model(modalities=("audio", "visual"), fusion="concat", **params):
    method = get_method("amco", **params)
    torch.manual_seed(0)
    model = build_model(method.adapt_model_spec(tiny_spec(fusion, modalities=modalities)))
    method.setup(model)
    return method, model


@pytest.mark.parametrize("epoch, batch_idx, num_batches", [(0, 0, 10), (0, 7, 10), (1, 3, 10), (2, 9, 10), (5, 1, 4)])
def test_mask_ratio_schedules(epoch, batch_idx, num_batches):
    progress = min(0.3, 0.1 * (epoch + batch_idx / num_batches))
    assert mask_ratio(epoch, batch_idx, num_batches, 0.3, 0.1) == pytest.approx(math.sin(math.pi / 2 * progress / 0.3))
    accumulated = 0.0  # BalanceMM: l restarts each epoch and grows by epoch / 10 after every batch
    for _ in range(batch_idx):
        accumulated += epoch / 10
    expected = np.sin(np.pi / 2 * (min(0.3, accumulated) / 0.3))
    assert mask_ratio(epoch, batch_idx, num_batches, 0.3, 0.1, "balancemm") == pytest.approx(expected)


def test_modality_shares_of_one_softmax_over_all_blocks():
    generator = torch.Generator().manual_seed(1)
    logits = {m: torch.randn(6, 4, generator=generator) * (i + 1) for i, m in enumerate(AVF)}
    sums, count = modality_shares(logits)
    joined = np.concatenate([z.double().numpy() for z in logits.values()], axis=1)
    p = np.exp(joined - joined.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = [p[:, 4 * i : 4 * (i + 1)].sum() / 6 for i in range(3)]  # BalanceMM: block sum / batch size
    assert count == 6 and np.allclose(sums.numpy() / count, expected, atol=1e-6)


def test_head_masks_per_modality_logits_in_training_only():
    head = AMCoHead({"audio": 3, "visual": 4}, num_classes=5)
    features = {"audio": torch.randn(2, 3), "visual": torch.randn(2, 4)}
    masks = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    head.class_masks.copy_(masks)
    weight, bias = head.base.fc_out.weight, head.base.fc_out.bias
    z_a = features["audio"] @ weight[:, :3].t() + bias / 2
    z_v = features["visual"] @ weight[:, 3:].t() + bias / 2
    out = head.train()(features)
    assert torch.allclose(out.logits, head.linear_star(z_a * masks[0] + z_v), atol=1e-6)
    assert torch.allclose(out.unimodal_logits["audio"], z_a, atol=1e-6)  # unmasked
    assert torch.allclose(head.eval()(features).logits, head.linear_star(z_a + z_v), atol=1e-6)


def test_step_masks_dependent_modalities_and_tests_dependence_for_the_next_step():
    method, model = amco_model(sigma=0.45)
    reference = copy.deepcopy(model)
    method.dependent = torch.tensor([True, False])
    generator = copy.deepcopy(method.generator)
    batch = tiny_batch(batch_size=8)
    loss = method.training_step(
        model, batch, PlainStep(torch.optim.SGD(model.parameters(), lr=0.1), epoch=1, batch_idx=2, num_batches=4)
    )
    ratio = math.sin(math.pi / 2 * min(0.3, 0.1 * 1.5) / 0.3)
    mask = torch.ones(5)
    mask[torch.randperm(5, generator=generator)[: int(ratio * 5)]] = 0.0
    assert int((mask == 0).sum()) == 3
    assert torch.equal(model.head.class_masks, torch.stack([mask, torch.ones(5)]))
    reference.head.class_masks.copy_(torch.stack([mask, torch.ones(5)]))
    out = reference(batch)
    z_a, z_v = out.unimodal_logits["audio"], out.unimodal_logits["visual"]
    expected = (
        F.cross_entropy(out.logits, batch["label"])
        + F.cross_entropy(z_a * mask, batch["label"])
        + F.cross_entropy(z_v, batch["label"])
    )
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    p = F.softmax(torch.cat([z_a, z_v], 1), 1).detach()
    shares = torch.stack([p[:, :5].sum(1).mean(), p[:, 5:].sum(1).mean()])
    assert torch.equal(method.dependent, shares > 0.45)
    assert method.logs()["share/audio"].item() == pytest.approx(shares[0].item(), abs=1e-6)


def test_no_mask_while_independent_and_reset_every_epoch():
    method, model = amco_model()
    batch = tiny_batch()
    out = model(batch)
    plain = F.cross_entropy(out.logits, batch["label"]) + sum(
        F.cross_entropy(z, batch["label"]) for z in out.unimodal_logits.values()
    )
    loss = method.training_step(model, batch, PlainStep(torch.optim.SGD(model.parameters(), lr=0.0), epoch=4))
    assert loss.item() == pytest.approx(plain.item(), abs=1e-5) and torch.all(model.head.class_masks == 1)
    method.dependent = torch.tensor([True, True])
    method.on_epoch_start(5)
    assert not method.dependent.any()


def test_masked_dependence_option_and_generator_resume():
    method, model = amco_model(dependence="masked", seed=3)
    method.dependent = torch.tensor([True, True])
    step = PlainStep(torch.optim.SGD(model.parameters(), lr=0.1), epoch=3, batch_idx=0, num_batches=4)
    state = method.state_dict()
    method.training_step(model, tiny_batch(), step)
    masks = model.head.class_masks.clone()
    assert torch.all(masks == 0)  # p = 1 from epoch 3: every class of a dependent modality
    resumed = get_method("amco", dependence="masked", seed=3)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.generator.get_state(), state["generator"])
    assert torch.equal(resumed.draw_class_mask(5, 0.6), method_draw(state, 5, 0.6))


def method_draw(state, classes, ratio):
    other = get_method("amco")
    other.load_state_dict(state)
    return other.draw_class_mask(classes, ratio)


def class_masks(run_seed, **params):
    method = get_method("amco", **params)
    method.set_run_seed(run_seed)
    return torch.stack([method.draw_class_mask(10, 0.5) for _ in range(4)])


def test_class_masks_follow_the_run_seed_unless_the_method_has_its_own():
    assert torch.equal(class_masks(1), class_masks(1))
    assert not torch.equal(class_masks(1), class_masks(2))
    assert torch.equal(class_masks(1, seed=3), class_masks(2, seed=3))
    replay = torch.Generator().manual_seed(3)
    expected = torch.ones(10)
    expected[torch.randperm(10, generator=replay)[:5]] = 0
    torch.testing.assert_close(class_masks(5, seed=3)[0], expected)


@pytest.mark.parametrize("fusion", ["sum", "film", "gated_sym", "shared"])
def test_every_base_head(fusion):
    method, model = amco_model(fusion=fusion)
    assert isinstance(model.head, AMCoHead) and model.head.base.name == fusion
    method.training_step(model, tiny_batch(), PlainStep(torch.optim.SGD(model.parameters(), lr=0.1)))
