"""Sample- and modality-level valuation: Shapley values per sample, copies, resampling, the step."""

import copy
from itertools import permutations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avb_testing import tiny_batch, tiny_spec
from avbalance.methods import get_method
from avbalance.methods.base import PlainStep
from avbalance.methods.valuation import modality_level_difference, sample_copies, shapley_from_values
from avbalance.models import build_model

torch.set_num_threads(1)
AV, AVF = ("audio", "visual"), ("audio", "visual", "flow")


def tiny_model(modalities=AV, seed=0):
    torch.manual_seed(seed)
    return build_model(tiny_spec(modalities=modalities)).eval()


def test_shapley_matches_the_average_over_orderings():
    generator = torch.Generator().manual_seed(0)
    sets = [
        frozenset(c)
        for c in (
            {"audio"},
            {"visual"},
            {"flow"},
            {"audio", "visual"},
            {"audio", "flow"},
            {"visual", "flow"},
            {"audio", "visual", "flow"},
        )
    ]
    values = {s: torch.randn(4, generator=generator) for s in sets}
    phi = shapley_from_values(values, AVF)

    def v(s):
        return values[frozenset(s)].numpy() if s else np.zeros(4)

    expected = np.zeros((4, 3))
    for order in permutations(AVF):
        for position, m in enumerate(order):
            expected[:, AVF.index(m)] += v(order[: position + 1]) - v(order[:position])
    assert np.allclose(phi.numpy(), expected / 6, atol=1e-6)


@pytest.mark.parametrize("removal", ["feature", "input"])
def test_two_modality_values_match_the_official_formula(removal):
    model = tiny_model()
    batch = tiny_batch(batch_size=40, seed=3)
    method = get_method("valuation", removal=removal)
    phi = method.sample_values(model, batch)
    with torch.no_grad():
        if removal == "feature":  # official exec_drop: zero the other modality's feature, rerun the head
            features = model.encode(batch)

            def predict(keep):
                kept = {m: f if m in keep else torch.zeros_like(f) for m, f in features.items()}
                return model.head(kept).logits.argmax(1)
        else:

            def predict(keep):
                return model(
                    {**{m: batch[m] if m in keep else torch.zeros_like(batch[m]) for m in AV}, "label": batch["label"]}
                ).logits.argmax(1)

        labels = batch["label"]
        v_all = 2.0 * (predict(AV) == labels).float()
        v_a, v_v = (predict(("audio",)) == labels).float(), (predict(("visual",)) == labels).float()
    assert torch.allclose(phi[:, 0], (v_a + v_all - v_v) / 2) and torch.allclose(phi[:, 1], (v_v + v_all - v_a) / 2)
    shapley = get_method("valuation", removal=removal, value_scale="shapley").sample_values(model, batch)
    assert torch.allclose(shapley[:, 0], (v_a + v_all / 2 - v_v) / 2)  # BalanceMM: v(full) in {0, 1}


def official_copies(phi, upper):
    if 0.4 < phi < upper:
        return 1
    if -0.1 < phi < 0.4:
        return 2
    if phi < -0.1:
        return 3
    return 0


def test_sample_copies_follow_the_official_thresholds():
    phi = torch.tensor([[-0.5, 0.0], [0.5, 1.0], [1.5, 0.4], [-0.1, 1 / 3], [0.95, 0.89]])
    for upper in (0.9, 1.0):
        copies = sample_copies(phi, upper)
        assert copies.tolist() == [[official_copies(float(x), upper) for x in row] for row in phi]


def test_sample_level_entries_keep_only_the_valued_modality():
    method = get_method("valuation")
    phi = torch.tensor([[0.5, 1.0], [-0.5, 0.0], [1.5, 0.5]])
    entries = method.build_entries(phi, AV)
    assert entries[:3] == [(0, ()), (1, ()), (2, ())]
    expected = [(0, ("visual",))] + [(1, ("visual",))] * 3 + [(1, ("audio",))] * 2 + [(2, ("audio",))]
    assert sorted(entries[3:]) == sorted(expected)


