"""OPM against independent computations: drop probabilities, drop-and-rescale, the loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from avb_testing import tiny_batch, tiny_spec, train_on_synthetic
from avbalance.methods import get_method
from avbalance.methods.opm import drop_probabilities, modulated_features
from avbalance.models import build_model


def official_q(performance_1, performance_2, q_base, lam):
    """``calcu_q`` of the official TPAMI code."""
    ratio_1 = math.tanh(max(performance_1 / performance_2 - 1, 0))
    ratio_2 = math.tanh(max(performance_2 / performance_1 - 1, 0))
    q1 = q_base * (1 + lam * ratio_1) if ratio_1 > 0 else 0.0
    q2 = q_base * (1 + lam * ratio_2) if ratio_2 > 0 else 0.0
    return [min(max(q1, 0.0), 1.0), min(max(q2, 0.0), 1.0)]


@pytest.mark.parametrize("s1, s2, q_base, lam", [(9.0, 3.0, 0.5, 0.5), (2.0, 7.0, 0.4, 2.0), (4.0, 4.0, 0.5, 0.5),
                                                 (30.0, 1.0, 0.8, 1.0)])
def test_drop_probabilities_match_the_official_rule(s1, s2, q_base, lam):
    _, q = drop_probabilities(torch.tensor([s1, s2]), q_base, lam)
    torch.testing.assert_close(q, torch.tensor(official_q(s1, s2, q_base, lam)))


def test_three_modalities_compare_with_the_mean_of_the_others():
    rho, q = drop_probabilities(torch.tensor([6.0, 2.0, 4.0]), 0.5, 0.5)
    torch.testing.assert_close(rho, torch.tensor([math.tanh(1.0), 0.0, 0.0]))
    torch.testing.assert_close(q, torch.tensor([0.5 * (1 + 0.5 * math.tanh(1.0)), 0.0, 0.0]))


def test_drop_and_rescale_by_one_dimension_weighted_factor():
    features = {"audio": torch.randn(6, 4), "visual": torch.randn(6, 12)}
    q = torch.tensor([0.6, 0.0])
    uniform = torch.rand(6, 2)
    out, keep, theta = modulated_features(features, q, uniform)
    expected_theta = (4 * 0.6 + 12 * 0.0) / 16
    assert theta.item() == pytest.approx(expected_theta)
    for i in range(6):
        kept_audio = uniform[i, 0].item() < 0.4
        assert keep[i, 0].item() == kept_audio and keep[i, 1].item()
        torch.testing.assert_close(out["audio"][i], features["audio"][i] * kept_audio / (1 - expected_theta))
        torch.testing.assert_close(out["visual"][i], features["visual"][i] / (1 - expected_theta))


def _setup(modalities=("audio", "visual"), **params):
    torch.manual_seed(0)
    model = build_model(tiny_spec(modalities=modalities))
    method = get_method("opm", modulation_starts=0, **params)
    method.setup(model)
    return model, method


def test_loss_is_cross_entropy_of_the_modulated_head_over_kept_samples():
    model, method = _setup(p_exe=1.0, seed=7)
    batch = tiny_batch(batch_size=16, seed=2)
    output = model(batch)
    loss = method.loss(output, batch)

    generator = torch.Generator().manual_seed(7)  # the method's draws, in its order
    execute = torch.rand(1, generator=generator).item() < 1.0
    uniform = torch.rand(16, 2, generator=generator)
    scores = [F.softmax(output.unimodal_logits[m], 1)[range(16), batch["label"]].sum().item() for m in ("audio", "visual")]
    q = official_q(*scores, 0.5, 0.5)
    dims = [model.head.dims["audio"], model.head.dims["visual"]]
    theta = (dims[0] * q[0] + dims[1] * q[1]) / sum(dims)
    keep = uniform < torch.tensor([1 - q[0], 1 - q[1]])
    features = {m: output.features[m] * keep[:, i:i + 1] / (1 - theta) for i, m in enumerate(("audio", "visual"))}
    rows = keep.any(1)  # the official code removes samples that lost every modality
    logits = model.head(features).logits
    expected = F.cross_entropy(logits[rows], batch["label"][rows])
    assert execute and max(q) > 0 and not keep.all()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert model.encoders["audio"].conv1.weight.grad is not None


def test_without_execution_or_before_the_window_plain_cross_entropy():
    model, method = _setup(p_exe=0.0)
    batch = tiny_batch(seed=3)
    output = model(batch)
    plain = F.cross_entropy(output.logits, batch["label"])
    torch.testing.assert_close(method.loss(output, batch), plain)
    late = get_method("opm")  # official warm-up: no dropping in epochs 0-5
    late.setup(model)
    for epoch, inside in ((5, False), (6, True)):
        late.on_epoch_start(epoch)
        assert late.in_window() == inside
    late.on_epoch_start(5)
    torch.testing.assert_close(late.loss(output, batch), plain)


def test_generator_state_resumes_the_same_draws():
    model, method = _setup(p_exe=0.5, seed=3)
    batch = tiny_batch(seed=4)
    output = model(batch)
    method.loss(output, batch)
    state = method.state_dict()
    following = [method.loss(output, batch).detach() for _ in range(3)]
    _, resumed = _setup(p_exe=0.5, seed=3)
    resumed.load_state_dict(state)
    torch.testing.assert_close(torch.stack([resumed.loss(output, batch).detach() for _ in range(3)]),
                               torch.stack(following))


def test_three_modalities_and_no_host_synchronisation(monkeypatch):
    modalities = ("audio", "visual", "flow")
    model, method = _setup(modalities, p_exe=1.0)
    batch = tiny_batch(modalities=modalities, seed=5)
    output = model(batch)

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation")

    for name in ("item", "__bool__", "__float__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    method.loss(output, batch).backward()


SMALL_DATA = dict(train_size=96, test_size=32, image_size=16, freq_bins=16, time_steps=16)


def _train(tmp_path, name, *extra):
    return train_on_synthetic("opm", tmp_path / name, "--modulation-starts", "0", *extra, **SMALL_DATA)


def test_cli_two_and_three_modalities(tmp_path):
    assert _train(tmp_path, "two", "--fusion", "sum") == 0
    assert (tmp_path / "two" / "metrics.json").is_file()
    assert _train(tmp_path, "three", "--set", "data.options.flow_strength=0.3") == 0
    assert (tmp_path / "three" / "metrics.json").is_file()


def test_cli_refuses_one_modality(tmp_path, capsys):
    assert _train(tmp_path, "one", "--modalities", "audio") == 2
    err = capsys.readouterr().err.strip()
    assert "method 'opm' needs 2+ modalities, got 1 (audio)" in err and "\n" not in err


def opm_worker(rank, world, steps=3):
    from torch.nn.parallel import DistributedDataParallel

    from ddp_workers import flat_parameters, no_norm_model

    model = no_norm_model()
    method = get_method("opm", modulation_starts=0, p_exe=0.6, q_base=0.6, seed=4)
    method.setup(model)
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
    return flat_parameters(model), logs


def test_ddp_same_drop_decision_and_probabilities_on_every_rank(tmp_path):
    from ddp_workers import run_workers

    (params0, logs0), (params1, logs1) = run_workers(opm_worker, 2, tmp_path)
    _, logs = opm_worker(0, 1)
    assert torch.equal(params0, params1)
    for step in range(3):
        for key in ("executed", "q/audio", "q/visual", "ratio/audio", "ratio/visual"):
            assert torch.equal(logs0[step][key], logs1[step][key]), key
        torch.testing.assert_close(logs0[step]["ratio/audio"], logs[step]["ratio/audio"], rtol=1e-5, atol=1e-6)
    assert any(logs0[s]["executed"].item() == 1.0 for s in range(3))
