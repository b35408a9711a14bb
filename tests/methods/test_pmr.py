"""PMR against independent computations: the official step, prototype distances, coefficients, PCE
and PER terms, the per-epoch prototype subset."""

import pytest
import torch
import torch.nn.functional as F

from avb_testing import ListData, TinySamples, tiny_batch, tiny_spec
from avbalance.engine.epoch_data import LoaderEpochData
from avbalance.errors import ConfigError
from avbalance.methods import get_method
from avbalance.methods.pmr import pmr_weights, prototype_logits
from avbalance.models import build_model


def official_distances(x1, x2):
    """The official double loop: d[i, j] = sqrt((x1_i - x2_j) . (x1_i - x2_j))."""
    d = torch.zeros(x1.shape[0], x2.shape[0])
    for i in range(x1.shape[0]):
        for j in range(x2.shape[0]):
            d[i, j] = torch.sqrt(torch.dot(x1[i] - x2[j], x1[i] - x2[j]))
    return d


def test_prototype_logits_are_negative_euclidean_distances():
    generator = torch.Generator().manual_seed(0)
    features, prototypes = torch.randn(7, 5, generator=generator), torch.randn(4, 5, generator=generator)
    torch.testing.assert_close(prototype_logits(features, prototypes), -official_distances(features, prototypes))
    features.requires_grad_(True)
    prototype_logits(features, features[:3].detach()).sum().backward()  # zero distances: finite gradient
    assert torch.isfinite(features.grad).all()


@pytest.mark.parametrize("sa, sv", [(5.0, 2.0), (2.0, 5.0), (3.0, 3.0), (4.0, 3.5)])
def test_two_modality_weights_are_equations_11_and_13(sa, sv):
    rho, beta, gamma = pmr_weights(torch.tensor([sa, sv]), "paper")
    ratio = sa / sv  # Eq. 8
    if ratio < 1:  # Eq. 11: (beta, gamma) = (clip(1/rho - 1), 0)
        b, g = min(max(1 / ratio - 1, 0), 1), 0.0
    else:  # (0, clip(rho - 1))
        b, g = 0.0, min(max(ratio - 1, 0), 1)
    # PCE weights: beta on audio, gamma on visual (Eq. 10); PER weights: gamma on audio, beta on visual (Eq. 13)
    torch.testing.assert_close(beta, torch.tensor([b, g]))
    torch.testing.assert_close(gamma, torch.tensor([g, b]))
    assert rho[0].item() == pytest.approx(ratio)
    _, beta_code, gamma_code = pmr_weights(torch.tensor([sa, sv]), "official")
    expected_code = [float(ratio < 1), float(ratio > 1)]  # official hard switch
    torch.testing.assert_close(beta_code, torch.tensor(expected_code))
    torch.testing.assert_close(gamma_code, torch.tensor(expected_code[::-1]))


def test_three_modalities_compare_with_the_mean_of_the_others():
    scores = torch.tensor([6.0, 2.0, 4.0])
    rho, beta, gamma = pmr_weights(scores, "paper")
    expected_rho = torch.tensor([6 / 3, 2 / 5, 4 / 4])
    torch.testing.assert_close(rho, expected_rho)
    torch.testing.assert_close(beta, torch.tensor([0.0, 1.0, 0.0]))  # clip(1/0.4 - 1) = 1
    torch.testing.assert_close(gamma, torch.tensor([1.0, 0.0, 0.0]))


def _model_and_prototypes(modalities=("audio", "visual"), seed=0):
    torch.manual_seed(seed)
    model = build_model(tiny_spec(modalities=modalities))
    generator = torch.Generator().manual_seed(seed + 10)
    prototypes = {m: torch.randn(5, model.head.dims[m], generator=generator) for m in modalities}
    return model, prototypes


