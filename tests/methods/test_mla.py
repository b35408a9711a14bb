"""MLA: alternating unimodal updates through the shared head, OWM gradient projection, entropy fusion."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avb_testing import tiny_batch, tiny_spec
from avbalance.methods import get_method
from avbalance.methods.base import PlainStep
from avbalance.models import build_model
from avbalance.models.shared_head import SharedHead

torch.set_num_threads(1)


def mla_model(modalities=("audio", "visual"), **params):
    method = get_method("mla", **params)
    torch.manual_seed(0)
    model = build_model(method.adapt_model_spec(tiny_spec(modalities=modalities)))
    method.setup(model)
    return method, model


def official_projector(projector, mean_input, alpha):
    """The OWM update of the official MLA plug-in, in float64 numpy."""
    p, r = np.asarray(projector, np.float64), np.asarray(mean_input, np.float64)[None, :]
    k = p @ r.T
    p = p - (k @ k.T) / (alpha + r @ k)
    return p / np.linalg.norm(p, "fro")


def test_alternating_updates_with_projection_match_an_independent_loop():
    """One batch: audio's update (no projection: the first of training), then visual's (projected
    with the updated P), each with only its own encoder and the head, through plain SGD."""
    method, model = mla_model()
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    batch = tiny_batch(batch_size=8)
    method.training_step(model, batch, PlainStep(optimizer, epoch=0, batch_idx=3, num_batches=10))

    lr, alpha = 0.5, 0.1 ** (1 + 3 / 10)
    projector = np.eye(reference.head.fc_out.in_features)
    for count, modality in enumerate(("audio", "visual")):
        reference.zero_grad(set_to_none=True)
        hidden = reference.encoders[modality](batch[modality])
        F.cross_entropy(reference.head.fc_out(hidden), batch["label"]).backward()
        weight_grad = reference.head.fc_out.weight.grad
        if count > 0:
            projector = official_projector(projector, hidden.detach().mean(0).double().numpy(), alpha)
            weight_grad.copy_(torch.from_numpy(weight_grad.double().numpy() @ projector.T).float())
        with torch.no_grad():
            for p in reference.parameters():
                if p.grad is not None:
                    p -= lr * p.grad
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name
    assert np.allclose(method.projector.double().numpy(), projector, atol=1e-6)
    assert method.updates == 2
    assert all(p.grad is None for p in model.parameters())


def test_each_modality_sees_the_head_updated_by_the_previous_one():
    method, model = mla_model(modalities=("audio", "visual", "flow"))
    seen = []
    model.head.fc_out.register_forward_pre_hook(lambda module, args: seen.append(module.weight.detach().clone()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    untouched = {m: [p.detach().clone() for p in model.encoders[m].parameters()] for m in model.modalities}
    batch = tiny_batch(modalities=("audio", "visual", "flow"))
    method.training_step(model, batch, PlainStep(optimizer))
    assert len(seen) == 3 and not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    for m in model.modalities:  # every encoder learned once, from its own loss
        assert any(not torch.equal(a, b) for a, b in zip(untouched[m], model.encoders[m].parameters())), m
    assert set(method.logs()) == {"loss/audio", "loss/visual", "loss/flow"}


@pytest.mark.parametrize("projection", ["replace", "add"])
def test_projection_replaces_or_adds(projection):
    method, model = mla_model(projection=projection)
    head = model.head
    generator = torch.Generator().manual_seed(1)
    grad = torch.randn(head.fc_out.weight.shape, generator=generator)
    head.fc_out.weight.grad = grad.clone()
    start = torch.randn(head.in_dim, head.in_dim, generator=generator)
    method.projector, method.updates = start @ start.t(), 5
    r = torch.randn(head.in_dim, generator=generator)
    method._project(head, r, PlainStep(None, batch_idx=0, num_batches=4))
    projector = official_projector(start @ start.t(), r.numpy(), 0.1)
    projected = grad.double().numpy() @ projector.T
    expected = projected if projection == "replace" else grad.double().numpy() + projected
    assert np.allclose(head.fc_out.weight.grad.double().numpy(), expected, atol=1e-5)
    assert np.linalg.norm(method.projector.numpy(), "fro") == pytest.approx(1.0, abs=1e-5)


def test_first_update_of_training_is_not_projected():
    method, model = mla_model()
    grad = torch.randn(model.head.fc_out.weight.shape)
    model.head.fc_out.weight.grad = grad.clone()
    method._project(model.head, torch.randn(model.head.in_dim), PlainStep(None))
    assert torch.equal(model.head.fc_out.weight.grad, grad) and method.projector is None and method.updates == 1


def test_entropy_fusion_and_padding():
    head = SharedHead({"audio": 3, "visual": 5}, num_classes=4, combine="entropy")
    generator = torch.Generator().manual_seed(2)
    features = {"audio": torch.randn(6, 3, generator=generator) * 3, "visual": torch.randn(6, 5, generator=generator)}
    out = head(features)
    padded = F.pad(features["audio"], (0, 2))
    assert torch.allclose(out.unimodal_logits["audio"], head.fc_out(padded))
    z = {m: out.unimodal_logits[m].detach().double().numpy() for m in features}
    entropy = {}
    for m, logits in z.items():
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        entropy[m] = -(p * np.log(p)).sum(1)
    top = np.maximum(entropy["audio"], entropy["visual"])  # BalanceMM: exp(max H - H_m), normalised
    weights = {m: np.exp(top - entropy[m]) for m in z}
    total = sum(weights.values())
    expected = sum(weights[m][:, None] / total[:, None] * z[m] for m in z)
    assert np.allclose(out.logits.detach().double().numpy(), expected, atol=1e-5)


def test_refuses_heads_without_a_shared_form():
    with pytest.raises(ValueError, match="use fusion concat or shared"):
        get_method("mla").adapt_model_spec(tiny_spec("film"))
