"""MMPareto against an independent computation written like the official training loop."""

import copy

import pytest
import torch
import torch.nn.functional as F

from avb_testing import tiny_batch, tiny_spec
from avbalance.methods import get_method
from avbalance.methods.base import PlainStep
from avbalance.methods.mmpareto import min_norm_weight, pareto_weight
from avbalance.models import build_model


def official_min_norm(u, v):
    """The official two-vector rule (``_min_norm_element_from2``), in float64 Python numbers."""
    uu, uv, vv = float(u @ u), float(u @ v), float(v @ v)
    if uv >= uu:
        return 0.999
    if uv >= vv:
        return 0.001
    return -1.0 * ((uv - vv) / (uu + vv - 2 * uv))


def official_step(model, batch, gamma):
    """Separate backward passes with the gradients copied and zeroed in between (the official
    loop, without BalanceMM's accumulation bug), then the summed backward and per-tensor rescaling."""
    labels = batch["label"]
    out = model(batch)
    losses = {"both": F.cross_entropy(out.logits, labels)}
    losses.update({m: F.cross_entropy(z, labels) for m, z in out.unimodal_logits.items()})
    copies = {}
    for name, loss in losses.items():
        model.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        copies[name] = {
            m: [
                p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                for p in model.encoders[m].parameters()
            ]
            for m in model.modalities
        }
    model.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    result, info = {}, {}
    for m in model.modalities:
        both, uni = copies["both"][m], copies[m][m]
        u = torch.cat([g.flatten() for g in both]).double()
        v = torch.cat([g.flatten() for g in uni]).double()
        cos = float(u @ v / (u.norm() * v.norm()))
        a = 0.5 if cos > 0 else official_min_norm(u, v)
        info[m] = (cos, a)
        for param, gb, gu in zip(model.encoders[m].parameters(), both, uni):
            new = 2 * a * gb.double() + 2 * (1 - a) * gu.double()
            diff = float(param.grad.double().norm() / new.norm())
            result[param] = new * gamma * (diff if diff > 1 else 1.0)
    for param in model.head.parameters():
        result[param] = param.grad.double().clone()
    return result, info


def conflicting_case(seed=1):
    """A tiny model and batch where audio's two gradients conflict and visual's agree: visual
    dominates the fused logits, sample 0 is labelled as visual predicts, sample 1 as audio does."""
    torch.manual_seed(seed)
    model = build_model(tiny_spec())
    with torch.no_grad():
        model.head.fc_out.weight[:, model.head.dims["audio"] :] *= 30
    batch = tiny_batch(2, seed=seed)
    with torch.no_grad():
        out = model(batch)
    visual, audio = out.unimodal_logits["visual"].argmax(1), out.unimodal_logits["audio"].argmax(1)
    batch["label"] = torch.stack([visual[0], audio[1]])
    return model, batch


@pytest.mark.parametrize("seed", range(6))
def test_min_norm_weight_is_the_argmin_on_the_segment(seed):
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(7, generator=generator, dtype=torch.float64)
    v = -0.5 * u + torch.randn(7, generator=generator, dtype=torch.float64) * 0.3  # conflicting
    grid = torch.linspace(0, 1, 200001, dtype=torch.float64)
    norms = ((grid[:, None] * u + (1 - grid[:, None]) * v) ** 2).sum(1)
    a = min_norm_weight(u @ u, u @ v, v @ v)
    assert float(a) == pytest.approx(float(grid[norms.argmin()]), abs=1e-5)
    assert float(a) == pytest.approx(official_min_norm(u, v), abs=1e-12)


def test_min_norm_weight_follows_the_official_clamps():
    u = torch.tensor([1.0, 0.0])
    assert float(min_norm_weight(u @ u, u @ (2 * u), (2 * u) @ (2 * u))) == pytest.approx(0.999)  # u.v >= u.u
    small = 0.5 * u
    assert float(min_norm_weight(u @ u, u @ small, small @ small)) == pytest.approx(0.001)  # u.v >= v.v


def test_pareto_weight_half_when_agreeing_min_norm_when_conflicting():
    u = torch.tensor([1.0, 0.2, 0.0])
    weight, cos = pareto_weight(u, torch.tensor([0.8, 0.5, 0.1]))
    assert float(cos) > 0 and float(weight) == 0.5
    v = torch.tensor([-1.0, 1.0, 0.0])
    weight, cos = pareto_weight(u, v)
    assert float(cos) < 0
    d = weight * u + (1 - weight) * v
    assert float(d @ u) >= float(d @ d) - 1e-6 and float(d @ v) >= float(d @ d) - 1e-6  # a common descent direction
    assert float(weight) == pytest.approx(official_min_norm(u.double(), v.double()), abs=1e-6)


def test_step_matches_the_official_rule_with_and_without_conflict():
    model, batch = conflicting_case()
    model.double()  # float64 throughout: the comparison holds to 1e-6
    batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    reference_model = copy.deepcopy(model)
    expected, info = official_step(reference_model, batch, gamma=1.5)
    assert info["audio"][0] < 0 < info["visual"][0]  # both branches are exercised
    method = get_method("mmpareto")
    method.setup(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # keep the final gradients to compare
    method.training_step(model, batch, PlainStep(optimizer))
    logs = method.logs()
    assert float(logs["cos/audio"]) == pytest.approx(info["audio"][0], abs=1e-6)
    assert float(logs["weight/audio"]) == pytest.approx(info["audio"][1], abs=1e-6)
    assert float(logs["weight/visual"]) == 0.5
    params = dict(zip(reference_model.parameters(), model.parameters()))
    for reference_param, value in expected.items():
        torch.testing.assert_close(params[reference_param].grad, value, rtol=0, atol=1e-6)


def test_per_loss_gradients_are_separate_not_accumulated():
    """BalanceMM's bug makes both copies equal (cosine 1); here they differ."""
    torch.manual_seed(0)
    model = build_model(tiny_spec())
    batch = tiny_batch(6)
    method = get_method("mmpareto")
    out = model(batch)
    multimodal, unimodal = method.losses(out, batch)
    tasks = method.task_gradients(model, multimodal, unimodal)
    for modality, (params, u, v) in tasks.items():
        expected_v = torch.autograd.grad(unimodal[modality], params, retain_graph=True)
        for got, want in zip(v, expected_v):
            assert torch.allclose(got, want, atol=1e-7)
        cos = F.cosine_similarity(torch.cat([g.flatten() for g in u]), torch.cat([g.flatten() for g in v]), dim=0)
        assert float(cos) < 0.9999


def test_refuses_heads_without_per_modality_logits():
    with pytest.raises(ValueError, match="method 'mmpareto' needs .*use fusion sum, concat or cosine"):
        get_method("mmpareto").adapt_model_spec(tiny_spec("film"))
