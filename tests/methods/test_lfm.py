"""LFM: alignment terms, the hypergradient against finite differences, the weight schedules,
pre-trained parts."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from avb_testing import tiny_batch, tiny_spec
from avbalance.cli import main
from avbalance.methods import get_method
from avbalance.methods.lfm import info_nce, js_divergence
from avbalance.models import build_model
from avbalance.models.checkpoint import save_model_checkpoint


class FakeData:
    device = torch.device("cpu")

    def __init__(self, modalities=("audio", "visual")):
        self.modalities = modalities

    def train_batches(self, limit=None, shuffle=False):
        return iter([tiny_batch(6, modalities=self.modalities, seed=i) for i in range(limit or 2)])

    def val_batches(self, limit=None):
        return iter([tiny_batch(10, modalities=self.modalities, seed=50 + i) for i in range(limit or 2)])

    def num_train_samples(self):
        return 12


@pytest.mark.parametrize("seed", range(4))
def test_js_divergence(seed):
    generator = torch.Generator().manual_seed(seed)
    first, second = torch.randn(5, 4, generator=generator) * 3, torch.randn(5, 4, generator=generator)
    p, q = F.softmax(first.double(), 1), F.softmax(second.double(), 1)
    total = 0.0
    for i in range(5):
        m = (p[i] + q[i]) / 2
        total += 0.5 * sum(float(p[i, k] * math.log(p[i, k] / m[k]) + q[i, k] * math.log(q[i, k] / m[k]))
                           for k in range(4))
    assert float(js_divergence(first, second)) == pytest.approx(total / 5, rel=1e-5)
    assert float(js_divergence(first, second)) == pytest.approx(float(js_divergence(second, first)), rel=1e-6)
    assert float(js_divergence(first, second)) <= math.log(2)


def test_info_nce():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 8, generator=generator), torch.randn(6, 8, generator=generator)
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    sim = (an @ bn.t()) / 0.07
    rows = -sum(float(sim[i, i] - torch.logsumexp(sim[i], 0)) for i in range(6)) / 6
    cols = -sum(float(sim[i, i] - torch.logsumexp(sim[:, i], 0)) for i in range(6)) / 6
    assert float(info_nce(a, b, 0.07)) == pytest.approx((rows + cols) / 2, rel=1e-5)


def test_hypergradient_is_the_hessian_vector_product_of_the_first_tensor():
    """delta = mean of (H_tot g_cls) over the first tensor, checked by central differences of
    grad L_tot along g_cls (float64, train-mode BatchNorm)."""
    torch.manual_seed(0)
    model = build_model(tiny_spec()).double()
    batch = {k: v.double() if v.is_floating_point() else v for k, v in tiny_batch(8).items()}
    method = get_method("lfm")
    method.weight = 0.7
    params = [p for p in model.parameters()]

    def grads(loss_of):
        model.train()
        out = model(batch)
        classification, alignment = method.objective(out, batch["label"])
        return torch.autograd.grad(loss_of(classification, alignment), params, allow_unused=True,
                                   materialize_grads=True)

    g_cls = [g.detach() for g in grads(lambda c, a: c)]
    eps = 1e-5
    state = copy.deepcopy(model.state_dict())

    def shifted(sign):
        with torch.no_grad():
            for p, g in zip(params, g_cls):
                p.add_(sign * eps * g)
        result = grads(lambda c, a: 0.3 * c + 0.7 * a)[0].detach()
        model.load_state_dict(state)
        return result

    expected = float(((shifted(1) - shifted(-1)) / (2 * eps)).mean())
    running = [b.clone() for b in model.buffers()]
    delta = method.hypergradient(model, batch)
    assert delta == pytest.approx(expected, rel=1e-4, abs=1e-9)
    for before, after in zip(running, model.buffers()):  # BatchNorm statistics untouched
        assert torch.equal(before, after)


def test_learned_weight_update_and_halving(tiny_model, monkeypatch):
    method = get_method("lfm", lr_alpha=0.01, halve_every=2)
    data = FakeData()
    method.setup(tiny_model, None, data)
    assert len(method._val_batch["label"]) == 8  # a fixed set of validation samples
    monkeypatch.setattr(method, "hypergradient", lambda model, batch: 5.0)
    expected, lr = 0.95, 0.01
    for epoch in range(6):
        if epoch > 0 and epoch % 2 == 0:
            lr /= 2
        expected = min(max(expected - lr * 5.0, 0.05), 0.95)
        method.on_epoch_start(epoch, tiny_model, data)
        assert method.weight == pytest.approx(expected)
    resumed = get_method("lfm", lr_alpha=0.01, halve_every=2)
    resumed.load_state_dict(method.state_dict())
    assert resumed.weight == pytest.approx(method.weight) and resumed.current_lr_alpha == pytest.approx(lr)


def test_heuristic_weight_and_loss(tiny_model):
    method = get_method("lfm", weighting="heuristic", alignment="js")
    method.setup(tiny_model)
    batch = tiny_batch(6)
    for epoch, expected in [(0, 0.95), (3, math.exp(-0.9)), (20, 0.05)]:
        method.on_epoch_start(epoch, tiny_model)
        assert method.weight == pytest.approx(expected)
        out = tiny_model(batch)
        labels = batch["label"]
        unimodal = sum(F.cross_entropy(z, labels) for z in out.unimodal_logits.values())
        classification = F.cross_entropy(out.logits, labels) + unimodal
        alignment = js_divergence(out.unimodal_logits["audio"], out.unimodal_logits["visual"])
        blended = (1 - expected) * classification + expected * alignment
        assert float(method.loss(out, batch)) == pytest.approx(float(blended), rel=1e-5)


def test_three_modalities_average_all_pairs():
    modalities = ("audio", "visual", "flow")
    torch.manual_seed(0)
    model = build_model(tiny_spec(modalities=modalities))
    out = model(tiny_batch(5, modalities=modalities))
    _, alignment = get_method("lfm").objective(out, torch.zeros(5, dtype=torch.long))
    f = out.features
    expected = (info_nce(f["audio"], f["visual"], 0.07) + info_nce(f["audio"], f["flow"], 0.07)
                + info_nce(f["visual"], f["flow"], 0.07)) / 3
    assert float(alignment) == pytest.approx(float(expected), rel=1e-6)


def test_pretrained_checkpoints_and_unimodal_pretraining(tmp_path):
    torch.manual_seed(0)
    audio_only = build_model(tiny_spec(modalities=("audio",)))
    save_model_checkpoint(tiny_spec(modalities=("audio",)), audio_only.state_dict(), tmp_path / "audio.ckpt")
    model = build_model(tiny_spec())
    visual_before = copy.deepcopy(model.encoders["visual"].state_dict())
    method = get_method("lfm", weighting="heuristic", pretrained=[str(tmp_path / "audio.ckpt")])
    method.setup(model, None, FakeData())
    for key, value in audio_only.encoders["audio"].state_dict().items():
        assert torch.equal(model.encoders["audio"].state_dict()[key], value)
    for key, value in visual_before.items():
        assert torch.equal(model.encoders["visual"].state_dict()[key], value)

    torch.manual_seed(0)
    model = build_model(tiny_spec())
    before = copy.deepcopy(model.state_dict())
    get_method("lfm", weighting="heuristic", pretrain_epochs=1).setup(model, None, FakeData())
    changed = {k.split(".")[1] for k, v in model.state_dict().items()
               if k.startswith("encoders.") and not torch.equal(v, before[k])}
    assert changed == {"audio", "visual"}
    assert all(p.grad is None for p in model.parameters())


def test_refusals():
    with pytest.raises(ValueError, match="method 'lfm' with unimodal_ce needs per-modality logits"):
        get_method("lfm").adapt_model_spec(tiny_spec("film"))
    get_method("lfm", unimodal_ce=False).adapt_model_spec(tiny_spec("film"))  # contrastive + fused CE: any head
    spec = tiny_spec()
    spec["encoders"]["visual"]["width"] = 8
    with pytest.raises(ValueError, match="features of equal size"):
        get_method("lfm").adapt_model_spec(spec)


SMALL = ["--epochs", "2", "--batch-size", "32", "--set", "data.options.train_size=160",
         "--set", "data.options.test_size=40", "--set", "trainer.progress_bar=false"]


@pytest.mark.parametrize("three", [False, True], ids=["two_modalities", "three_modalities"])
def test_cli_trains(tmp_path, three):
    extra = ["--set", "data.options.flow_strength=0.3"] if three else []
    out = tmp_path / "run"
    assert main(["train", "--method", "lfm", "--out", str(out), *SMALL, *extra]) == 0
    assert (out / "metrics.json").is_file()


def test_cli_refuses_gated_with_unimodal_losses(tmp_path, capsys):
    code = main(["train", "--method", "lfm", "--fusion", "gated", "--out", str(tmp_path / "r"), *SMALL])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "method 'lfm' with unimodal_ce needs" in err
