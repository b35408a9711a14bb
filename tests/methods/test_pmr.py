"""PMR against independent computations: prototype distances, coefficients, PCE and PER terms."""


import pytest
import torch
import torch.nn.functional as F

from avb_testing import tiny_batch, tiny_spec, train_on_synthetic
from avbalance.methods import get_method
from avbalance.methods.pmr import pmr_weights, prototype_logits
from avbalance.models import build_model


class ListData:
    """EpochData over fixed batches (one process)."""

    device = torch.device("cpu")

    def __init__(self, batches, val=None):
        self.batches, self.val = batches, val or batches

    def train_batches(self, limit=None, shuffle=False):
        return iter(self.batches[:limit])

    def val_batches(self, limit=None):
        return iter(self.val[:limit])

    def num_train_samples(self):
        return sum(len(b["label"]) for b in self.batches)


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
    expected = (F.cross_entropy(output.logits, labels) + 1.5 * beta * F.cross_entropy(q["audio"], labels)
                + 1.5 * gamma * F.cross_entropy(q["visual"], labels))
    if epoch < 10:  # PER only in the first epochs: the leading modality's entropy is raised
        expected = expected - 0.1 * gamma * entropy["audio"] - 0.1 * beta * entropy["visual"]
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert max(beta, gamma) > 0


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


def test_no_host_synchronisation_in_loss(monkeypatch):
    model, prototypes = _model_and_prototypes()
    method = get_method("pmr")
    method.prototypes = prototypes
    batch = tiny_batch(seed=4)
    output = model(batch)

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation")

    for name in ("item", "__bool__", "__float__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    method.loss(output, batch).backward()


SMALL_DATA = dict(train_size=96, test_size=32, image_size=16, freq_bins=16, time_steps=16)


def _train(tmp_path, name, *extra):
    return train_on_synthetic("pmr", tmp_path / name, *extra, **SMALL_DATA)


def test_cli_two_and_three_modalities(tmp_path):
    assert _train(tmp_path, "two", "--fusion", "film") == 0
    assert (tmp_path / "two" / "metrics.json").is_file()
    assert _train(tmp_path, "three", "--set", "data.options.flow_strength=0.3") == 0
    assert (tmp_path / "three" / "metrics.json").is_file()


def test_cli_refuses_one_modality(tmp_path, capsys):
    assert _train(tmp_path, "one", "--modalities", "visual") == 2
    err = capsys.readouterr().err.strip()
    assert "method 'pmr' needs 2+ modalities, got 1 (visual)" in err and "\n" not in err


class ShardData(ListData):
    """This rank's shard (samples r, r + world, ...) of a global set, in batches of 4, with indices."""

    def __init__(self, batch, rank, world):
        index = torch.arange(rank, len(batch["label"]), world)
        local = {**{k: v[index] for k, v in batch.items()}, "index": index}
        super().__init__([{k: v[i:i + 4] for k, v in local.items()} for i in range(0, len(index), 4)])
        self.total = len(batch["label"])

    def num_train_samples(self):
        return self.total


def pmr_worker(rank, world, steps=2):
    from torch.nn.parallel import DistributedDataParallel

    from ddp_workers import flat_parameters, no_norm_model

    model = no_norm_model()
    everything = tiny_batch(24, seed=9)
    everything["label"] = torch.arange(24) % 5
    method = get_method("pmr", subset_fraction=1.0, alpha=2.0, mu=0.5)
    method.setup(model)
    method.on_epoch_start(0, model, ShardData(everything, rank, world))
    forward = DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logs = []
    for step in range(steps):
        batch = tiny_batch(8, seed=step)
        local = {k: v[rank * 8 // world:(rank + 1) * 8 // world] for k, v in batch.items()}
        optimizer.zero_grad(set_to_none=True)
        method.loss(forward(local), local).backward()
        optimizer.step()
        logs.append({k: v.detach().clone() for k, v in method.logs().items()})
    return method.prototypes, logs, flat_parameters(model)


def test_ddp_prototypes_and_weights_are_global(tmp_path):
    from ddp_workers import run_workers

    (proto0, logs0, params0), (proto1, logs1, params1) = run_workers(pmr_worker, 2, tmp_path)
    proto, logs, params = pmr_worker(0, 1)
    assert torch.equal(params0, params1)
    torch.testing.assert_close(params0, params, rtol=1e-5, atol=1e-6)
    for m in proto:
        assert torch.equal(proto0[m], proto1[m])
        torch.testing.assert_close(proto0[m], proto[m], rtol=1e-5, atol=1e-6)
    for key in logs[0]:
        if not key.startswith("proto_acc"):  # the accuracy is of this rank's batch only
            torch.testing.assert_close(logs0[0][key], logs[0][key], rtol=1e-5, atol=1e-6)
