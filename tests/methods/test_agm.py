"""AGM against independent computations: the official audio-visual step, Shapley responses,
coefficients, gradients, clipping, presets."""

import math
from copy import deepcopy
from itertools import combinations

import pytest
import torch
import torch.nn.functional as F

from avb_testing import tiny_batch, tiny_spec
from avbalance.errors import ConfigError
from avbalance.methods import get_method
from avbalance.methods.agm import agm_coefficients, clip_if_head_gradient_large, coalition_logits, shapley_responses
from avbalance.models import build_model

THREE = ("audio", "visual", "flow")


def brute_force_shapley(value, players):
    """Textbook Shapley value of every player, ``value(frozenset())`` included."""
    n = len(players)
    result = {}
    for p in players:
        others = [q for q in players if q != p]
        total = 0
        for size in range(n):
            for members in combinations(others, size):
                s = frozenset(members)
                total = total + math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n) * (
                    value(s | {p}) - value(s)
                )
        result[p] = total
    return result


@pytest.mark.parametrize("modalities", [("audio", "visual"), THREE])
def test_responses_are_shapley_values_with_empty_coalition_zero(modalities):
    generator = torch.Generator().manual_seed(len(modalities))
    table = {
        frozenset(c): torch.randn(4, 5, generator=generator)
        for size in range(1, len(modalities) + 1)
        for c in combinations(modalities, size)
    }
    full = table[frozenset(modalities)]
    partial = {c: v for c, v in table.items() if c != frozenset(modalities)}
    responses = shapley_responses(full, partial, modalities)
    expected = brute_force_shapley(lambda s: table[s] if s else torch.zeros(4, 5), list(modalities))
    for m in modalities:
        torch.testing.assert_close(responses[m], expected[m])
    torch.testing.assert_close(sum(responses.values()), full)  # efficiency: the shares add up to f(all)
    if len(modalities) == 2:  # the official two-modality module: (f(av) - f(v) + f(a)) / 2
        a, v, av = table[frozenset({"audio"})], table[frozenset({"visual"})], full
        torch.testing.assert_close(responses["audio"], 0.5 * (av - v + a))
    else:  # the official three-modality module
        t = {
            k: table[frozenset(k)]
            for k in [("audio",), ("visual",), ("flow",), ("audio", "visual"), ("audio", "flow"), ("visual", "flow")]
        }
        expected_a = (
            (full - t[("visual", "flow")]) / 3
            + (t[("audio", "visual")] - t[("visual",)] + t[("audio", "flow")] - t[("flow",)]) / 6
            + t[("audio",)] / 3
        )
        torch.testing.assert_close(responses["audio"], expected_a)