@pytest.mark.parametrize("epoch, rule", [(0, "paper"), (3, "official"), (20, "paper")])
def test_loss_is_ce_plus_weighted_pce_minus_weighted_entropy(epoch, rule):
    model, prototypes = _model_and_prototypes()
    method = get_method("pmr", alpha=1.5, mu=0.1, entropy_epochs=10, rule=rule)
    method.prototypes = prototypes
    method.epoch = epoch
    batch = tiny_batch(batch_size=9, seed=3)
    output = model(batch)
    loss = method.loss(output, batch)

    labels = batch["label"]
    q = {m: -official_distances(output.features[m], prototypes[m]) for m in prototypes}
    s = {m: sum(F.softmax(q[m], 1)[i, labels[i]].item() for i in range(len(labels))) for m in q}
    ratio = s["audio"] / s["visual"]
    if rule == "paper":
        beta, gamma = (min(max(1 / ratio - 1, 0), 1), 0.0) if ratio < 1 else (0.0, min(max(ratio - 1, 0), 1))
    else:
        beta, gamma = (1.0, 0.0) if ratio < 1 else ((0.0, 1.0) if ratio > 1 else (0.0, 0.0))
    entropy = {m: -(F.softmax(q[m], 1) * F.log_softmax(q[m], 1)).sum(1).mean() for m in q}
    expected = (
        F.cross_entropy(output.logits, labels)
        + 1.5 * beta * F.cross_entropy(q["audio"], labels)
        + 1.5 * gamma * F.cross_entropy(q["visual"], labels)
    )
    if epoch < 10:  # PER only in the first epochs: the leading modality's entropy is raised
        expected = expected - 0.1 * gamma * entropy["audio"] - 0.1 * beta * entropy["visual"]
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert max(beta, gamma) > 0


def official_proto_step(output, batch, audio_proto, visual_proto, alpha):
    """The loss of the official training step (fanyunfeng-bit/Modal-Imbalance-PMR,
    main_Prototype_grad.py, ``modulation == 'Proto'``): prototype scores summed with a Python loop,
    ``ratio_a_p = score_a_p / score_v_p`` and the hard switch with weight alpha."""
    label = batch["label"]
    a, v, out = output.features["audio"], output.features["visual"], output.logits
    audio_sim = -official_distances(a, audio_proto)
    visual_sim = -official_distances(v, visual_proto)
    score_a_p = sum([F.softmax(audio_sim, dim=1)[i][label[i]] for i in range(audio_sim.size(0))])
    score_v_p = sum([F.softmax(visual_sim, dim=1)[i][label[i]] for i in range(visual_sim.size(0))])
    ratio_a_p = score_a_p / score_v_p
    loss_proto_a = F.cross_entropy(audio_sim, label)
    loss_proto_v = F.cross_entropy(visual_sim, label)
    if ratio_a_p > 1:
        beta, lam = 0, 1 * alpha
    elif ratio_a_p < 1:
        beta, lam = 1 * alpha, 0
    else:
        beta, lam = 0, 0
    return F.cross_entropy(out, label) + beta * loss_proto_a + lam * loss_proto_v, float(ratio_a_p.detach())


AUDIO_LEADS = {0, 2, 3}  # seeds whose prototype ratio s_a / s_v is above 1 (the others below)


@pytest.mark.parametrize("seed", range(6))
def test_default_loss_and_gradients_are_the_official_step(seed):
    """Default (official rule, no PER) against the official step: loss and gradients to 1e-6, both
    branches of the switch across the seeds."""
    torch.manual_seed(seed)
    model = build_model(tiny_spec()).double()
    generator = torch.Generator().manual_seed(seed + 10)
    prototypes = {
        m: torch.randn(5, model.head.dims[m], generator=generator).double() * (1 + seed % 3)
        for m in ("audio", "visual")
    }
    batch = {k: v.double() if v.is_floating_point() else v for k, v in tiny_batch(9, seed=seed).items()}
    method = get_method("pmr", alpha=1.5)
    method.prototypes = prototypes
    params = list(model.parameters())
    output = model(batch)
    ours = method.loss(output, batch)
    expected, ratio = official_proto_step(model(batch), batch, prototypes["audio"], prototypes["visual"], 1.5)
    assert (ratio > 1) == (seed in AUDIO_LEADS)
    assert float(ours.detach()) == pytest.approx(float(expected.detach()), abs=1e-6)
    got = torch.autograd.grad(ours, params, allow_unused=True, materialize_grads=True)
    want = torch.autograd.grad(expected, params, allow_unused=True, materialize_grads=True)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=0)


def test_defaults_follow_the_official_code_and_the_rule_sets_mu():
    official = get_method("pmr")
    assert (official.rule, official.mu, official.alpha, official.momentum) == ("official", 0.0, 1.0, 0.2)
    assert get_method("pmr", rule="paper").mu == 0.01
    assert get_method("pmr", rule="paper", mu=0.001).mu == 0.001
    with pytest.raises(ConfigError, match="method 'pmr': mu must be >= 0, got -0.1"):
        get_method("pmr", mu=-0.1)


def _prototype_subsets(data, tiny_model, epochs):
    """The training indices each epoch's prototype pass reads."""
    seen = []
    original = data.train_batches

    def recording(limit=None, shuffle=False):
        for batch in original(limit, shuffle):
            seen[-1].extend(batch["index"].tolist())
            yield batch

    data.train_batches = recording
    method = get_method("pmr")
    for epoch in epochs:
        data.set_epoch(epoch)
        seen.append([])
        method.on_epoch_start(epoch, tiny_model, data)
    return seen


