"""MBSD against independent per-sample computations (BalanceMM's loop and the Bernoulli KL)."""

import math
from itertools import combinations

import pytest
import torch
import torch.nn.functional as F

from avb_testing import tiny_batch, tiny_spec
from avbalance.methods import get_method
from avbalance.methods.mbsd import mbsd_regulariser


def balancemm_loop(za, zb, labels, similarity="logits"):
    """BalanceMM's two-modality terms written as its loop over the batch."""
    pa, pb = F.softmax(za, 1), F.softmax(zb, 1)
    batch, classes = za.shape
    rs_total = kl_total = 0.0
    for i in range(batch):
        y = int(labels[i])
        w = 0.0
        if int(pa[i].argmax()) == y or int(pb[i].argmax()) == y:
            w = max(float(pa[i, y]), float(pb[i, y])) - min(float(pa[i, y]), float(pb[i, y]))
        ps, pw = max(float(pa[i, y]), float(pb[i, y])), min(float(pa[i, y]), float(pb[i, y]))
        kl = pw * (math.log(pw) - ps)  # F.kl_div(ps, pw) = pw * (log pw - ps)
        first, second = (za[i], zb[i]) if similarity == "logits" else (pa[i], pb[i])
        rs = float(((first - second) ** 2).sum()) / classes
        rs_total += w * rs
        kl_total += w * kl
    return rs_total / batch, kl_total / batch


def bernoulli_loop(za, zb, labels):
    """KL(Bernoulli(p_strong) || Bernoulli(p_weak)) per sample, weighted, in float64."""
    pa, pb = F.softmax(za.double(), 1), F.softmax(zb.double(), 1)
    total = 0.0
    for i in range(len(labels)):
        y = int(labels[i])
        a, b = float(pa[i, y]), float(pb[i, y])
        right = int(pa[i].argmax()) == y or int(pb[i].argmax()) == y
        w = abs(a - b) if right else 0.0
        s, t = max(a, b), min(a, b)
        total += w * (s * math.log(s / t) + (1 - s) * math.log((1 - s) / (1 - t)))
    return total / len(labels)


def logits(seed, batch=9, classes=5, count=2):
    generator = torch.Generator().manual_seed(seed)
    z = [torch.randn(batch, classes, generator=generator) * (1 + i) for i in range(count)]
    return z, torch.randint(0, classes, (batch,), generator=generator)


@pytest.mark.parametrize("seed", range(5))
def test_balancemm_variant_matches_its_loop(seed):
    (za, zb), labels = logits(seed)
    terms = mbsd_regulariser({"audio": za, "visual": zb}, labels, "logits", "balancemm", detach_weights=False)
    rs, kl = balancemm_loop(za, zb, labels)
    assert float(terms["rs"]) == pytest.approx(rs, rel=1e-5, abs=1e-7)
    assert float(terms["kl"]) == pytest.approx(kl, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("seed", range(5))
def test_three_modalities_average_the_pairs(seed):
    z, labels = logits(seed, count=3)
    named = dict(zip(["audio", "visual", "flow"], z))
    terms = mbsd_regulariser(named, labels, "probs", "balancemm", detach_weights=False)
    pairs = [balancemm_loop(named[a], named[b], labels, "probs") for a, b in combinations(named, 2)]
    assert float(terms["rs"]) == pytest.approx(sum(p[0] for p in pairs) / 3, rel=1e-5, abs=1e-7)
    assert float(terms["kl"]) == pytest.approx(sum(p[1] for p in pairs) / 3, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("seed", range(5))
def test_bernoulli_kl_from_stronger_to_weaker(seed):
    (za, zb), labels = logits(seed)
    terms = mbsd_regulariser({"audio": za, "visual": zb}, labels)
    assert float(terms["kl"]) == pytest.approx(bernoulli_loop(za, zb, labels), rel=1e-4, abs=1e-7)
    assert float(terms["kl"]) >= 0


def test_teacher_and_weights_are_detached():
    za = torch.tensor([[4.0, 0.0, 0.0]], requires_grad=True)  # strong: right and confident
    zb = torch.tensor([[0.5, 0.0, 0.2]], requires_grad=True)  # weak: right, unsure
    labels = torch.tensor([0])
    terms = mbsd_regulariser({"audio": za, "visual": zb}, labels)
    terms["kl"].backward()
    assert torch.count_nonzero(za.grad) == 0  # the stronger modality is the teacher
    assert torch.count_nonzero(zb.grad) > 0
    assert zb.grad[0, 0] < 0  # the weak modality's true class is pushed up


def test_loss_inside_and_outside_the_window(tiny_model):
    batch = tiny_batch(8)
    method = get_method("mbsd", modulation_starts=1, modulation_ends=1)
    method.setup(tiny_model)
    out = tiny_model(batch)
    method.on_epoch_start(0)
    assert float(method.loss(out, batch)) == pytest.approx(float(F.cross_entropy(out.logits, batch["label"])))
    method.on_epoch_start(1)
    labels = batch["label"]
    terms = mbsd_regulariser(out.unimodal_logits, labels)
    unimodal = sum(F.cross_entropy(z, labels) for z in out.unimodal_logits.values())
    expected = F.cross_entropy(out.logits, labels) + unimodal + terms["rs"] + terms["kl"]
    assert float(method.loss(out, batch)) == pytest.approx(float(expected), rel=1e-6)
    assert set(method.logs()) == {"rs", "kl", "weight"}


def test_refuses_heads_without_per_modality_logits():
    with pytest.raises(ValueError, match="method 'mbsd' needs .*use fusion sum, concat or cosine"):
        get_method("mbsd").adapt_model_spec(tiny_spec("gated_sym"))
    for fusion in ("sum", "concat", "cosine"):
        get_method("mbsd").adapt_model_spec(tiny_spec(fusion))
