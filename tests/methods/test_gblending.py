"""G-Blending against the paper's equations (weights, loss, gradients), per-sample mean losses on the
validation split, the schedule, new shuffled orders at every refresh."""

import copy

import pytest
import torch
import torch.nn.functional as F

from avb_testing import TinySamples, tiny_batch, tiny_spec
from avbalance.engine.epoch_data import LoaderEpochData
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
        raw.append(max(gain, 0.0) / overfit**2)
    expected = [r / sum(raw) for r in raw]
    got = blending_weights(train_pre, val_pre, train_now, val_now)
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    assert float(got[1]) == 0.0  # validation loss went up: no weight
    uniform = blending_weights(train_pre, val_pre, train_pre, val_pre + 1)
    assert uniform.tolist() == pytest.approx([1 / 3] * 3)


def paper_weights(train_pre, val_pre, train_now, val_now):
    """Gradient-Blending, Wang et al. CVPR 2020 (Sec. 3.3, Prop. 2): with the overfitting
    ``O_N = L*V_N - L*T_N``, ``dO = O_{N+n} - O_N`` and the generalisation ``dG = L*V_N - L*V_{N+n}``,
    ``w*_k = dG_k / dO_k^2 / Z`` with ``Z = sum_k dG_k / dO_k^2`` (positive gains)."""
    ratios = []
    for k in range(len(train_pre)):
        overfit_pre, overfit_now = val_pre[k] - train_pre[k], val_now[k] - train_now[k]
        delta_o, delta_g = overfit_now - overfit_pre, val_pre[k] - val_now[k]
        ratios.append(delta_g / delta_o**2)
    z = sum(ratios)
    return [r / z for r in ratios]


@pytest.mark.parametrize("seed", range(5))
def test_weights_loss_and_gradients_follow_the_paper(seed):
    """On random losses (positive gains) the weights are the paper's ``w*``; the step's loss and
    gradients are those of ``sum_k w*_k CE(z_k, y)``, to 1e-6."""
    generator = torch.Generator().manual_seed(seed)
    train_pre = torch.rand(3, generator=generator, dtype=torch.float64) + 1.0
    val_pre = train_pre + torch.rand(3, generator=generator, dtype=torch.float64) * 0.2
    train_now = train_pre - torch.rand(3, generator=generator, dtype=torch.float64) * 0.8
    val_now = val_pre - torch.rand(3, generator=generator, dtype=torch.float64) * 0.3
    expected = paper_weights(train_pre.tolist(), val_pre.tolist(), train_now.tolist(), val_now.tolist())
    weights = blending_weights(train_pre, val_pre, train_now, val_now)
    assert weights.tolist() == pytest.approx(expected, abs=1e-6)

    torch.manual_seed(seed)
    model = build_model(tiny_spec()).double()
    method = get_method("gblending")
    method.setup(model)
    method.weights = weights
    batch = {k: v.double() if v.is_floating_point() else v for k, v in tiny_batch(7, seed=seed).items()}
    out = model(batch)
    labels = batch["label"]
    heads = [out.unimodal_logits["audio"], out.unimodal_logits["visual"], out.logits]
    want = sum(w * F.cross_entropy(z, labels) for w, z in zip(expected, heads))
    got = method.loss(out, batch)
    params = list(model.parameters())
    assert float(got.detach()) == pytest.approx(float(want.detach()), abs=1e-6)
    got_grads = torch.autograd.grad(got, params, retain_graph=True, allow_unused=True, materialize_grads=True)
    want_grads = torch.autograd.grad(want, params, allow_unused=True, materialize_grads=True)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=0)


def test_each_refresh_trains_its_copies_on_new_orders(tiny_model):
    """The copies of a refresh read new shuffled orders, and so does every later refresh."""
    data = LoaderEpochData(TinySamples(24), TinySamples(8), 4, torch.device("cpu"), seed=3)
    orders = []
    original = data.train_batches

    def recording(limit=None, shuffle=False):
        batches = list(original(limit, shuffle))
        if shuffle:
            orders.append(tuple(torch.cat([b["index"] for b in batches]).tolist()))
        return iter(batches)

    data.train_batches = recording
    method = get_method("gblending", super_epoch=1, estimate_batches=2)
    method.setup(tiny_model, torch.optim.SGD(tiny_model.parameters(), lr=0.01), data)
    for epoch in range(2):
        data.set_epoch(epoch)
        method.on_epoch_start(epoch, tiny_model, data)
    assert len(orders) == 6 and len(set(orders)) == 6  # 3 heads x 1 epoch, 2 refreshes


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
        weights.append(max(gain, 0.0) / overfit**2)
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
    expected = (
        0.2 * F.cross_entropy(out.unimodal_logits["audio"], labels)
        + 0.3 * F.cross_entropy(out.unimodal_logits["visual"], labels)
        + 0.5 * F.cross_entropy(out.logits, labels)
    )
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
