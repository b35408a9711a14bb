"""LFM against independent computations of the official release (objective, fitted schedule, learned
weight update), the hypergradient against finite differences, the other schedules, pre-trained parts."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from avb_testing import tiny_batch, tiny_spec
from avbalance.errors import ConfigError
from avbalance.methods import get_method
from avbalance.methods.lfm import info_nce, prediction_divergence
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


# The official release (njustkmg/NeurIPS24-LFM), written as its CREMA-D scripts do, for the tests.
OFFICIAL_FITTED_CLS = [2.04623704e-01, 3.35472727e-03, 1.22989557e-04, -2.92947416e-06, 2.23835486e-08, -5.39717505e-11]


def official_alignment(p, q):
    """``Alignment`` of Crema_epoch.py: ``kl_div(p.log(), m)`` and ``kl_div(q.log(), m)``, batch mean."""
    p, q = F.softmax(p, dim=-1), F.softmax(q, dim=-1)
    m = 0.5 * p + 0.5 * q
    return 0.5 * (F.kl_div(p.log(), m, reduction="batchmean") + F.kl_div(q.log(), m, reduction="batchmean"))


def official_fitted(epoch):
    """``getAlpha_Learnable_Fitted``: ``[classification weight, alignment weight]``."""
    cls = sum(c * epoch**i for i, c in enumerate(OFFICIAL_FITTED_CLS))
    return [cls, 1.0 - cls]


def official_losses(model, batch):
    """``(loss_cls, loss_alignment)`` of the official step: CE of the averaged logits, alignment of
    the two modalities' predictions."""
    out = model(batch)
    o_a, o_v = out.unimodal_logits["audio"], out.unimodal_logits["visual"]
    return F.cross_entropy(0.5 * o_v + 0.5 * o_a, batch["label"]), official_alignment(o_a, o_v)


def official_learnable_update(epoch, batch, model, alpha, lr_alpha):
    """``getAlpha_Learnable`` of Crema_epoch_learnable.py on the half batch it is given: the mean over
    the first parameter tensor of the Hessian-vector product, then the clipped step on ``alpha[1]``."""
    params = list(model.parameters())
    loss_cls, loss_alignment = official_losses(model, batch)
    total = alpha[0] * loss_cls + alpha[1] * loss_alignment
    theta_grads = torch.autograd.grad(total, params, create_graph=True)
    cls_grads = torch.autograd.grad(loss_cls, params, retain_graph=True, create_graph=True)
    hessian_vector_prod = torch.autograd.grad(theta_grads, params, grad_outputs=cls_grads, retain_graph=True)
    alpha_grad = hessian_vector_prod[0].mean().item()
    if epoch % 20 == 0 and epoch != 0:
        lr_alpha = lr_alpha / 2
    alpha[1] = max(0.05, min(0.95, alpha[1] - lr_alpha * alpha_grad))
    alpha[0] = 1.0 - alpha[1]
    return alpha, lr_alpha


def double(batch):
    return {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}


@pytest.mark.parametrize("seed", range(4))
def test_prediction_divergence_is_the_official_alignment(seed):
    generator = torch.Generator().manual_seed(seed)
    first, second = torch.randn(7, 5, generator=generator) * 3, torch.randn(7, 5, generator=generator)
    ours = prediction_divergence(first.double(), second.double())
    assert float(ours) == pytest.approx(float(official_alignment(first.double(), second.double())), abs=1e-10)
    # not the Jensen-Shannon divergence 1/2 [KL(p || m) + KL(q || m)] (argument order of kl_div)
    p, q = F.softmax(first.double(), 1), F.softmax(second.double(), 1)
    m = (p + q) / 2
    js = 0.5 * ((p * (p / m).log()).sum(1) + (q * (q / m).log()).sum(1)).mean()
    assert abs(float(ours) - float(js)) > 1e-4


@pytest.mark.parametrize("epoch", [0, 7, 50, 150])
def test_default_step_is_the_official_objective(epoch):
    """Default: fitted weights, ``2 (c CE(mean logits) + a Alignment)``; loss and gradients to 1e-6."""
    torch.manual_seed(epoch)
    model = build_model(tiny_spec()).double()
    batch = double(tiny_batch(9, seed=epoch))
    method = get_method("lfm")
    method.setup(model)
    method.on_epoch_start(epoch, model)
    cls_k = official_fitted(epoch)
    loss_cls, loss_alignment = official_losses(model, batch)
    expected = 2 * (cls_k[0] * loss_cls + cls_k[1] * loss_alignment)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()), allow_unused=True, materialize_grads=True)
    ours = method.loss(model(batch), batch)
    grads = torch.autograd.grad(ours, list(model.parameters()), allow_unused=True, materialize_grads=True)
    assert method.weight == pytest.approx(cls_k[1], abs=1e-12)
    assert float(ours.detach()) == pytest.approx(float(expected.detach()), abs=1e-6)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_fitted_schedule_is_held_after_the_fitted_epochs():
    method = get_method("lfm")
    for epoch in (0, 1, 100, 199):
        method.on_epoch_start(epoch)
        assert method.weight == pytest.approx(official_fitted(epoch)[1], abs=1e-12)
    method.on_epoch_start(500)
    assert method.weight == pytest.approx(official_fitted(199)[1], abs=1e-12)


