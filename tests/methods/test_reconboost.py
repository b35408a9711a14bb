"""ReconBoost: the stage schedule, the boosting loss, what each phase updates, the reconcilement term."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avb_testing import tiny_batch, tiny_spec
from avbalance.methods import get_method
from avbalance.methods.base import PlainStep
from avbalance.methods.reconboost import boosting_loss, reconboost_schedule
from avbalance.models import build_model

torch.set_num_threads(1)
AV, AVF = ("audio", "visual"), ("audio", "visual", "flow")


def recon_model(modalities=AV, **params):
    params = {"stage_epochs": 2, "correct_epochs": 1, "head_hidden": 8, "boost_rate": 0.7, **params}
    method = get_method("reconboost", **params)
    torch.manual_seed(0)
    model = build_model(method.adapt_model_spec(tiny_spec(modalities=modalities)))
    method.setup(model)
    return method, model


def test_schedule_alternates_modalities_and_phases():
    got = [reconboost_schedule(e, AV, 2, 1) for e in range(9)]
    assert [(p.stage, p.modality, p.phase) for p in got] == [
        (0, "audio", "modality"),
        (0, "audio", "modality"),
        (0, "audio", "ensemble"),
        (1, "visual", "modality"),
        (1, "visual", "modality"),
        (1, "visual", "ensemble"),
        (2, "audio", "modality"),
        (2, "audio", "modality"),
        (2, "audio", "ensemble"),
    ]
    assert [p.trained for p in got[::3]] == [(), ("audio",), ("audio", "visual")]
    three = [reconboost_schedule(e, AVF, 1, 0) for e in range(4)]
    assert [p.modality for p in three] == ["audio", "visual", "flow", "audio"]
    assert all(p.phase == "modality" for p in three) and three[2].trained == ("audio", "visual")


def test_boosting_loss_matches_the_official_one_hot_form():
    generator = torch.Generator().manual_seed(3)
    logits, ensemble = torch.randn(7, 5, generator=generator), torch.randn(7, 5, generator=generator) * 2
    labels = torch.randint(0, 5, (7,), generator=generator)
    q = F.softmax(ensemble, 1).gather(1, labels.view(-1, 1)).squeeze(1)
    ours = boosting_loss(logits, q, labels, 5.0, 1.0)
    z, e = logits.double().numpy(), ensemble.double().numpy()
    log_p = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    soft_e = np.exp(e) / np.exp(e).sum(1, keepdims=True)
    target = np.eye(5)[labels.numpy()]
    official = (-5.0 * (target * log_p).mean(-1) + 1.0 * (target * soft_e * log_p).mean(-1)).mean()
    assert ours.item() == pytest.approx(official, abs=1e-6)


def _snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module):
    return [not torch.equal(a, b) for a, b in zip(before, module.parameters())]


def test_modality_phase_updates_only_its_encoder_and_the_head_with_the_boosting_loss():
    method, model = recon_model(reconcile="none")
    batch = tiny_batch(batch_size=8)
    with torch.no_grad():  # stage 1 updates visual against beta * f_audio
        f_audio = model.head.classify(model.encoders["audio"](batch["audio"]))
        q = F.softmax(0.7 * f_audio, 1).gather(1, batch["label"].view(-1, 1)).squeeze(1)
    reference = copy.deepcopy(model)
    head_before = {n: p.detach().clone() for n, p in model.head.named_parameters()}
    audio_before = _snapshot(model.encoders["audio"])
    loss = method.training_step(model, batch, PlainStep(torch.optim.SGD(model.parameters(), lr=0.1), epoch=3))
    expected = boosting_loss(
        reference.head.classify(reference.encoders["visual"](batch["visual"])), q, batch["label"], 5.0, 1.0
    )
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert not any(_changed(audio_before, model.encoders["audio"]))
    assert model.head.boost_rate.item() == pytest.approx(0.7)
    assert any(_changed(_snapshot(reference.encoders["visual"]), model.encoders["visual"]))
    for name, value in model.head.named_parameters():  # fc_hidden and fc_out learn, beta does not
        assert torch.equal(value, head_before[name]) == (name == "boost_rate"), name


def test_first_stage_has_no_ensemble_yet():
    method, model = recon_model(reconcile="none")
    batch = tiny_batch()
    with torch.no_grad():
        ce = F.cross_entropy(model.head.classify(model.encoders["audio"](batch["audio"])), batch["label"])
    loss = method.training_step(model, batch, PlainStep(torch.optim.SGD(model.parameters(), lr=0.1), epoch=0))
    assert loss.item() == pytest.approx((5.0 - 1.0) / 5 * ce.item(), rel=1e-5)  # q = 1, C = 5


def test_ensemble_phase_trains_everything_trained_so_far_and_beta():
    method, model = recon_model()
    batch = tiny_batch()
    with torch.no_grad():
        logits = 0.7 * (
            model.head.classify(model.encoders["audio"](batch["audio"]))
            + model.head.classify(model.encoders["visual"](batch["visual"]))
        )
        assert torch.allclose(model(batch).logits, logits, atol=1e-6)  # the head's fused output
    audio, visual = _snapshot(model.encoders["audio"]), _snapshot(model.encoders["visual"])
    loss = method.training_step(model, batch, PlainStep(torch.optim.SGD(model.parameters(), lr=0.1), epoch=5))
    assert loss.item() == pytest.approx(F.cross_entropy(logits, batch["label"]).item(), abs=1e-6)
    assert any(_changed(audio, model.encoders["audio"])) and any(_changed(visual, model.encoders["visual"]))
    assert model.head.boost_rate.item() != pytest.approx(0.7)


def _visual_grads(reconcile):
    method, model = recon_model(reconcile=reconcile)
    grads = {}

    class Capture(PlainStep):
        def step(self, before_step=None):
            grads.update({n: p.grad.clone() for n, p in model.encoders["visual"].named_parameters()})
            super().step(before_step)

    loss = method.training_step(model, tiny_batch(), Capture(torch.optim.SGD(model.parameters(), lr=0.1), epoch=3))
    return grads, loss, method.logs()


def test_reconcile_term_gradient_versus_official_detached():
    plain, plain_loss, _ = _visual_grads("none")
    detached, detached_loss, logs = _visual_grads("detached")
    acting, acting_loss, _ = _visual_grads("gradient")
    assert all(torch.equal(plain[n], detached[n]) for n in plain)  # official: no gradient from the term
    assert detached_loss.item() == pytest.approx(plain_loss.item() + 0.5 * logs["loss/reconcile"].item(), abs=1e-6)
    assert acting_loss.item() == pytest.approx(detached_loss.item(), abs=1e-6)
    assert any(not torch.allclose(plain[n], acting[n]) for n in plain)


@pytest.mark.parametrize("reset", [True, False])
def test_optimizer_state_is_cleared_when_a_phase_starts(reset):
    method, model = recon_model(modalities=AVF, reset_optimizer=reset)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    flow_weight = next(model.encoders["flow"].parameters())
    optimizer.state[flow_weight] = {"momentum_buffer": torch.ones_like(flow_weight)}
    batch = tiny_batch(modalities=AVF)
    method.training_step(model, batch, PlainStep(optimizer, epoch=0))  # stage 0: audio
    assert (flow_weight in optimizer.state) is not reset
    optimizer.state[flow_weight] = {"momentum_buffer": torch.ones_like(flow_weight)}
    method.training_step(model, batch, PlainStep(optimizer, epoch=1))  # same phase: kept
    assert flow_weight in optimizer.state


def test_refuses_other_heads():
    with pytest.raises(ValueError, match="use fusion concat or shared"):
        get_method("reconboost").adapt_model_spec(tiny_spec("sum"))