def test_prototypes_come_from_a_fresh_reproducible_subset_every_epoch(tiny_model):
    """A new seeded tenth of the training set each epoch; the same subsets for the same run seed, and
    a run resumed at an epoch start draws what the uninterrupted run draws."""

    def epoch_data(seed, epoch=0):
        return LoaderEpochData(TinySamples(200), TinySamples(20), 4, torch.device("cpu"), seed=seed, epoch=epoch)

    subsets = _prototype_subsets(epoch_data(7), tiny_model, range(4))
    assert all(len(s) == 20 for s in subsets)
    assert len({tuple(sorted(s)) for s in subsets}) == 4  # a different subset every epoch
    assert _prototype_subsets(epoch_data(7), tiny_model, range(4)) == subsets
    assert _prototype_subsets(epoch_data(7, epoch=2), tiny_model, [2, 3]) == subsets[2:]  # resumed
    assert _prototype_subsets(epoch_data(8), tiny_model, range(4)) != subsets
    data = epoch_data(7)  # passes within one epoch differ too, and restart with the next epoch
    first, second = (list(data.train_batches(limit=1, shuffle=True))[0]["index"] for _ in range(2))
    assert not torch.equal(first, second)
    data.set_epoch(1)
    assert not torch.equal(list(data.train_batches(limit=1, shuffle=True))[0]["index"], first)
    data.set_epoch(0)
    torch.testing.assert_close(list(data.train_batches(limit=1, shuffle=True))[0]["index"], first)


def test_outside_window_plain_cross_entropy():
    model, prototypes = _model_and_prototypes()
    method = get_method("pmr", modulation_starts=2, modulation_ends=4)
    method.prototypes = prototypes
    batch = tiny_batch(seed=1)
    output = model(batch)
    for epoch, inside in ((1, False), (2, True), (5, False)):
        method.epoch = epoch
        loss = method.loss(output, batch)
        plain = F.cross_entropy(output.logits, batch["label"])
        assert torch.allclose(loss, plain) != inside


def test_prototypes_are_class_means_then_ema(tiny_model):
    batches = []
    for seed in range(4):
        batch = tiny_batch(batch_size=10, seed=seed)
        batch["label"] = torch.arange(10) % 5
        batch["index"] = torch.arange(seed * 10, seed * 10 + 10)
        batches.append(batch)
    data = ListData(batches)
    method = get_method("pmr", subset_fraction=0.5, momentum=0.3)

    def class_means():  # independent: loop over the first half of the samples (eval mode)
        tiny_model.eval()
        with torch.no_grad():
            feats = [tiny_model.encode(b) for b in batches[:2]]
        tiny_model.train()
        labels = torch.cat([b["label"] for b in batches[:2]])
        means = {}
        for m in ("audio", "visual"):
            rows = torch.cat([f[m] for f in feats])
            means[m] = torch.stack([rows[labels == k].mean(0) for k in range(5)])
        return means

    history = []
    for epoch in range(4):
        with torch.no_grad():  # the network changes between epochs
            for p in tiny_model.encoders.parameters():
                p.add_(0.05 * torch.randn_like(p))
        expected = class_means()
        method.on_epoch_start(epoch, tiny_model, data)
        if epoch >= 2:
            expected = {m: 0.7 * expected[m] + 0.3 * history[-1][m] for m in expected}
        for m in expected:
            torch.testing.assert_close(method.prototypes[m], expected[m], rtol=1e-4, atol=1e-5)
        history.append({m: c.clone() for m, c in method.prototypes.items()})
        assert tiny_model.training  # the model's mode is restored
    restored = get_method("pmr")
    restored.load_state_dict(method.state_dict())
    torch.testing.assert_close(restored.prototypes["audio"], method.prototypes["audio"])


def test_absent_class_keeps_its_previous_prototype(tiny_model):
    batch = tiny_batch(batch_size=8, seed=2)
    batch["label"] = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])  # class 4 absent
    method = get_method("pmr", subset_fraction=1.0)
    method.prototypes = {m: torch.full((5, tiny_model.head.dims[m]), 7.0) for m in ("audio", "visual")}
    method.on_epoch_start(1, tiny_model, ListData([batch]))
    assert torch.all(method.prototypes["audio"][4] == 7.0) and torch.isfinite(method.prototypes["visual"]).all()
