"""modulate_via: OGM, OGM-GE and AGM coefficients on the gradient (grad) or on the parameter update (lr)."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from avb_testing import tiny_batch, tiny_spec
from avbalance.errors import ConfigError
from avbalance.methods import get_method
from avbalance.methods.agm import clip_if_head_gradient_large
from avbalance.methods.ogm import ogm_coefficients, select_tensors
from avbalance.methods.update_scaling import is_adaptive, resolve_modulate_via
from avbalance.models import build_model


def twin_models(count=2, seed=0):
    torch.manual_seed(seed)
    model = build_model(tiny_spec())
    copies = [model]
    for _ in range(count - 1):
        twin = build_model(tiny_spec())
        twin.load_state_dict(model.state_dict())
        copies.append(twin)
    return copies


def fixed_gradients(model, seed=3):
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator) * 0.01


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def deltas(model, before):
    return {name: p.detach() - before[name] for name, p in model.named_parameters()}


def ogm_step(method, model, optimizer, batch):
    """One OGM step on fixed gradients (identical for every model built by twin_models)."""
    output = model(batch)
    fixed_gradients(model)
    method.after_backward(model, output, batch)
    optimizer.step()
    return output


def plain_step(model, batch, optimizer):
    """The parameter change of one unmodulated ``optimizer`` step on fixed gradients."""
    before = snapshot(model)
    model(batch)
    fixed_gradients(model)
    optimizer.step()
    return deltas(model, before)


def method_step(method, model, optimizer, batch):
    """One training step: the method's loss, backward, its gradient hook, the optimizer step."""
    output = model(batch)
    loss = method.loss(output, batch)
    optimizer.zero_grad()
    loss.backward()
    method.after_backward(model, output, batch)
    optimizer.step()


def selected_names(model, modality, selection="conv"):
    chosen = {id(p) for p in select_tensors(model.encoders[modality], selection)}
    return {name for name, p in model.named_parameters() if id(p) in chosen}


def adamw_reference(plain, batch, alpha=0.6):
    """OGM's coefficients for ``batch`` and the change of one plain AdamW step (lr 1e-2) of ``plain``."""
    k = ogm_coefficients(plain(batch).unimodal_logits, batch["label"], alpha)
    return k, plain_step(plain, batch, torch.optim.AdamW(plain.parameters(), lr=1e-2))


def assert_scaled_updates(got, reference, k, model, **tolerance):
    """Each modality's selected tensors moved by its coefficient times their plain update."""
    for modality, coefficient in k.items():
        for name in selected_names(model, modality):
            torch.testing.assert_close(got[name], float(coefficient) * reference[name], **tolerance)


