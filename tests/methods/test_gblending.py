"""G-Blending: the weight formula, per-sample mean losses on the validation split, the schedule."""

import copy

import pytest
import torch
import torch.nn.functional as F

from avb_testing import tiny_batch, tiny_spec
from avbalance.cli import main
from avbalance.methods import get_method
from avbalance.methods.gblending import blending_weights, mean_losses
from avbalance.models import build_model


class FakeData:
    """Epoch data on fixed tiny batches; records which splits were read."""

    device = torch.device("cpu")

    def __init__(self, sizes=(6, 6, 4), val_sizes=(5, 3), modalities=("audio", "visual")):
        self.train = [tiny_batch(n, modalities=modalities, seed=i) for i, n in enumerate(sizes)]
        self.val = [tiny_batch(n, modalities=modalities, seed=100 + i) for i, n in enumerate(val_sizes)]
        self.calls = []

    def train_batches(self, limit=None, shuffle=False):
        self.calls.append("train")
        return iter(self.train[:limit])

    def val_batches(self, limit=None):
        self.calls.append("val")
        return iter(self.val[:limit])

    def num_train_samples(self):
        return sum(len(b["label"]) for b in self.train)


def test_weight_formula():
    train_pre, val_pre = torch.tensor([1.0, 1.2, 0.9]), torch.tensor([1.1, 1.3, 1.0])
    train_now, val_now = torch.tensor([0.5, 1.1, 0.3]), torch.tensor([0.9, 1.35, 0.8])
    raw = []
    for k in range(3):
        gain = float(val_pre[k] - val_now[k])
        overfit = float((val_now[k] - train_now[k]) - (val_pre[k] - train_pre[k]))
        raw.append(max(gain, 0.0) / overfit ** 2)
    expected = [r / sum(raw) for r in raw]
    got = blending_weights(train_pre, val_pre, train_now, val_now)
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    assert float(got[1]) == 0.0  # validation loss went up: no weight
    uniform = blending_weights(train_pre, val_pre, train_pre, val_pre + 1)
    assert uniform.tolist() == pytest.approx([1 / 3] * 3)


def test_mean_losses_are_per_sample_over_uneven_batches(tiny_model):
    data = FakeData()
    got = mean_losses(tiny_model, data.val_batches(), ["audio", "fused"])
    tiny_model.eval()
    with torch.no_grad():
        per_sample = {h: [] for h in ("audio", "fused")}
        for batch in data.val:
            out = tiny_model(batch)
            audio = out.unimodal_logits["audio"]
            per_sample["audio"] += F.cross_entropy(audio, batch["label"], reduction="none").tolist()
            per_sample["fused"] += F.cross_entropy(out.logits, batch["label"], reduction="none").tolist()
    assert got.tolist() == pytest.approx([sum(v) / len(v) for v in per_sample.values()], rel=1e-5)


def independent_weights(model, data, lr, epochs):
    """Per head: copy, train its own CE with a fresh SGD for ``epochs``, losses before/after."""
    heads = [*model.modalities, "fused"]

    def logits(out, head):
        return out.logits if head == "fused" else out.unimodal_logits[head]

    def mean(m, batches, head):
        m.eval()
        with torch.no_grad():
            losses = torch.cat([F.cross_entropy(logits(m(b), head), b["label"], reduction="none") for b in batches])
        return float(losses.mean())

    weights = []
    for head in heads:
        train_pre, val_pre = mean(model, data.train, head), mean(model, data.val, head)
        replica = copy.deepcopy(model)
        optimizer = torch.optim.SGD(replica.parameters(), lr=lr, momentum=0.9)
        replica.train()
        for _ in range(epochs):
            for batch in data.train:
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(logits(replica(batch), head), batch["label"]).backward()
                optimizer.step()
        train_now, val_now = mean(replica, data.train, head), mean(replica, data.val, head)
        gain, overfit = val_pre - val_now, (val_now - train_now) - (val_pre - train_pre)
        weights.append(max(gain, 0.0) / overfit ** 2)
    return [w / sum(weights) for w in weights] if sum(weights) > 0 else [1 / len(heads)] * len(heads)