def test_learned_weight_follows_the_official_update():
    """On identical inputs the learned weight moves as the official ``getAlpha_Learnable``: epoch 0
    in train mode (fresh model), later epochs in eval mode (after the evaluation pass), the step
    size halved at epoch 20. The model's BatchNorm statistics are left untouched."""
    torch.manual_seed(0)
    model = build_model(tiny_spec()).double()
    data = FakeData()
    data.val_batches = lambda limit=None: iter([double(tiny_batch(16, seed=99))])
    method = get_method("lfm", weighting="learned", init_weight=0.5, lr_alpha=0.5)
    method.setup(model, None, data)
    half = {k: v[:8] for k, v in double(tiny_batch(16, seed=99)).items()}
    alpha, lr_alpha = [0.5, 0.5], 0.5
    buffers = [b.clone() for b in model.buffers()]
    for epoch in (0, 1, 20, 21):
        official_model = copy.deepcopy(model)
        official_model.train(epoch == 0)
        alpha, lr_alpha = official_learnable_update(epoch, half, official_model, alpha, lr_alpha)
        method.on_epoch_start(epoch, model, data)
        assert method.weight == pytest.approx(alpha[1], abs=1e-6)
        assert method.current_lr_alpha == pytest.approx(lr_alpha)
    assert 0.05 < method.weight < 0.95 and abs(method.weight - 0.5) > 1e-4  # the weight has moved
    assert all(torch.equal(b, c) for b, c in zip(buffers, model.buffers()))


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
        return torch.autograd.grad(
            loss_of(classification, alignment), params, allow_unused=True, materialize_grads=True
        )

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
    method = get_method("lfm", weighting="learned", lr_alpha=0.01, halve_every=2)
    data = FakeData()
    method.setup(tiny_model, None, data)
    assert len(method._val_batch["label"]) == 8  # a fixed set of validation samples
    monkeypatch.setattr(method, "hypergradient", lambda model, batch, train_mode: 5.0)
    expected, lr = 0.95, 0.01
    for epoch in range(6):
        if epoch > 0 and epoch % 2 == 0:
            lr /= 2
        expected = min(max(expected - lr * 5.0, 0.05), 0.95)
        method.on_epoch_start(epoch, tiny_model, data)
        assert method.weight == pytest.approx(expected)
    resumed = get_method("lfm", weighting="learned", lr_alpha=0.01, halve_every=2)
    resumed.load_state_dict(method.state_dict())
    assert resumed.weight == pytest.approx(method.weight) and resumed.current_lr_alpha == pytest.approx(lr)


def test_heuristic_weight_and_loss(tiny_model):
    method = get_method("lfm", weighting="heuristic", classification="fused", unimodal_ce=True, scale=1.0)
    method.setup(tiny_model)
    batch = tiny_batch(6)
    for epoch, expected in [(0, 0.95), (3, math.exp(-0.9)), (20, 0.05)]:
        method.on_epoch_start(epoch, tiny_model)
        assert method.weight == pytest.approx(expected)
        out = tiny_model(batch)
        labels = batch["label"]
        unimodal = sum(F.cross_entropy(z, labels) for z in out.unimodal_logits.values())
        classification = F.cross_entropy(out.logits, labels) + unimodal
        alignment = official_alignment(out.unimodal_logits["audio"], out.unimodal_logits["visual"])
        blended = (1 - expected) * classification + expected * alignment
        assert float(method.loss(out, batch)) == pytest.approx(float(blended), rel=1e-5)


def test_three_modalities_average_all_pairs():
    modalities = ("audio", "visual", "flow")
    torch.manual_seed(0)
    model = build_model(tiny_spec(modalities=modalities))
    out = model(tiny_batch(5, modalities=modalities))
    labels = torch.zeros(5, dtype=torch.long)
    _, alignment = get_method("lfm", alignment="contrastive").objective(out, labels)
    f = out.features
    expected = (
        info_nce(f["audio"], f["visual"], 0.07)
        + info_nce(f["audio"], f["flow"], 0.07)
        + info_nce(f["visual"], f["flow"], 0.07)
    ) / 3
    assert float(alignment) == pytest.approx(float(expected), rel=1e-6)
    classification, alignment = get_method("lfm").objective(out, labels)
    z = out.unimodal_logits
    expected = (
        official_alignment(z["audio"], z["visual"])
        + official_alignment(z["audio"], z["flow"])
        + official_alignment(z["visual"], z["flow"])
    ) / 3
    assert float(alignment) == pytest.approx(float(expected), abs=1e-6)
    mean_logits = (z["audio"] + z["visual"] + z["flow"]) / 3
    assert float(classification) == pytest.approx(float(F.cross_entropy(mean_logits, labels)), abs=1e-6)


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
    changed = {
        k.split(".")[1]
        for k, v in model.state_dict().items()
        if k.startswith("encoders.") and not torch.equal(v, before[k])
    }
    assert changed == {"audio", "visual"}
    assert all(p.grad is None for p in model.parameters())


def test_refusals():
    with pytest.raises(ValueError, match="method 'lfm' with classification='mean', alignment='divergence' needs"):
        get_method("lfm").adapt_model_spec(tiny_spec("film"))
    with pytest.raises(ValueError, match="method 'lfm' with unimodal_ce needs per-modality logits"):
        get_method("lfm", classification="fused", alignment="contrastive", unimodal_ce=True).adapt_model_spec(
            tiny_spec("film")
        )
    # contrastive + fused CE: any head
    get_method("lfm", classification="fused", alignment="contrastive").adapt_model_spec(tiny_spec("film"))
    spec = tiny_spec()
    spec["encoders"]["visual"]["width"] = 8
    with pytest.raises(ValueError, match="features of equal size"):
        get_method("lfm", alignment="contrastive").adapt_model_spec(spec)
    get_method("lfm").adapt_model_spec(spec)  # the prediction alignment compares logits
    with pytest.raises(ConfigError, match="method 'lfm': scale must be > 0, got 0.0"):
        get_method("lfm", scale=0)
