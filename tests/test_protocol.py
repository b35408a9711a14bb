"""The method protocol's extensions in the engine: step override, epoch data, resampling."""

import json

import pytest
import torch

from avb_testing import registered
from avbalance.engine import evaluate, load_config, train
from avbalance.methods import method_names, registry
from avbalance.methods.base import Method, PlainStep
from avbalance.methods.baseline import Baseline
from avbalance.models.checkpoint import read_checkpoint

BASE = [
    "trainer.progress_bar=false",
    "trainer.epochs=2",
    "data.options.train_size=200",
    "data.options.test_size=60",
    "data.batch_size=32",
    "trainer.deterministic=true",
]


class StepBaseline(Baseline):
    """The baseline through the step-override path (manual optimisation)."""

    name = "test_step_baseline"
    overrides_step = True


class HalfZeroVisual(Method):
    """Resamples: every other sample, visual zeroed; records what the epoch hooks saw."""

    name = "test_resample"
    resamples_data = True
    seen: list = []

    def __init__(self) -> None:
        super().__init__()

    def on_epoch_end(self, epoch, model=None, data=None):
        count = sum(len(b["label"]) for b in data.train_batches())
        val = sum(len(b["label"]) for b in data.val_batches())
        HalfZeroVisual.seen.append((epoch, count, val, data.num_train_samples()))

    def train_entries(self):
        return [(i, ("visual",)) for i in range(0, 180, 2)]

    def loss(self, output, batch):
        HalfZeroVisual.seen.append(
            ("batch", int((batch["visual"].flatten(1).abs().sum(1) == 0).sum()), len(batch["label"]))
        )
        return super().loss(output, batch)


@pytest.fixture
def test_methods():
    with registered(registry.METHODS, StepBaseline), registered(registry.METHODS, HalfZeroVisual):
        yield


def _last_state(run):
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_step_override_path_equals_automatic_optimisation(tmp_path, test_methods):
    train(load_config(overrides=BASE + [f"out={tmp_path / 'auto'}", "method.name=baseline"]))
    train(
        load_config(
            overrides=BASE + [f"out={tmp_path / 'manual'}", "method.name=test_step_baseline", "optim.step_size=1"]
        )
    )
    train(load_config(overrides=BASE + [f"out={tmp_path / 'auto1'}", "method.name=baseline", "optim.step_size=1"]))
    auto, manual = _last_state(tmp_path / "auto1"), _last_state(tmp_path / "manual")
    for key in auto:
        assert torch.equal(auto[key], manual[key]), key  # scheduler stepped too (step_size=1)
    assert any(not torch.equal(_last_state(tmp_path / "auto")[k], auto[k]) for k in auto)


def test_resampling_and_epoch_data(tmp_path, test_methods):
    HalfZeroVisual.seen.clear()
    train(load_config(overrides=BASE + [f"out={tmp_path / 'r'}", "method.name=test_resample"]))
    epoch_records = [r for r in HalfZeroVisual.seen if r[0] != "batch"]
    assert epoch_records[0] == (0, 180, 20, 180)  # 200 train -> 180 train + 20 val carved
    batches = [r for r in HalfZeroVisual.seen if r[0] == "batch"]
    first_epoch, second_epoch = batches[:5], batches[5:]  # 180 // 32 = 5 full batches
    assert all(zeroed == 0 for _, zeroed, _ in first_epoch)
    assert all(zeroed == size for _, zeroed, size in second_epoch)  # every resampled sample has visual zeroed
    assert sum(size for _, _, size in second_epoch) == 64  # 90 entries, drop_last with batch 32


def test_plain_step_in_a_loop(tiny_model):
    from avb_testing import tiny_batch

    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in tiny_model.parameters()]
    calls = []
    method = Baseline()
    method.after_backward = lambda model, output, batch: calls.append(True)
    loss = method.training_step(tiny_model, tiny_batch(), PlainStep(optimizer))
    assert calls == [True] and loss.requires_grad is False
    assert any(not torch.equal(b, p) for b, p in zip(before, tiny_model.parameters()))


# Tiny runs: the invariant concerns what the checkpoint holds, not what the model learns.
# A strong audio cue, so that validation accuracy still improves at the epochs where ReLearning
# re-initialises (the best epoch is then one whose end changed the model).
TINY = [
    "trainer.progress_bar=false",
    "trainer.epochs=3",
    "data.options.train_size=128",
    "data.options.test_size=8",
    "data.options.num_classes=4",
    "data.options.audio_strength=2.0",
    "data.options.image_size=16",
    "data.options.freq_bins=16",
    "data.options.time_steps=16",
    "data.val_fraction=0.25",
    "data.batch_size=16",
    "model.width=4",
    "model.layers=[1,1]",
    "optim.lr=0.1",
]
# Settings that make each method's epoch-level behaviour happen within three epochs.
SHORT_SCHEDULES = {
    "gblending": {"super_epoch": 1},
    "greedy": {"starting_epoch": 1, "window": 1},
    "opm": {"modulation_starts": 0},
    "pmr": {"entropy_epochs": 1},
    "reconboost": {"stage_epochs": 1, "correct_epochs": 1},
    "relearning": {"reinit_epoch": 1, "reinit_num": 2, "move_lambda": 30.0},
    "umt": {"pretrain_epochs": 1},
    "valuation": {"warmup": 1},
}


@pytest.mark.parametrize("name", method_names())
def test_best_checkpoint_reproduces_its_recorded_validation_metrics(tmp_path, name):
    """``best.ckpt`` holds the weights that were validated, even for a method that changes the model
    at the end of an epoch (ReLearning re-initialises encoders there)."""
    out = tmp_path / name
    params = [f"method.params.{key}={value}" for key, value in SHORT_SCHEDULES.get(name, {}).items()]
    train(load_config(overrides=TINY + params + [f"out={out}", f"method.name={name}"]))
    best = out / "checkpoints" / "best.ckpt"
    epoch = read_checkpoint(best)["epoch"]
    recorded = next(r for r in json.loads((out / "history.json").read_text()) if r["epoch"] == epoch)
    again = evaluate(str(best), split="val", accelerator="cpu", devices=1)
    assert again["samples"] == 32
    for key, value in again.items():
        assert value == pytest.approx(recorded[f"val/{key}"], abs=1e-6), key
