"""``trainer.loggers``: TensorBoard event files, ``metrics.csv`` and the optional Weights & Biases logger."""

import csv
import os
import sys

import pytest

from avbalance.engine import load_config, train
from avbalance.engine.run import build_loggers
from avbalance.errors import ConfigError

TINY = [
    "trainer.progress_bar=false",
    "trainer.accelerator=cpu",
    "trainer.epochs=2",
    "data.options.train_size=96",
    "data.options.test_size=32",
    "data.batch_size=32",
    "model.width=8",
    "model.layers=[1,1,1]",
]


def event_files(out):
    return sorted(out.rglob("events.out.tfevents.*"))


def test_csv_only_writes_metrics_csv_and_no_event_file(tmp_path):
    out = tmp_path / "run"
    train(load_config(overrides=[*TINY, "trainer.loggers=[csv]", f"out={out}"]))
    with (out / "metrics.csv").open() as table:
        epochs = {row["epoch"] for row in csv.DictReader(table) if row.get("val/acc")}
    assert {"0", "1"} <= epochs  # each training epoch's validation (then the final evaluation's)
    assert event_files(out) == []


def test_tensorboard_only_writes_event_files_and_no_csv(tmp_path):
    out = tmp_path / "run"
    train(load_config(overrides=[*TINY, "trainer.loggers=[tensorboard]", f"out={out}"]))
    assert event_files(out)
    assert list(out.rglob("metrics.csv")) == []


def test_default_loggers_are_tensorboard_and_csv():
    assert load_config().trainer.loggers == ["tensorboard", "csv"]


def test_an_unknown_logger_is_refused():
    with pytest.raises(ConfigError, match=r"trainer\.loggers"):
        load_config(overrides=["trainer.loggers=[mlflow]"])


def test_missing_wandb_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as error:
        train(load_config(overrides=[*TINY, "trainer.loggers=[csv, wandb]", f"out={out}"]))
    message = str(error.value)
    assert "\n" not in message
    assert "trainer.loggers" in message and "avbalance[wandb]" in message
    assert not out.exists()


def test_wandb_runs_offline_named_after_the_run_folder(tmp_path, monkeypatch):
    built = {}

    class FakeWandbLogger:
        def __init__(self, **settings):
            built.update(settings)

    monkeypatch.setitem(sys.modules, "wandb", object())
    monkeypatch.setattr("lightning.pytorch.loggers.WandbLogger", FakeWandbLogger)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "project" / "run1"
    (logger,) = build_loggers(load_config(overrides=["trainer.loggers=[wandb]"]), out)
    assert isinstance(logger, FakeWandbLogger)
    assert built == {"name": "run1", "project": "project", "save_dir": str(out)}
    assert os.environ["WANDB_MODE"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    build_loggers(load_config(overrides=["trainer.loggers=[wandb]"]), out)
    assert os.environ["WANDB_MODE"] == "online"  # the user's choice stays
