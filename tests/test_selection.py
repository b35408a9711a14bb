"""Balance-aware model selection: ``trainer.monitor`` picks the best checkpoint and the recorded best epoch;
the built-in balance metrics follow their definitions."""

import json
import statistics

import pytest

from avbalance.engine import load_config, train
from avbalance.engine.run import early_stopping
from avbalance.errors import ConfigError
from avbalance.metrics import branch_balance, metric_names
from avbalance.models.checkpoint import read_checkpoint

TINY = [
    "trainer.progress_bar=false",
    "trainer.accelerator=cpu",
    "trainer.deterministic=true",
    "trainer.epochs=5",
    "data.options.train_size=160",
    "data.options.test_size=60",
    "data.batch_size=32",
    "model.width=8",
    "model.layers=[1,1,1]",
    "optim.lr=0.05",
]


@pytest.fixture(scope="module")
def visual_selected(tmp_path_factory):
    out = tmp_path_factory.mktemp("selection") / "run"
    metrics = train(load_config(overrides=[*TINY, "trainer.monitor=val/acc_visual", f"out={out}"]))
    return metrics, json.loads((out / "history.json").read_text())


def first_best(history, key):
    return max(history, key=lambda record: record[key])["epoch"]


def test_best_checkpoint_is_the_epoch_of_the_highest_visual_accuracy(visual_selected):
    metrics, history = visual_selected
    best = first_best(history, "val/acc_visual")
    assert best != first_best(history, "val/acc")  # the run tells the two selections apart
    assert metrics["best_epoch"] == best
    assert read_checkpoint(metrics["best_checkpoint"])["epoch"] == best
    assert metrics["val"]["acc_visual"] == pytest.approx(history[best]["val/acc_visual"])


def test_builtin_balance_metrics_follow_their_definitions(visual_selected):
    metrics, history = visual_selected
    for record in history:
        audio, visual = record["val/acc_audio"], record["val/acc_visual"]
        assert record["val/min_branch_acc"] == pytest.approx(min(audio, visual))
        hmean = 0.0 if min(audio, visual) == 0 else 2 * audio * visual / (audio + visual)
        assert record["val/branch_hmean"] == pytest.approx(hmean)
    test = metrics["test"]
    assert test["min_branch_acc"] == pytest.approx(min(test["acc_audio"], test["acc_visual"]))


def test_balance_metrics_need_two_modalities():
    assert branch_balance([0.5]) == {}
    assert branch_balance([0.2, 0.6, 0.6]) == pytest.approx(
        {"min_branch_acc": 0.2, "branch_hmean": statistics.harmonic_mean([0.2, 0.6, 0.6])}
    )
    assert "min_branch_acc" not in metric_names(["audio"])
    assert {"acc_visual", "min_branch_acc", "branch_hmean"} <= set(metric_names(["audio", "visual"]))


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["trainer.monitor=val/acc_depth"], "'val/acc_depth'"),
        (["trainer.monitor=val/min_branch_acc", "data.modalities=[audio]"], "'val/min_branch_acc'"),
        (["trainer.monitor=acc"], "'acc'"),
    ],
)
def test_an_unknown_monitor_is_one_line_before_any_output(tmp_path, overrides, named):
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as error:
        train(load_config(overrides=[*TINY, *overrides, f"out={out}"]))
    message = str(error.value)
    assert message.startswith(f"trainer.monitor: unknown metric {named}") and "val/acc_audio" in message
    assert "\n" not in message
    assert not out.exists()


def test_monitor_mode_is_max_or_min():
    with pytest.raises(ConfigError, match="trainer.monitor_mode"):
        load_config(overrides=["trainer.monitor_mode=largest"])


def test_early_stopping_watches_the_selection_metric():
    assert early_stopping(load_config()) == []
    config = load_config(
        overrides=["trainer.monitor=val/branch_hmean", "trainer.monitor_mode=min", "trainer.early_stopping_patience=3"]
    )
    (stopping,) = early_stopping(config)
    assert (stopping.monitor, stopping.mode, stopping.patience) == ("val/branch_hmean", "min", 3)


def test_early_stopping_ends_the_run(tmp_path):
    # val/samples never changes: no improvement after the first epoch, so patience 1 stops after epoch 1
    out = tmp_path / "run"
    overrides = [*TINY, "trainer.monitor=val/samples", "trainer.early_stopping_patience=1", f"out={out}"]
    metrics = train(load_config(overrides=overrides))
    history = json.loads((out / "history.json").read_text())
    assert [record["epoch"] for record in history] == [0, 1]
    assert metrics["best_epoch"] == 0