def official_coefficients(scores, reference, alpha, clip):
    """The official loop: ratio = exp(M/(M-1) (mean - s)), target from the running scores."""
    m = len(scores)
    mean, ref_mean = sum(scores) / m, sum(reference) / m
    out = []
    for s, t in zip(scores, reference):
        ratio = math.exp((mean - s) * m / (m - 1))
        target = math.exp((ref_mean - t) * m / (m - 1))
        out.append(math.exp(alpha * min(target - ratio, clip)))
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("count", [2, 3])
def test_coefficients_match_the_official_rule(seed, count):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(count, generator=generator) * 3
    reference = torch.rand(count, generator=generator) * 3
    clip = 0.5 if seed == 3 else 7.0  # seed 3 exercises the clip
    k, _, _ = agm_coefficients(scores, reference, alpha=0.4, clip=clip)
    expected = official_coefficients(scores.tolist(), reference.tolist(), 0.4, clip)
    torch.testing.assert_close(k, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_lagging_modality_is_sped_up():
    k, _, _ = agm_coefficients(torch.tensor([0.2, 2.0]), torch.tensor([1.0, 1.0]), alpha=0.5, clip=7.0)
    assert k[0] < 1 < k[1]  # audio ahead of its history (low loss) is slowed, visual sped up


@pytest.mark.parametrize("fusion", ["concat", "gated"])
def test_coalitions_are_zero_masked_forwards(fusion):
    torch.manual_seed(0)
    model = build_model(tiny_spec(fusion)).eval()
    batch = tiny_batch()
    with torch.no_grad():
        values = coalition_logits(model, batch)
        for coalition, logits in values.items():
            masked = {**batch, **{m: torch.zeros_like(batch[m]) for m in model.modalities if m not in coalition}}
            torch.testing.assert_close(logits, model(masked).logits, rtol=1e-5, atol=1e-5)
    assert set(values) == {frozenset({"audio"}), frozenset({"visual"})}


def _step(method, model, batch):
    model.zero_grad(set_to_none=True)
    output = model(batch)
    loss = method.loss(output, batch)
    loss.backward()
    method.after_backward(model, output, batch)
    return output, loss


@pytest.mark.parametrize("modalities", [("audio", "visual"), THREE])
def test_shares_mode_gradient_is_the_coefficient_weighted_share_gradient(modalities):
    """Official backward hooks: every share z~_m gets k_m times the gradient of CE(sum z~)."""
    torch.manual_seed(1)
    model = build_model(tiny_spec(modalities=modalities))
    batch = tiny_batch(modalities=modalities, seed=1)
    method = get_method("agm", alpha=0.8, clip_grad=0.0)
    method.setup(model)
    _step(method, model, batch)  # first step: T = 0
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    output, loss = _step(method, model, batch)
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    k = torch.stack([method.logs()[f"coeff/{m}"] for m in modalities])

    for n, b in model.named_buffers():  # BatchNorm statistics as they were before the step
        b.copy_(buffers[n])
    model.zero_grad(set_to_none=True)  # independent: separate forwards, surrogate with fixed weights
    full = model(batch).logits
    partial = {}
    model.eval()
    for size in range(1, len(modalities)):
        for members in combinations(modalities, size):
            masked = {**batch, **{m: torch.zeros_like(batch[m]) for m in modalities if m not in members}}
            partial[frozenset(members)] = model(masked).logits
    model.train()
    shares = brute_force_shapley(
        lambda s: (full if s == frozenset(modalities) else partial[s]) if s else 0.0, list(modalities)
    )
    fused = full.detach().requires_grad_()
    upstream = torch.autograd.grad(F.cross_entropy(fused, batch["label"]), fused)[0]
    surrogate = sum(k[i] * (upstream * shares[m]).sum() for i, m in enumerate(modalities))
    surrogate.backward()
    torch.testing.assert_close(loss, F.cross_entropy(full, batch["label"]), rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.allclose(k, torch.ones_like(k))


def official_cremad_step(model, batch, state, alpha=1.0):
    """One AGM step of the official audio-visual script (lihong2303/AGM_ICCV2023, run/CREMAD_main.py
    and model/CREMAD_net.py), written as it is: the padded forwards in eval mode, the two shares,
    mean scores with the 1e-8 floor, ratios against the running scores, ``min(., 10)``, backward
    hooks scaling each share's gradient, then the head-gradient trigger with ``max_norm=1.0``."""
    labels = batch["label"]
    total_out = model(batch).logits
    model.eval()
    pad_visual_out = model({**batch, "visual": torch.zeros_like(batch["visual"])}).logits
    pad_audio_out = model({**batch, "audio": torch.zeros_like(batch["audio"])}).logits
    model.train()
    m_a = 0.5 * (total_out - pad_audio_out + pad_visual_out)
    m_v = 0.5 * (total_out - pad_visual_out + pad_audio_out)

    def score(out):
        probability = F.softmax(out.detach(), dim=1)
        return sum(-math.log(max(float(probability[k][labels[k]]), 1e-8)) for k in range(len(labels))) / len(labels)

    score_audio, score_visual = score(m_a), score(m_v)
    ratio_a, ratio_v = math.exp(score_visual - score_audio), math.exp(score_audio - score_visual)
    optimal_ratio_a = math.exp(state["v"] - state["a"])
    optimal_ratio_v = math.exp(state["a"] - state["v"])
    coeff_a = math.exp(alpha * min(optimal_ratio_a - ratio_a, 10))
    coeff_v = math.exp(alpha * min(optimal_ratio_v - ratio_v, 10))
    state["iteration"] += 1
    iteration = state["iteration"]
    state["a"] = state["a"] * (iteration - 1) / iteration + score_audio / iteration
    state["v"] = state["v"] * (iteration - 1) / iteration + score_visual / iteration

    def hooked(x, scale):  # identity forward, gradient times ``scale`` (the backward hooks)
        return x.detach() + scale * (x - x.detach())

    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(hooked(m_a, coeff_a) + hooked(m_v, coeff_v), labels)
    loss.backward()
    head_weight = next(p for p in model.head.parameters() if p.dim() >= 2)
    clipped = bool(head_weight.grad.max() > 1 or head_weight.grad.min() < -1)
    if clipped:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    return (coeff_a, coeff_v), loss, clipped


def test_default_step_is_the_official_audio_visual_script():
    """Default (official preset) against the official step over several steps: coefficients, loss and
    every gradient to 1e-6, including steps where the head-gradient clipping triggers."""
    torch.manual_seed(3)
    model = build_model(tiny_spec()).double()
    official = deepcopy(model)
    method = get_method("agm")
    method.setup(model)
    state = {"a": 0.0, "v": 0.0, "iteration": 0}
    triggered = []
    for seed, gain in enumerate((1.0, 40.0, 1.0, 40.0)):
        batch = {k: v.double() * gain if v.is_floating_point() else v for k, v in tiny_batch(8, seed=seed).items()}
        coefficients, expected_loss, clipped = official_cremad_step(official, batch, state)
        _, loss = _step(method, model, batch)
        triggered.append(clipped)
        logs = method.logs()
        assert float(logs["coeff/audio"]) == pytest.approx(coefficients[0], abs=1e-6)
        assert float(logs["coeff/visual"]) == pytest.approx(coefficients[1], abs=1e-6)
        assert float(loss) == pytest.approx(float(expected_loss), abs=1e-6)
        for (name, p), q in zip(model.named_parameters(), official.parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=0, msg=name)
    assert any(triggered) and not all(triggered)


def test_presets_and_explicit_values():
    official = get_method("agm")
    assert (official.alpha, official.clip, official.clip_grad, official.apply, official.modulate) == (
        1.0,
        10.0,
        1.0,
        "shares",
        "all",
    )
    balancemm = get_method("agm", preset="balancemm")
    assert (balancemm.alpha, balancemm.clip, balancemm.clip_grad, balancemm.apply, balancemm.modulate) == (
        0.1,
        7.0,
        5.0,
        "encoders",
        "weights",
    )
    mixed = get_method("agm", preset="balancemm", alpha=2.5, apply="shares")
    assert (mixed.alpha, mixed.clip, mixed.apply) == (2.5, 7.0, "shares")
    with pytest.raises(ConfigError, match="method 'agm': alpha must be >= 0, got -1.0"):
        get_method("agm", alpha=-1.0)
    with pytest.raises(ConfigError, match="preset"):
        get_method("agm", preset="paper")


def test_encoders_mode_scales_each_encoder_by_its_coefficient(tiny_model):
    batch = tiny_batch(seed=2)
    method = get_method("agm", alpha=0.8, apply="encoders", clip_grad=0.0)
    method.setup(tiny_model)
    _step(method, tiny_model, batch)
    tiny_model.zero_grad(set_to_none=True)
    F.cross_entropy(tiny_model(batch).logits, batch["label"]).backward()
    plain = {n: p.grad.clone() for n, p in tiny_model.named_parameters()}
    _step(method, tiny_model, batch)
    for name, p in tiny_model.named_parameters():
        parts = name.split(".")
        factor = method.logs()[f"coeff/{parts[1]}"] if parts[0] == "encoders" else 1.0
        torch.testing.assert_close(p.grad, plain[name] * factor, rtol=1e-4, atol=1e-7, msg=name)


def test_running_reference_is_the_cumulative_mean_of_previous_scores(tiny_model):
    method = get_method("agm", alpha=0.3, clip_grad=0.0)
    method.setup(tiny_model)
    history = []
    for seed in range(3):
        batch = tiny_batch(seed=seed)
        reference = torch.stack(history).mean(0) if history else torch.zeros(2)
        _step(method, tiny_model, batch)
        logs = method.logs()
        scores = torch.stack([logs["score/audio"], logs["score/visual"]])
        expected, _, _ = agm_coefficients(scores, reference, 0.3, 10.0)
        torch.testing.assert_close(torch.stack([logs["coeff/audio"], logs["coeff/visual"]]), expected)
        history.append(scores)
    torch.testing.assert_close(method.state_dict()["reference"], torch.stack(history).mean(0))
    restored = get_method("agm")
    restored.load_state_dict(method.state_dict())
    assert restored._steps == 3


def test_scores_are_cross_entropies_of_the_responses(tiny_model):
    batch = tiny_batch(seed=4)
    method = get_method("agm")
    method.setup(tiny_model)
    output = tiny_model(batch)
    method.loss(output, batch)
    tiny_model.eval()
    with torch.no_grad():
        a = tiny_model({**batch, "visual": torch.zeros_like(batch["visual"])}).logits
        v = tiny_model({**batch, "audio": torch.zeros_like(batch["audio"])}).logits
    audio_share = 0.5 * (output.logits.detach() - v + a)
    expected = -torch.log(F.softmax(audio_share, 1).gather(1, batch["label"][:, None]).clamp_min(1e-8)).mean()
    torch.testing.assert_close(method.logs()["score/audio"], expected, rtol=1e-5, atol=1e-6)


def test_head_gradient_clipping_follows_clip_grad_norm(tiny_model):
    for scale, triggered in ((100.0, True), (1e-4, False)):
        for p in tiny_model.parameters():
            p.grad = torch.randn(p.shape) * scale
        copies = [torch.nn.Parameter(p.detach().clone()) for p in tiny_model.parameters()]
        for copy, p in zip(copies, tiny_model.parameters()):
            copy.grad = p.grad.clone()
        if triggered:  # the head weight has entries beyond 5: torch's own global-norm clipping
            torch.nn.utils.clip_grad_norm_(copies, 5.0)
        clip_if_head_gradient_large(tiny_model, 5.0)
        for p, copy in zip(tiny_model.parameters(), copies):
            torch.testing.assert_close(p.grad, copy.grad)
