"""CML against independent computations: BalanceMM's partial logits, per-sample hinge loops."""

import pytest
import torch
import torch.nn.functional as F

from avb_testing import tiny_batch, tiny_spec
from avbalance.methods import get_method
from avbalance.methods.cml import confidence_penalties, partial_logits, removal_order
from avbalance.models import build_model


def balancemm_chain(output, head, order):
    """BalanceMM: z^(j) = z^(j-1) - z_removed + b / M (split-head logits of the removed modality)."""
    chain, current = [output.logits], output.logits
    bias = head.fc_out.bias / len(order)
    for removed in reversed(order[1:]):
        current = current - output.unimodal_logits[removed] + bias
        chain.append(current)
    return chain


def penalty_loop(chain, labels, hinge, mask):
    """The official ``rank_loss`` (cpm/CPM_Nets.py): chain index ``num`` is the larger set, ``num + 1``
    the smaller; "trick 1" skips samples where the smaller set is right and the larger one wrong."""
    total = 0.0
    for larger, smaller in zip(chain[:-1], chain[1:]):
        pl, ps = F.softmax(larger, 1), F.softmax(smaller, 1)
        deltas = []
        for i in range(len(labels)):
            keep = not (int(ps[i].argmax()) == int(labels[i]) and int(pl[i].argmax()) != int(labels[i]))
            delta = float((ps[i].max() - pl[i].max()).detach())
            deltas.append(delta if (keep or not mask) else 0.0)
        total += sum(max(0.0, d) for d in deltas) if hinge == "sample" else max(0.0, sum(deltas))
    return total


@pytest.mark.parametrize("modalities", [("audio", "visual"), ("audio", "visual", "flow")])
def test_partial_logits_of_concat_equal_balancemm(modalities):
    torch.manual_seed(0)
    model = build_model(tiny_spec(modalities=modalities))
    out = model(tiny_batch(5, modalities=modalities))
    for seed in range(3):
        order = removal_order(modalities, seed, 0)
        ours = [out.logits, *partial_logits(model.head, out.features, order)]
        for got, want in zip(ours, balancemm_chain(out, model.head, order)):
            assert torch.allclose(got, want, atol=1e-5)
        kept = order[0]  # the last subset is the first modality of the order, with the full bias
        assert torch.allclose(
            ours[-1], F.linear(out.features[kept], model.head.weight_blocks()[kept], model.head.fc_out.bias), atol=1e-5
        )


@pytest.mark.parametrize("hinge", ["sample", "batch"])
@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_penalty_matches_loop(hinge, mask, seed):
    generator = torch.Generator().manual_seed(seed)
    chain = [torch.randn(12, 4, generator=generator) * s for s in (1.0, 2.0, 0.5)]
    labels = torch.randint(0, 4, (12,), generator=generator)
    got = confidence_penalties(chain, labels, hinge, mask)
    assert float(got) == pytest.approx(penalty_loop(chain, labels, hinge, mask), rel=1e-5, abs=1e-6)


def official_rank_loss(chain, target):
    """``rank_loss`` of the official code (cpm/CPM_Nets.py) on a chain of logits, full set first."""
    confidence_list, predict_list = [], []
    for logits in chain:
        confidence, predict = torch.max(F.softmax(logits, dim=1), dim=1)
        confidence_list.append(confidence)
        predict_list.append(predict)
    loss = 0
    for num in range(len(chain) - 1):
        sign = (~((predict_list[num + 1] == target) & (predict_list[num] != target))).long()
        loss = loss + torch.nn.ReLU()(torch.sub(confidence_list[num + 1], confidence_list[num]) * sign - 0.00).sum()
    return loss


@pytest.mark.parametrize("seed", range(3))
def test_penalty_and_its_gradients_match_the_official_rank_loss(seed):
    generator = torch.Generator().manual_seed(seed)
    chain = [
        (torch.randn(16, 4, generator=generator, dtype=torch.float64) * s).requires_grad_() for s in (1.0, 2.0, 0.5)
    ]
    labels = torch.randint(0, 4, (16,), generator=generator)
    ours, official = confidence_penalties(chain, labels), official_rank_loss(chain, labels)
    torch.testing.assert_close(ours, official, rtol=0, atol=1e-6)
    for mine, theirs in zip(torch.autograd.grad(ours, chain), torch.autograd.grad(official, chain)):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)


