"""UMT against independent computations: the distillation loss, frozen eval-mode teachers,
teachers from checkpoints and from the automatic pre-training stage."""

import copy

import pytest
import torch
import torch.nn.functional as F

from avb_testing import ListData, tiny_batch, tiny_spec, train_on_synthetic
from avbalance.errors import ConfigError
from avbalance.methods import get_method
from avbalance.models import build_model


def _save_checkpoint(path, spec, model):
    torch.save(
        {"avbalance": {"model_spec": spec}, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
        path,
    )
    return str(path)


@pytest.fixture
def teacher_checkpoints(tmp_path):
    paths = {}
    for seed, modality in enumerate(("audio", "visual")):
        torch.manual_seed(100 + seed)
        spec = tiny_spec(modalities=(modality,))
        teacher = build_model(spec)
        teacher.train()
        with torch.no_grad():  # non-trivial BatchNorm statistics
            teacher(tiny_batch(modalities=(modality,), seed=50 + seed))
        paths[modality] = _save_checkpoint(tmp_path / f"{modality}.ckpt", spec, teacher)
    return paths


def test_loss_is_ce_plus_scaled_feature_mse(tiny_model, teacher_checkpoints):
    method = get_method("umt", scaling=3.0, teachers=teacher_checkpoints)
    method.setup(tiny_model)
    batch = tiny_batch(seed=1)
    output = tiny_model(batch)
    loss = method.loss(output, batch)

    from avbalance.models import load_model  # independent: the teachers' encoders in eval mode

    expected = F.cross_entropy(output.logits, batch["label"])
    for m, path in teacher_checkpoints.items():
        teacher = load_model(path).encoders[m].eval()
        with torch.no_grad():
            target = teacher(batch[m])
        expected = expected + 3.0 * ((output.features[m] - target) ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_teachers_are_frozen_and_keep_their_statistics(tiny_model, teacher_checkpoints):
    method = get_method("umt", teachers=teacher_checkpoints)
    method.setup(tiny_model)
    teacher = method.teachers["audio"]
    stats = {n: b.clone() for n, b in teacher.named_buffers()}
    batch = tiny_batch(seed=2)
    method.loss(tiny_model(batch), batch).backward()
    assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(b, stats[n]) for n, b in teacher.named_buffers())
    assert tiny_model.encoders["audio"].conv1.weight.grad is not None


def test_checkpoint_teachers_are_checked_before_training(teacher_checkpoints, tmp_path):
    method = get_method("umt", teachers={"visual": teacher_checkpoints["audio"]})
    with pytest.raises(ValueError, match="has no visual encoder \\(its modalities: audio\\)"):
        method.adapt_model_spec(tiny_spec())
    torch.manual_seed(0)
    wide_spec = tiny_spec(modalities=("audio",))
    wide_spec["encoders"]["audio"]["width"] = 8
    wide = _save_checkpoint(tmp_path / "wide.ckpt", wide_spec, build_model(wide_spec))
    with pytest.raises(ValueError, match="gives 16-d features, the model's encoder 8-d"):
        get_method("umt", teachers={"audio": wide}).adapt_model_spec(tiny_spec())
    with pytest.raises(ConfigError, match="teacher checkpoint for audio not found"):
        get_method("umt", teachers={"audio": str(tmp_path / "missing.ckpt")})


def test_pretraining_stage_trains_copies_and_leaves_the_model_alone(tiny_model):
    batches = [tiny_batch(batch_size=8, seed=s) for s in range(3)]
    for i, b in enumerate(batches):
        b["index"] = torch.arange(i * 8, (i + 1) * 8)
    before = copy.deepcopy(tiny_model.state_dict())
    method = get_method("umt", pretrain_epochs=2)
    method.setup(tiny_model, torch.optim.SGD(tiny_model.parameters(), lr=0.05, momentum=0.9), ListData(batches))

    for m in ("audio", "visual"):
        teacher = method.teachers[m]
        assert teacher is not tiny_model.encoders[m] and not teacher.training
        assert any(not torch.equal(p, q) for p, q in zip(teacher.parameters(), tiny_model.encoders[m].parameters()))
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(value, before[key]), key
    state = method.state_dict()["pretrained_teachers"]
    resumed = get_method("umt", pretrain_epochs=2)
    resumed.load_state_dict({"pretrained_teachers": state})
    resumed.setup(tiny_model, None, None)  # no data needed: the checkpoint has the teachers
    for p, q in zip(resumed.teachers["visual"].parameters(), method.teachers["visual"].parameters()):
        assert torch.equal(p, q)


def test_pretraining_matches_an_independent_loop(tiny_model):
    batches = [tiny_batch(batch_size=8, seed=s) for s in range(2)]
    start = copy.deepcopy(tiny_model.encoders["audio"])
    torch.manual_seed(5)
    method = get_method("umt", pretrain_epochs=1)
    method.setup(tiny_model, torch.optim.SGD(tiny_model.parameters(), lr=0.1), ListData(batches))

    torch.manual_seed(5)  # the method's classifier init draws come first, in modality order
    linear = {}
    for m in ("audio", "visual"):
        layer = torch.nn.Linear(tiny_model.head.dims[m], 5)
        torch.nn.init.xavier_normal_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
        linear[m] = layer
    encoder = start.train()
    optimizer = torch.optim.SGD([*encoder.parameters(), *linear["audio"].parameters()], lr=0.1)
    for batch in batches:
        optimizer.zero_grad()
        F.cross_entropy(linear["audio"](encoder(batch["audio"])), batch["label"]).backward()
        optimizer.step()
    for p, q in zip(method.teachers["audio"].parameters(), encoder.parameters()):
        torch.testing.assert_close(p, q)


SMALL_DATA = dict(train_size=96, test_size=32, image_size=16, freq_bins=16, time_steps=16)


def _train(tmp_path, name, *extra):
    return train_on_synthetic("umt", tmp_path / name, "--set", "method.params.pretrain_epochs=1", *extra, **SMALL_DATA)


def test_cli_refuses_a_missing_teacher(tmp_path, capsys):
    assert _train(tmp_path, "bad", "--set", f"method.params.teachers.audio={tmp_path / 'nope.ckpt'}") == 2
    err = capsys.readouterr().err.strip()
    assert "method 'umt': teacher checkpoint for audio not found" in err and "\n" not in err
