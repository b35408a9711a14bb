"""``model.encoders.<m>`` on the command line: library encoders by name, ``weights``, ``freeze`` and
``lr_scale`` through ``avbalance train`` on the synthetic dataset, and every mistake in them as one
line with exit status 2 and nothing written."""

import pytest
import torch

from avb_testing import EARLY_SCHEDULES, ListData, indexed_batches, tiny_spec
from avbalance.cli import main
from avbalance.methods import get_method, method_names
from avbalance.methods.base import PlainStep
from avbalance.models import build_encoder, build_model
from avbalance.models.pretrained import freeze_encoder

pytest.importorskip("timm", reason="timm is not installed (pip install 'avbalance[timm]')")

TINY = [
    *("--epochs", "1", "--batch-size", "32", "--set", "trainer.progress_bar=false"),
    *("--set", "data.options.train_size=64", "--set", "data.options.test_size=16", "--set", "data.options.val_size=16"),
]
ENCODER_FILE = """
from torch import nn


class Flat(nn.Module):
    def __init__(self, features):
        super().__init__()
        self.fc = nn.Linear(features, 6)
        self.out_dim = 6

    def forward(self, x):
        return self.fc(x.flatten(1))


def build(input_shape):
    size = 1
    for dim in input_shape:
        size *= dim
    return Flat(size)


def not_a_module(input_shape):
    return "a string"
"""


def train(out, *settings: str) -> int:
    overrides = [part for setting in settings for part in ("--set", setting)]
    return main(["train", "--out", str(out), *TINY, *overrides])


def test_weights_and_freeze_keep_a_timm_encoder_bit_for_bit_through_training(tmp_path):
    torch.manual_seed(3)
    source = build_encoder("timm:resnet18", 3)
    torch.save(source.backbone.state_dict(), tmp_path / "resnet18.pt")
    visual = "model.encoders.visual"
    settings = [f"{visual}.name=timm:resnet18", f"{visual}.weights={tmp_path}/resnet18.pt", f"{visual}.freeze=true"]
    assert train(tmp_path / "run", *settings) == 0
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    state = checkpoint["state_dict"]
    for key, value in source.backbone.state_dict().items():  # BatchNorm statistics included
        assert torch.equal(state[f"model.encoders.visual.backbone.{key}"], value), key
    trained = {k for k in state if not k.startswith("model.encoders.visual.") and k.endswith(("weight", "bias"))}
    assert len(checkpoint["optimizer_states"][0]["param_groups"][0]["params"]) == len(trained)
    assert checkpoint["avbalance"]["model_spec"]["encoders"]["visual"]["kind"] == "timm:resnet18"
    assert main(["test", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "test")]) == 0


def test_lr_scale_groups_with_a_frozen_encoder_under_a_method_that_scales_updates(tmp_path, capsys):
    settings = ["model.encoders.visual.lr_scale=0.25", "model.encoders.audio.freeze=true", "optim.name=adamw"]
    assert train(tmp_path / "run", "optim.lr=0.004", "method.name=ogm_ge", *settings) == 0
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    groups = {group["name"]: group["lr"] for group in checkpoint["optimizer_states"][0]["param_groups"]}
    assert groups == pytest.approx({"default": 0.004, "encoders.visual": 0.001})
    resumed = ["--resume", "auto", "--epochs", "2"]
    base = ["train", "--out", str(tmp_path / "run"), *TINY, "--set", "optim.lr=0.004", "--set", "method.name=ogm_ge"]
    other = ["--set", "model.encoders.visual.lr_scale=0.5", "--set", "model.encoders.audio.freeze=true"]
    assert main([*base, *other, "--set", "optim.name=adamw", *resumed]) == 2
    assert "model.encoders.visual.lr_scale is 0.5 here, 0.25 in the checkpoint" in capsys.readouterr().err
    assert main([*base, *(part for s in settings for part in ("--set", s)), *resumed]) == 0
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 1 and len(checkpoint["optimizer_states"][0]["param_groups"]) == 2  # epochs 0, 1