def test_mask_skips_a_right_smaller_set_and_keeps_a_wrong_confident_one():
    full = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # sample 0 right, sample 1 wrong (label 0)
    subset = torch.tensor([[0.0, 4.0], [5.0, 0.0]])  # sample 0 wrong, sample 1 right; both more confident
    labels = torch.tensor([0, 0])
    c_full, c_subset = F.softmax(full, 1).max(1).values, F.softmax(subset, 1).max(1).values
    penalty = confidence_penalties([full, subset], labels, "sample", True)
    torch.testing.assert_close(penalty, c_subset[0] - c_full[0])  # only the wrong, more confident subset


def test_loss_is_mean_ce_over_the_chain_plus_weighted_penalty():
    modalities = ("audio", "visual", "flow")
    torch.manual_seed(1)
    model = build_model(tiny_spec(modalities=modalities))
    batch = tiny_batch(7, modalities=modalities)
    method = get_method("cml", lam=0.3)
    method.setup(model)
    method.on_epoch_start(2, model)
    out = model(batch)
    chain = balancemm_chain(out, model.head, method.order)
    labels = batch["label"]
    expected = sum(F.cross_entropy(z, labels) for z in chain) / 3 + 0.3 * penalty_loop(chain, labels, "sample", True)
    assert float(method.loss(out, batch)) == pytest.approx(float(expected), rel=1e-5)
    method_outside = get_method("cml", modulation_ends=1)
    method_outside.setup(model)
    method_outside.on_epoch_start(2, model)
    assert float(method_outside.loss(out, batch)) == pytest.approx(float(F.cross_entropy(out.logits, labels)))


def test_the_order_is_reproducible_per_epoch_and_varies():
    modalities = ("audio", "visual", "flow")
    orders = [tuple(removal_order(modalities, 0, epoch)) for epoch in range(12)]
    assert orders == [tuple(removal_order(modalities, 0, epoch)) for epoch in range(12)]  # same on every rank
    assert len(set(orders)) > 1 and all(sorted(o) == sorted(modalities) for o in orders)


def epoch_orders(run_seed, **params):
    """The removal orders of epochs 0-7 after ``set_run_seed(run_seed)``."""
    torch.manual_seed(0)
    model = build_model(tiny_spec(modalities=("audio", "visual", "flow")))
    method = get_method("cml", **params)
    method.set_run_seed(run_seed)
    method.setup(model)
    orders = []
    for epoch in range(8):
        method.on_epoch_start(epoch, model)
        orders.append(tuple(method.order))
    return orders


def test_the_order_follows_the_run_seed_unless_the_method_has_its_own():
    assert epoch_orders(1) == epoch_orders(1)
    assert epoch_orders(1) != epoch_orders(2)
    assert epoch_orders(1, seed=4) == epoch_orders(2, seed=4)
    modalities = ("audio", "visual", "flow")
    assert epoch_orders(3, seed=4) == [tuple(removal_order(modalities, 4, epoch)) for epoch in range(8)]


def test_penalty_gradient_lowers_the_subset_confidence():
    full = torch.tensor([[1.0, 0.0]], requires_grad=True)
    subset = torch.tensor([[3.0, 0.0]], requires_grad=True)  # more confident without a modality
    confidence_penalties([full, subset], torch.tensor([0]), "sample", True).backward()
    # descent lowers the subset's confidence and raises the full set's
    assert subset.grad[0, 0] > 0 > full.grad[0, 0]


@pytest.mark.parametrize("fusion", ["sum", "film", "gated_sym"])
def test_every_head_gives_a_finite_loss(fusion):
    torch.manual_seed(0)
    model = build_model(tiny_spec(fusion))
    method = get_method("cml")
    method.setup(model)
    batch = tiny_batch(4)
    loss = method.loss(model(batch), batch)
    loss.backward()
    assert torch.isfinite(loss)