def test_modality_level_resamples_the_lower_contribution_modality():
    method = get_method("valuation", level="modality", part_ratio=0.5, alpha=0.8, seed=7)
    generator = torch.Generator().manual_seed(0)
    phi = torch.stack([torch.rand(50, generator=generator) * 0.5, 0.5 + torch.rand(50, generator=generator)], 1)
    entries = method.build_entries(phi, AV)
    replay = torch.Generator().manual_seed(7)
    drawn = torch.randint(50, (25,), generator=replay)
    part = phi[drawn].double().numpy().mean(0)
    gap_a, gap_v = 1 - part[0], 1 - part[1]
    difference = abs(gap_a - gap_v) / 3 * 2 * 0.8  # the official formula
    chosen = torch.randint(50, (int(difference * 50),), generator=replay)
    assert method.logs()["difference"].item() == pytest.approx(difference, abs=1e-6)
    assert entries[50:] == [(int(i), ("visual",)) for i in chosen]  # audio has the larger gap: keep it
    three = modality_level_difference(torch.tensor([0.2, 0.5, 0.9]), 1.0)
    assert three.item() == pytest.approx(2 / 3 * np.mean([0.3, 0.7, 0.4]))


def modality_level_copies(run_seed, **params):
    method = get_method("valuation", level="modality", part_ratio=0.5, **params)
    method.set_run_seed(run_seed)
    phi = torch.stack([torch.full((40,), 0.1), torch.full((40,), 0.9)], 1)
    return method.build_entries(phi, AV)[40:]


def test_draws_follow_the_run_seed_unless_the_method_has_its_own():
    assert modality_level_copies(1) == modality_level_copies(1)
    assert modality_level_copies(1) != modality_level_copies(2)
    assert modality_level_copies(1, seed=6) == modality_level_copies(2, seed=6)


class FakeData:
    """EpochData over a list of samples, served in a shuffled order with their indices."""

    device = torch.device("cpu")

    def __init__(self, batch, batch_size=5):
        self.batch, self.batch_size = batch, batch_size
        self.order = torch.randperm(len(batch["label"]), generator=torch.Generator().manual_seed(1))

    def train_batches(self, limit=None, shuffle=False):
        for start in range(0, len(self.order), self.batch_size):
            rows = self.order[start : start + self.batch_size]
            yield {**{k: v[rows] for k, v in self.batch.items()}, "index": rows}

    def num_train_samples(self):
        return len(self.batch["label"])


def test_epoch_end_values_every_sample_after_warmup_and_restores_the_mode():
    model = tiny_model(AVF).train()
    batch = tiny_batch(batch_size=12, modalities=AVF, seed=4)
    method = get_method("valuation", warmup=3)
    data = FakeData(batch)
    method.on_epoch_end(1, model, data)  # epochs 0-2 are the warm-up
    assert method.train_entries() is None
    method.on_epoch_end(2, model, data)  # epoch 3 is resampled (official: epoch >= warmup - 1)
    entries = method.train_entries()
    assert model.training and entries[:12] == [(i, ()) for i in range(12)]
    model.eval()
    expected = method.build_entries(method.sample_values(model, batch), AVF)
    assert entries == expected
    assert all(len(zeroed) == 2 for _, zeroed in entries[12:])
    restored = get_method("valuation")
    restored.load_state_dict(method.state_dict())
    assert restored.train_entries() == entries


def test_feature_removal_step_zeroes_features_of_removed_inputs():
    model = tiny_model().train()
    batch = tiny_batch(batch_size=6)
    batch["visual"][:3] = 0.0  # three copies keeping audio only
    reference = {k: v.clone() for k, v in batch.items()}
    other = copy.deepcopy(model)
    loss = get_method("valuation").training_step(model, batch, PlainStep(torch.optim.SGD(model.parameters(), lr=0.1)))
    features = other.encode(reference)
    features["visual"] = torch.cat([torch.zeros_like(features["visual"][:3]), features["visual"][3:]])
    expected = F.cross_entropy(other.head(features).logits, reference["label"])
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
