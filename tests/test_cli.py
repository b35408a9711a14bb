"""End-to-end through the command line on small synthetic data."""

import json
import subprocess
import sys

import pytest
import yaml

from avbalance.cli import main

SMALL = [
    "--set",
    "data.options.train_size=240",
    "--set",
    "data.options.test_size=80",
    "--set",
    "trainer.progress_bar=false",
    "--batch-size",
    "32",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "ogm_ge"
    code = main(
        ["train", "--method", "ogm_ge", "--alpha", "0.5", "--epochs", "2", "--lr", "0.01", "--out", str(out), *SMALL]
    )
    assert code == 0
    return out


def test_train_writes_the_run_folder(trained_run):
    for name in (
        "config.yaml",
        "metrics.json",
        "history.json",
        "metrics.csv",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
    ):
        assert (trained_run / name).is_file(), name
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["method"] == {"name": "ogm_ge", "params": {"alpha": 0.5}}
    assert config["trainer"]["epochs"] == 2 and config["data"]["options"]["train_size"] == 240
    metrics = json.loads((trained_run / "metrics.json").read_text())
    expected = {f"{k}{s}" for k in ("acc", "f1_macro", "map") for s in ("", "_audio", "_visual")} | {"samples"}
    expected |= {"min_branch_acc", "branch_hmean"}
    assert set(metrics["val"]) == expected and set(metrics["test"]) == expected
    assert metrics["test"]["samples"] == 80 and metrics["val"]["samples"] == 24  # 10 % of 240
    assert all(0.0 <= v <= 1.0 for k, v in metrics["test"].items() if k != "samples")
    history = json.loads((trained_run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [0, 1]
    import torch

    last = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1 and [r["epoch"] for r in last["avbalance"]["history"]] == [0, 1]
    best = max(history, key=lambda r: r["val/acc"])
    assert metrics["best_epoch"] == best["epoch"]
    assert metrics["val"]["acc"] == pytest.approx(best["val/acc"], abs=1e-6)  # best = selected on val


def test_test_command_reproduces_the_test_metrics(trained_run, tmp_path, capsys):
    code = main(["test", "--ckpt", str(trained_run / "checkpoints" / "best.ckpt"), "--out", str(tmp_path)])
    assert code == 0
    reported = json.loads((tmp_path / "metrics.json").read_text())["test"]
    trained = json.loads((trained_run / "metrics.json").read_text())["test"]
    for key, value in trained.items():
        assert reported[key] == pytest.approx(value, abs=1e-6), key
    assert "acc" in capsys.readouterr().out


def test_config_file_with_overrides(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "method": {"name": "mmcosine", "params": {"scaling": 5}},
                "model": {"fusion": "concat"},
                "trainer": {"epochs": 1},
            }
        )
    )
    out = tmp_path / "mm"
    assert main(["train", "--config", str(config), "--scaling", "8", "--out", str(out), *SMALL]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["method"]["params"] == {"scaling": 8.0}
    from avbalance.models import load_model

    model = load_model(out / "checkpoints" / "last.ckpt")
    assert type(model.head).__name__ == "CosineFusion" and model.head.cosine_scale == 8.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "nope"], "unknown method 'nope'; choose one of: "),
        (["--fusion", "mlp"], "unknown fusion 'mlp'; choose one of: sum, concat"),
        (["--method", "baseline", "--alpha", "0.3"], "method 'baseline' has no hyperparameter 'alpha'"),
        (["--set", "optim.lr=abc"], "config: optim.lr: Input should be a valid number"),
        (["--set", "optim.learning_rate=0.1"], "config: unknown key 'optim.learning_rate'"),
        (["--set", "optim.lr"], "is not of the form key=value"),
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--modalities", "text"], "dataset 'synthetic' has no modality 'text'"),
        (["--method", "ogm", "--modalities", "audio"], "method 'ogm' needs 2+ modalities, got 1 (audio)"),
        (["--fusion", "film", "--method", "mmcosine"], "method 'mmcosine' needs a head split in per-modality blocks"),
        (["--config", "/nonexistent/run.yaml"], "/nonexistent/run.yaml: no such config file"),
        (["--set", "data.options.colour=3"], "dataset 'synthetic' has no option 'colour'"),
    ],
)
def test_bad_input_gives_one_line_and_status_2(tmp_path, capsys, args, message):
    out = tmp_path / "bad"
    assert main(["train", "--out", str(out), "--epochs", "1", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avbalance: error: ") and message in err
    assert "\n" not in err
    assert not (out / "checkpoints").exists()


def test_test_command_missing_checkpoint(capsys):
    assert main(["test", "--ckpt", "/nonexistent/best.ckpt"]) == 2
    assert capsys.readouterr().err.strip() == "avbalance: error: /nonexistent/best.ckpt: no such checkpoint file"


def test_console_script_help_and_error_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "avbalance.cli", "train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--modulation-starts" in result.stdout and "examples:" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "avbalance.cli", "train", "--method", "nope", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("avbalance: error: unknown method 'nope'")
