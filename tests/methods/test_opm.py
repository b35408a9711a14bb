"""OPM against independent computations: drop probabilities, drop-and-rescale, the loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from avb_testing import tiny_batch, tiny_spec
from avbalance.methods import get_method
from avbalance.methods.opm import drop_probabilities, modulated_features
from avbalance.models import build_model


def official_q(performance_1, performance_2, q_base, lam):
    """``calcu_q`` of the official TPAMI code."""
    ratio_1 = math.tanh(max(performance_1 / performance_2 - 1, 0))
    ratio_2 = math.tanh(max(performance_2 / performance_1 - 1, 0))
    q1 = q_base * (1 + lam * ratio_1) if ratio_1 > 0 else 0.0
    q2 = q_base * (1 + lam * ratio_2) if ratio_2 > 0 else 0.0
    return [min(max(q1, 0.0), 1.0), min(max(q2, 0.0), 1.0)]


@pytest.mark.parametrize(
    "s1, s2, q_base, lam", [(9.0, 3.0, 0.5, 0.5), (2.0, 7.0, 0.4, 2.0), (4.0, 4.0, 0.5, 0.5), (30.0, 1.0, 0.8, 1.0)]
)
def test_drop_probabilities_match_the_official_rule(s1, s2, q_base, lam):
    _, q = drop_probabilities(torch.tensor([s1, s2]), q_base, lam)
    torch.testing.assert_close(q, torch.tensor(official_q(s1, s2, q_base, lam)))


def test_three_modalities_compare_with_the_mean_of_the_others():
    rho, q = drop_probabilities(torch.tensor([6.0, 2.0, 4.0]), 0.5, 0.5)
    torch.testing.assert_close(rho, torch.tensor([math.tanh(1.0), 0.0, 0.0]))
    torch.testing.assert_close(q, torch.tensor([0.5 * (1 + 0.5 * math.tanh(1.0)), 0.0, 0.0]))


def test_drop_and_rescale_by_one_dimension_weighted_factor():
    features = {"audio": torch.randn(6, 4), "visual": torch.randn(6, 12)}
    q = torch.tensor([0.6, 0.0])
    uniform = torch.rand(6, 2)
    out, keep, theta = modulated_features(features, q, uniform)
    expected_theta = (4 * 0.6 + 12 * 0.0) / 16
    assert theta.item() == pytest.approx(expected_theta)
    for i in range(6):
        kept_audio = uniform[i, 0].item() < 0.4
        assert keep[i, 0].item() == kept_audio and keep[i, 1].item()
        torch.testing.assert_close(out["audio"][i], features["audio"][i] * kept_audio / (1 - expected_theta))
        torch.testing.assert_close(out["visual"][i], features["visual"][i] / (1 - expected_theta))


def _setup(modalities=("audio", "visual"), **params):
    torch.manual_seed(0)
    model = build_model(tiny_spec(modalities=modalities))
    method = get_method("opm", modulation_starts=0, **params)
    method.setup(model)
    return model, method


def test_loss_is_cross_entropy_of_the_modulated_head_over_kept_samples():
    model, method = _setup(p_exe=1.0, seed=7)
    batch = tiny_batch(batch_size=16, seed=2)
    output = model(batch)
    loss = method.loss(output, batch)

    generator = torch.Generator().manual_seed(7)  # the method's draws, in its order
    execute = torch.rand(1, generator=generator).item() < 1.0
    uniform = torch.rand(16, 2, generator=generator)
    scores = [
        F.softmax(output.unimodal_logits[m], 1)[range(16), batch["label"]].sum().item() for m in ("audio", "visual")
    ]
    q = official_q(*scores, 0.5, 0.5)
    dims = [model.head.dims["audio"], model.head.dims["visual"]]
    theta = (dims[0] * q[0] + dims[1] * q[1]) / sum(dims)
    keep = uniform < torch.tensor([1 - q[0], 1 - q[1]])
    features = {m: output.features[m] * keep[:, i : i + 1] / (1 - theta) for i, m in enumerate(("audio", "visual"))}
    rows = keep.any(1)  # the official code removes samples that lost every modality
    logits = model.head(features).logits
    expected = F.cross_entropy(logits[rows], batch["label"][rows])
    assert execute and max(q) > 0 and not keep.all()
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)
    params = [p for p in model.parameters() if p.requires_grad]
    ours = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True, materialize_grads=True)
    official = torch.autograd.grad(expected, params, allow_unused=True, materialize_grads=True)
    for mine, theirs in zip(ours, official):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
    assert ours[0].abs().sum() > 0  # the encoders learn through the modulated features


def test_without_execution_or_before_the_window_plain_cross_entropy():
    model, method = _setup(p_exe=0.0)
    batch = tiny_batch(seed=3)
    output = model(batch)
    plain = F.cross_entropy(output.logits, batch["label"])
    torch.testing.assert_close(method.loss(output, batch), plain)
    late = get_method("opm")  # official warm-up: no dropping in epochs 0-5
    late.setup(model)
    for epoch, inside in ((5, False), (6, True)):
        late.on_epoch_start(epoch)
        assert late.in_window() == inside
    late.on_epoch_start(5)
    torch.testing.assert_close(late.loss(output, batch), plain)


def test_generator_state_resumes_the_same_draws():
    model, method = _setup(p_exe=0.5, seed=3)
    batch = tiny_batch(seed=4)
    output = model(batch)
    method.loss(output, batch)
    state = method.state_dict()
    following = [method.loss(output, batch).detach() for _ in range(3)]
    _, resumed = _setup(p_exe=0.5, seed=3)
    resumed.load_state_dict(state)
    torch.testing.assert_close(
        torch.stack([resumed.loss(output, batch).detach() for _ in range(3)]), torch.stack(following)
    )


def opm_losses(run_seed, **params):
    """Four steps' losses: each depends on that step's drop draws."""
    model, method = _setup(p_exe=0.5, q_base=0.6, **params)
    method.set_run_seed(run_seed)
    batch = tiny_batch(batch_size=16, seed=4)
    output = model(batch)
    return torch.stack([method.loss(output, batch).detach() for _ in range(4)])


def test_drops_follow_the_run_seed_unless_the_method_has_its_own():
    assert torch.equal(opm_losses(1), opm_losses(1))
    assert not torch.allclose(opm_losses(1), opm_losses(2))
    assert torch.equal(opm_losses(1, seed=7), opm_losses(2, seed=7))
    assert not torch.allclose(opm_losses(1, seed=7), opm_losses(1))


def test_drops_are_drawn_from_the_seed_derived_from_the_run_seed():
    model, method = _setup(p_exe=1.0)
    method.set_run_seed(5)
    batch = tiny_batch(batch_size=16, seed=2)
    output = model(batch)
    method.loss(output, batch)
    generator = torch.Generator().manual_seed(method.draw_seed)
    torch.rand(1, generator=generator)  # the execution draw
    uniform = torch.rand(16, 2, generator=generator)
    scores = [
        F.softmax(output.unimodal_logits[m], 1)[range(16), batch["label"]].sum().item() for m in ("audio", "visual")
    ]
    q = torch.tensor(official_q(*scores, 0.5, 0.5))
    expected_kept = (uniform < 1 - q).any(1).float().mean()
    assert float(method.logs()["kept"]) == pytest.approx(float(expected_kept))
    assert method.draw_seed not in (0, 5)