def test_lr_scales_adamw_update_by_coefficient_while_grad_is_cancelled():
    plain, via_lr, via_grad = twin_models(3)
    batch = tiny_batch(seed=1)
    alpha = 0.6
    k = ogm_coefficients(plain(batch).unimodal_logits, batch["label"], alpha)
    assert min(float(v) for v in k.values()) < 0.8  # a modality is slowed noticeably

    results = {}
    for name, model in (("plain", plain), ("lr", via_lr), ("grad", via_grad)):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
        if name == "plain":
            results[name] = plain_step(model, batch, optimizer)
            continue
        method = get_method("ogm", alpha=alpha, modulate_via=name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # grad under AdamW warns that it cancels
            method.setup(model, optimizer)
        before = snapshot(model)
        ogm_step(method, model, optimizer, batch)
        results[name] = deltas(model, before)

    for modality, coefficient in k.items():
        for name in selected_names(plain, modality):
            expected = float(coefficient) * results["plain"][name]
            torch.testing.assert_close(results["lr"][name], expected, rtol=1e-5, atol=1e-8)
            # Adam divides the scaled gradient by its own scaled magnitude: the step barely moves
            change = (results["grad"][name] - results["plain"][name]).norm() / results["plain"][name].norm()
            assert float(change) < 0.01, name
    slowed = [m for m, c in k.items() if float(c) < 1]
    name = sorted(selected_names(plain, slowed[0]))[0]
    assert not torch.allclose(results["lr"][name], results["plain"][name])
    for name in dict(plain.named_parameters()):
        if not any(name in selected_names(plain, m) for m in k):
            assert torch.equal(results["lr"][name], results["plain"][name]), name


def test_lr_keeps_update_bit_exact_when_coefficient_is_one():
    plain, via_lr = twin_models(2)
    batch = tiny_batch(seed=1)
    k = ogm_coefficients(plain(batch).unimodal_logits, batch["label"], 0.6)
    kept = [m for m, c in k.items() if float(c) == 1.0]
    assert kept
    reference = plain_step(plain, batch, torch.optim.Adam(plain.parameters(), lr=1e-2))
    method = get_method("ogm", alpha=0.6, modulate_via="lr")
    optimizer = torch.optim.Adam(via_lr.parameters(), lr=1e-2)
    method.setup(via_lr, optimizer)
    ogm_step(method, via_lr, optimizer, batch)
    for name in selected_names(plain, kept[0]):
        assert torch.equal(dict(via_lr.named_parameters())[name], dict(plain.named_parameters())[name])
        assert reference[name].any()  # the step moved the parameter


def sgd_run(modulate_via, steps=3):
    (model,) = twin_models(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    method = get_method("ogm_ge", alpha=0.5, seed=4, modulate_via=modulate_via)
    method.setup(model, optimizer)
    for step in range(steps):
        method_step(method, model, optimizer, tiny_batch(seed=step))
    return model, method


def test_sgd_auto_is_grad_bit_for_bit():
    auto_model, auto_method = sgd_run("auto")
    grad_model, _ = sgd_run("grad")
    assert not auto_method.update_scaler.attached
    for (name, a), (_, b) in zip(auto_model.named_parameters(), grad_model.named_parameters()):
        assert torch.equal(a, b), name


def test_auto_resolution_by_optimizer():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert resolve_modulate_via("auto", torch.optim.SGD(params, lr=0.1)) == "grad"
    assert resolve_modulate_via("auto", None) == "grad"
    for optimizer in (torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.Adagrad):
        assert resolve_modulate_via("auto", optimizer(params)) == "lr", optimizer
    assert resolve_modulate_via("grad", torch.optim.Adam(params)) == "grad"

    class MyAdamVariant(torch.optim.SGD):
        pass

    assert is_adaptive(MyAdamVariant(params, lr=0.1))


@pytest.mark.parametrize(("method_name", "adaptive"), [("ogm", torch.optim.AdamW), ("ogm_ge", torch.optim.Adam)])
def test_auto_says_once_what_it_chose_and_explicit_grad_keeps_the_adam_warning(tiny_model, method_name, adaptive):
    method = get_method(method_name)
    with pytest.warns(UserWarning, match=f"modulate_via='auto' scales .* under {adaptive.__name__},"):
        method.setup(tiny_model, adaptive(tiny_model.parameters()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method.setup(tiny_model, adaptive(tiny_model.parameters()))  # only once
        get_method("agm", modulate_via="lr").setup(tiny_model, torch.optim.Adam(tiny_model.parameters()))
        get_method("ogm").setup(tiny_model, torch.optim.SGD(tiny_model.parameters(), lr=0.1))
    with pytest.warns(UserWarning, match="cancels"):
        get_method(method_name, modulate_via="grad").setup(tiny_model, torch.optim.Adam(tiny_model.parameters()))


def test_lr_needs_the_optimizer(tiny_model):
    with pytest.raises(ConfigError, match="modulate_via='lr' .*setup\\(model, optimizer\\)"):
        get_method("ogm_ge", modulate_via="lr").setup(tiny_model)
    method = get_method("ogm", modulate_via="lr")
    batch = tiny_batch()
    with pytest.raises(RuntimeError, match="call setup"):
        method.after_backward(tiny_model, tiny_model(batch), batch)
    with pytest.raises(ConfigError, match="modulate_via"):
        get_method("ogm", modulate_via="update")


def test_setup_twice_does_not_stack_hooks_and_a_new_optimizer_releases_the_old():
    plain, twice, moved = twin_models(3)
    batch = tiny_batch(seed=1)
    k, reference = adamw_reference(plain, batch)

    method = get_method("ogm", alpha=0.6, modulate_via="lr")
    optimizer = torch.optim.AdamW(twice.parameters(), lr=1e-2)
    method.setup(twice, optimizer)
    method.setup(twice, optimizer)
    before = snapshot(twice)
    ogm_step(method, twice, optimizer, batch)
    assert_scaled_updates(deltas(twice, before), reference, k, plain)

    old = torch.optim.AdamW(moved.parameters(), lr=1e-2)
    method = get_method("ogm", alpha=0.6, modulate_via="lr")
    method.setup(moved, old)
    method.setup(moved, torch.optim.AdamW(moved.parameters(), lr=1e-2))
    before = snapshot(moved)
    ogm_step(method, moved, old, batch)
    for name, delta in deltas(moved, before).items():
        torch.testing.assert_close(delta, reference[name], rtol=0, atol=0)


def test_lr_under_a_closure_step_as_lightning_runs_it():
    """Lightning's automatic optimisation runs forward, backward and after_backward inside
    ``optimizer.step(closure)``: after the pre-hook. The update is still scaled by the step's k."""
    plain, closure_model = twin_models(2)
    batch = tiny_batch(seed=1)
    k, reference = adamw_reference(plain, batch)

    method = get_method("ogm", alpha=0.6, modulate_via="lr")
    optimizer = torch.optim.AdamW(closure_model.parameters(), lr=1e-2)
    method.setup(closure_model, optimizer)
    before = snapshot(closure_model)

    def closure():
        output = closure_model(batch)
        fixed_gradients(closure_model)
        method.after_backward(closure_model, output, batch)
        return torch.zeros(())

    optimizer.step(closure)
    assert_scaled_updates(deltas(closure_model, before), reference, k, plain, rtol=1e-5, atol=1e-8)


def test_lr_outside_the_window_takes_no_snapshot_and_leaves_the_update():
    plain, late = twin_models(2)
    batch = tiny_batch(seed=1)
    reference = plain_step(plain, batch, torch.optim.AdamW(plain.parameters(), lr=1e-2))
    method = get_method("ogm", alpha=0.6, modulation_starts=2, modulate_via="lr")
    optimizer = torch.optim.AdamW(late.parameters(), lr=1e-2)
    method.setup(late, optimizer)
    method.on_epoch_start(0, late)
    before = snapshot(late)
    ogm_step(method, late, optimizer, batch)
    for name, delta in deltas(late, before).items():
        assert torch.equal(delta, reference[name]), name


def adamw_ogm_ge_steps(method, model, optimizer, seeds):
    for seed in seeds:
        method_step(method, model, optimizer, tiny_batch(seed=seed))


def test_lr_state_dict_round_trip_continues_identically():
    straight, resumed = twin_models(2)
    method = get_method("ogm_ge", alpha=0.5, seed=2, modulate_via="lr")
    optimizer = torch.optim.AdamW(straight.parameters(), lr=1e-2)
    method.setup(straight, optimizer)
    adamw_ogm_ge_steps(method, straight, optimizer, [0, 1])
    saved = copy.deepcopy(
        {"model": straight.state_dict(), "optim": optimizer.state_dict(), "method": method.state_dict()}
    )
    adamw_ogm_ge_steps(method, straight, optimizer, [2, 3])

    resumed.load_state_dict(saved["model"])
    method_b = get_method("ogm_ge", alpha=0.5, seed=2, modulate_via="lr")
    optimizer_b = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    optimizer_b.load_state_dict(saved["optim"])
    method_b.load_state_dict(saved["method"])
    method_b.setup(resumed, optimizer_b)
    adamw_ogm_ge_steps(method_b, resumed, optimizer_b, [2, 3])
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), name


def test_ogm_ge_lr_keeps_the_noise_on_the_gradient():
    (model,) = twin_models(1)
    batch = tiny_batch(seed=1)
    method = get_method("ogm_ge", alpha=0.6, seed=1, modulate_via="lr")
    method.setup(model, torch.optim.AdamW(model.parameters()))
    output = model(batch)
    fixed_gradients(model)
    clean = {name: p.grad.clone() for name, p in model.named_parameters()}
    method.after_backward(model, output, batch)
    for modality in model.modalities:
        for name in selected_names(model, modality):
            noise = dict(model.named_parameters())[name].grad - clean[name]  # k not applied to the gradient
            assert 0.5 < float(noise.std() / clean[name].std()) < 1.5, name


@pytest.mark.parametrize("apply", ["shares", "encoders"])
def test_agm_lr_scales_encoder_updates_by_its_coefficients(apply):
    plain, via_lr = twin_models(2)
    batch = tiny_batch(seed=2)
    method = get_method("agm", apply=apply, alpha=50.0, modulate_via="lr", clip_grad=1.0)
    optimizer = torch.optim.AdamW(via_lr.parameters(), lr=1e-2)
    method.setup(via_lr, optimizer)
    before = snapshot(via_lr)
    output = via_lr(batch)
    loss = method.loss(output, batch)
    torch.testing.assert_close(loss, F.cross_entropy(output.logits, batch["label"]))  # shares at k = 1
    optimizer.zero_grad()
    loss.backward()
    method.after_backward(via_lr, output, batch)
    optimizer.step()
    got = deltas(via_lr, before)
    k = {m: float(method.logs()[f"coeff/{m}"]) for m in via_lr.modalities}
    assert any(abs(v - 1) > 0.05 for v in k.values())

    reference_optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-2)
    reference_before = snapshot(plain)
    reference_output = plain(batch)
    F.cross_entropy(reference_output.logits, batch["label"]).backward()
    clip_if_head_gradient_large(plain, 1.0)
    reference_optimizer.step()
    reference = deltas(plain, reference_before)
    for modality, coefficient in k.items():
        for name in selected_names(plain, modality, method.modulate):
            torch.testing.assert_close(got[name], coefficient * reference[name], rtol=1e-4, atol=1e-7)
    for name in dict(plain.named_parameters()):
        if name.startswith("head."):
            torch.testing.assert_close(got[name], reference[name], rtol=1e-4, atol=1e-7)


def engine_weights(tmp_path, optimizer, modulate_via=None):
    """Final weights of a one-epoch engine run: OGM with ``modulate_via``, or the baseline (None)."""
    from avbalance.engine import load_config, train
    from avbalance.models.checkpoint import read_checkpoint

    out = tmp_path / f"{optimizer}_{modulate_via}"
    method = ["method.name=baseline"]
    if modulate_via is not None:
        method = ["method.name=ogm", "method.params.alpha=0.8", f"method.params.modulate_via={modulate_via}"]
    overrides = method + [
        f"optim.name={optimizer}",
        "optim.lr=0.001",
        "trainer.epochs=1",
        "data.batch_size=32",
        "data.options.train_size=96",
        "data.options.test_size=32",
        "trainer.progress_bar=false",
        f"out={out}",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(load_config(overrides=overrides))
    return read_checkpoint(out / "checkpoints" / "last.ckpt")["state_dict"]


def test_lightning_engine_scales_updates_under_adamw_and_keeps_sgd_unchanged(tmp_path):
    plain = engine_weights(tmp_path, "adamw")
    scaled, cancelled = engine_weights(tmp_path, "adamw", "lr"), engine_weights(tmp_path, "adamw", "grad")
    kernels = [k for k, v in plain.items() if k.startswith("model.encoders.") and v.dim() == 4]

    def distance(weights):
        return max(float((weights[k] - plain[k]).abs().max()) for k in kernels)

    # AdamW cancels the gradient scale (grad stays near the unmodulated run); the update scale is not cancelled
    assert distance(scaled) > 5 * distance(cancelled)
    auto, grad = engine_weights(tmp_path, "sgd", "auto"), engine_weights(tmp_path, "sgd", "grad")
    assert auto.keys() == grad.keys() and all(torch.equal(auto[k], grad[k]) for k in auto)