def test_estimate_on_a_copy_with_the_validation_split():
    torch.manual_seed(0)
    model = build_model(tiny_spec())
    before = copy.deepcopy(model.state_dict())
    data = FakeData()
    method = get_method("gblending", super_epoch=2)
    method.setup(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), data)
    method.on_epoch_start(0, model, data)
    assert "val" in data.calls
    for key, value in model.state_dict().items():  # the model itself is untouched
        assert torch.equal(value, before[key]), key
    expected = independent_weights(model, data, lr=0.05, epochs=2)
    assert method.weights.tolist() == pytest.approx(expected, rel=1e-3, abs=1e-5)
    assert float(method.weights.sum()) == pytest.approx(1.0)


def test_loss_is_the_weighted_sum_of_head_losses(tiny_model):
    method = get_method("gblending")
    method.setup(tiny_model)
    method.weights = torch.tensor([0.2, 0.3, 0.5])
    batch = tiny_batch(8)
    out = tiny_model(batch)
    labels = batch["label"]
    expected = (0.2 * F.cross_entropy(out.unimodal_logits["audio"], labels)
                + 0.3 * F.cross_entropy(out.unimodal_logits["visual"], labels)
                + 0.5 * F.cross_entropy(out.logits, labels))
    assert float(method.loss(out, batch)) == pytest.approx(float(expected), rel=1e-6)
    assert float(method.logs()["weight/fused"]) == pytest.approx(0.5)


@pytest.mark.parametrize("mode, expected", [("online", [0, 3, 6]), ("offline", [0])])
def test_schedule_and_resume(tiny_model, monkeypatch, mode, expected):
    method = get_method("gblending", super_epoch=3, mode=mode)
    method.setup(tiny_model, None, FakeData())
    calls = []

    def fake_estimate(model, data):
        calls.append(method.epoch)
        method.weights = torch.full((3,), 1 / 3)

    monkeypatch.setattr(method, "estimate", fake_estimate)
    for epoch in range(8):
        method.on_epoch_start(epoch, tiny_model, FakeData())
    assert calls == expected
    resumed = get_method("gblending", super_epoch=3, mode=mode)
    resumed.load_state_dict(method.state_dict())
    monkeypatch.setattr(resumed, "estimate", lambda model, data: calls.append("again"))
    resumed.on_epoch_start(7, tiny_model, FakeData())
    assert calls[-1] != "again" and torch.equal(resumed.weights, method.weights)


def test_refuses_heads_without_per_modality_logits():
    with pytest.raises(ValueError, match="method 'gblending' needs .*use fusion sum, concat or cosine"):
        get_method("gblending").adapt_model_spec(tiny_spec("film"))


SMALL = ["--epochs", "2", "--batch-size", "32", "--set", "data.options.train_size=160",
         "--set", "data.options.test_size=40", "--set", "trainer.progress_bar=false",
         "--set", "method.params.super_epoch=1", "--set", "method.params.estimate_batches=2"]


@pytest.mark.parametrize("three", [False, True], ids=["two_modalities", "three_modalities"])
def test_cli_trains(tmp_path, three):
    extra = ["--set", "data.options.flow_strength=0.3"] if three else ["--fusion", "sum"]
    out = tmp_path / "run"
    assert main(["train", "--method", "gblending", "--out", str(out), *SMALL, *extra]) == 0
    assert (out / "metrics.json").is_file()
    assert "method/weight/fused" in (out / "metrics.csv").read_text().splitlines()[0]


def test_cli_refuses_gated(tmp_path, capsys):
    code = main(["train", "--method", "gblending", "--fusion", "gated", "--out", str(tmp_path / "r"), *SMALL])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "method 'gblending' needs" in err and "'gated'" in err