def run_epochs(method, model, data, epochs: int) -> None:
    """The engine's hook sequence in a plain loop (SGD over the trainable parameters)."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    method.setup(model, optimizer, data)
    for epoch in range(epochs):
        model.train()
        method.on_epoch_start(epoch, model, data)
        for index, batch in enumerate(data.batches):
            step = PlainStep(optimizer, epoch, index, len(data.batches))
            if method.overrides_step:
                method.training_step(model, batch, step)
                continue
            output = model(batch)
            loss = method.loss(output, batch)
            step.zero_grad()
            step.backward(loss)
            method.after_backward(model, output, batch)
            optimizer.step()
        method.on_epoch_end(epoch, model, data)


@pytest.mark.parametrize("name", method_names())
def test_every_method_leaves_a_frozen_encoder_bit_for_bit_as_it_was(name):
    method = get_method(name, **EARLY_SCHEDULES.get(name, {}))
    torch.manual_seed(0)
    model = build_model(method.adapt_model_spec(tiny_spec()))
    freeze_encoder(model.encoders["audio"])
    frozen = {k: v.clone() for k, v in model.encoders["audio"].state_dict().items()}
    trained = [p.detach().clone() for p in model.encoders["visual"].parameters()]
    run_epochs(method, model, ListData(indexed_batches(2, 6), indexed_batches(2, 5, seed=50)), epochs=3)
    assert all(torch.equal(v, frozen[k]) for k, v in model.encoders["audio"].state_dict().items())
    assert any(not torch.equal(p, q) for p, q in zip(model.encoders["visual"].parameters(), trained))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    (root / "my_encoder.py").write_text(ENCODER_FILE)
    torch.save({"conv1.weight": torch.zeros(8, 1, 3, 3)}, root / "bad_weights.pt")
    return root


AUDIO, VISUAL = "model.encoders.audio", "model.encoders.visual"
CASES = [
    ([f"{VISUAL}.name=resnett"], "model.encoders.visual.name: unknown encoder 'resnett'; choose one of: "),
    (
        [f"{VISUAL}.name=timm:resnet81"],
        "model.encoders.visual.name: encoder 'timm:resnet81': unknown timm architecture",
    ),
    ([f"{VISUAL}.name=torchvision:resnet81"], "unknown torchvision model 'resnet81'; close names: resnet18"),
    ([f"{VISUAL}.name=torchvision:squeezenet1_0"], "the classifier of torchvision architecture 'squeezenet1_0'"),
    (
        [f"{VISUAL}.name=hf:{{root}}/absent"],
        "model.encoders.visual.name: encoder 'hf:{root}/absent': {root}/absent: no",
    ),
    ([f"{VISUAL}.name=python:no_such_module:build"], "cannot import 'no_such_module' (ModuleNotFoundError"),
    ([f"{VISUAL}.name=python:{{root}}/my_encoder.py:absent"], "my_encoder.py' has no attribute 'absent'"),
    ([f"{VISUAL}.name=python:{{root}}/my_encoder.py:not_a_module"], "returned a str, not a torch.nn.Module"),
    ([f"{VISUAL}.name=timm:resnet18", f"{VISUAL}.colour=red"], "model.encoders.visual.colour: encoder 'timm:resnet18'"),
    (
        [f"{VISUAL}.name=timm:vit_tiny_patch16_224", f"{VISUAL}.depth=1", f"{VISUAL}.embed_dim=24"],
        "model.encoders.visual: encoder 'timm:vit_tiny_patch16_224': cannot take inputs of per-sample shape (3, 2, 32",
    ),
    ([f"{AUDIO}.bogus=3"], "model.encoders.audio.bogus: encoder 'resnet' has no option 'bogus'; its options are: "),
    ([f"{AUDIO}.weights={{root}}/bad_weights.pt"], "do not fit the audio encoder: 1 with another shape: conv1.weight"),
    ([f"{AUDIO}.weights={{root}}/absent.pt"], "absent.pt"),
    ([f"{AUDIO}.weights=[1, 2]"], "model.encoders.audio.weights: must be the path of a weights file, got [1, 2]"),
    ([f"{AUDIO}.freeze=maybe"], "model.encoders.audio.freeze: must be true or false, got 'maybe'"),
    ([f"{AUDIO}.lr_scale=0"], "model.encoders.audio.lr_scale: must be a finite number > 0"),
    ([f"{AUDIO}.lr_scale=-1"], "model.encoders.audio.lr_scale: must be a finite number > 0"),
    ([f"{AUDIO}.lr_scale=fast"], "model.encoders.audio.lr_scale: must be a finite number > 0"),
    (["model.encoders.text.freeze=true"], "model.encoders: no 'text' modality in this model"),
    (["model.pretrained.text={root}/bad_weights.pt"], "model.pretrained: no 'text' encoder in this model"),
    (
        ["model.pretrained.audio=a.pt", f"{AUDIO}.weights=b.pt"],
        "model.pretrained.audio and model.encoders.audio.weights both name weights; keep one",
    ),
    (
        [f"{VISUAL}.name=python:{{root}}/my_encoder.py:build", "method.name=ogm", "method.params.modulate=conv"],
        "method 'ogm': modulate='conv' selects no tensor of the visual encoder; use modulate='auto'",
    ),
]


@pytest.mark.parametrize("settings, message", CASES, ids=[f"case{n:02d}" for n in range(len(CASES))])
def test_a_mistake_is_one_line_with_status_2_and_writes_nothing(inputs, tmp_path, capsys, settings, message):
    before = sorted(inputs.rglob("*"))
    assert train(tmp_path / "out", *(setting.format(root=inputs) for setting in settings)) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("avbalance: error: ") and "\n" not in err, err
    assert message.format(root=inputs) in err, err
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "out").exists() and sorted(inputs.rglob("*")) == before
