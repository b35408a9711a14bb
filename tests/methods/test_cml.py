"""CML against independent computations: BalanceMM's partial logits, per-sample hinge loops."""

import pytest
import torch
import torch.nn.functional as F

from avb_testing import tiny_batch, tiny_spec
from avbalance.cli import main
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
    total = 0.0
    for larger, smaller in zip(chain[:-1], chain[1:]):
        pl, ps = F.softmax(larger, 1), F.softmax(smaller, 1)
        deltas = []
        for i in range(len(labels)):
            keep = not (int(pl[i].argmax()) == int(labels[i]) and int(ps[i].argmax()) != int(labels[i]))
            delta = float(ps[i].max() - pl[i].max())
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
        assert torch.allclose(ours[-1], F.linear(out.features[kept], model.head.weight_blocks()[kept],
                                                 model.head.fc_out.bias), atol=1e-5)


@pytest.mark.parametrize("hinge", ["sample", "batch"])
@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_penalty_matches_loop(hinge, mask, seed):
    generator = torch.Generator().manual_seed(seed)
    chain = [torch.randn(12, 4, generator=generator) * s for s in (1.0, 2.0, 0.5)]
    labels = torch.randint(0, 4, (12,), generator=generator)
    got = confidence_penalties(chain, labels, hinge, mask)
    assert float(got) == pytest.approx(penalty_loop(chain, labels, hinge, mask), rel=1e-5, abs=1e-6)


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


SMALL = ["--epochs", "2", "--batch-size", "32", "--set", "data.options.train_size=160",
         "--set", "data.options.test_size=40", "--set", "trainer.progress_bar=false"]


@pytest.mark.parametrize("three", [False, True], ids=["two_modalities", "three_modalities"])
def test_cli_trains(tmp_path, three):
    extra = ["--set", "data.options.flow_strength=0.3"] if three else ["--fusion", "film"]
    out = tmp_path / "run"
    assert main(["train", "--method", "cml", "--out", str(out), *SMALL, *extra]) == 0
    assert (out / "metrics.json").is_file()


def test_cli_refuses_one_modality(tmp_path, capsys):
    code = main(["train", "--method", "cml", "--modalities", "visual", "--out", str(tmp_path / "r"), *SMALL])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "method 'cml' needs 2+ modalities" in err
