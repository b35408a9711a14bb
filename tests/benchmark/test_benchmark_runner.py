"""The suite runner on synthetic data in quick mode: outputs, consistency, reuse, determinism."""

import json
import math
import statistics
from pathlib import Path

import pytest

from avbalance.benchmark import get_suite, run_suite, summary_stats
from avbalance.benchmark.report import cell
from avbalance.cli import main

METHODS = ["baseline", "ogm_ge"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "synthetic"
    messages = []
    summary = run_suite(get_suite("synthetic"), out, methods=METHODS, quick=True, report=messages.append)
    return out, summary, messages


def test_outputs_written(quick_run):
    out, summary, messages = quick_run
    for name in ("README.md", "summary.json", "accuracy.png", "imbalance.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert set(summary) == {"baseline", "ogm_ge", "audio_only", "visual_only"}
    for method in summary:
        folder = out / "runs" / method / "seed0"
        assert (folder / "metrics.json").is_file() and (folder / "run.json").is_file()
        assert not (folder / "checkpoints").exists()
    assert any("[4/4]" in m for m in messages)  # progress


def test_table_matches_per_run_metrics(quick_run):
    out, summary, _ = quick_run
    table = (out / "README.md").read_text()
    stored = json.loads((out / "summary.json").read_text())["summary"]
    for method in ("baseline", "ogm_ge"):
        metrics = json.loads((out / "runs" / method / "seed0" / "metrics.json").read_text())["test"]
        reference = json.loads((out / "runs" / "audio_only" / "seed0" / "metrics.json").read_text())["test"]
        assert stored[method]["acc"]["mean"] == pytest.approx(metrics["acc"])
        assert stored[method]["f1_macro_visual"]["mean"] == pytest.approx(metrics["f1_macro_visual"])
        assert stored[method]["gap_audio"]["mean"] == pytest.approx(metrics["acc_audio"] - reference["acc"])
        row = next(line for line in table.splitlines() if line.startswith(f"| {method} |"))
        assert f"| {100 * metrics['acc']:.1f} |" in row
        assert f"| {100 * metrics['acc_audio']:.1f} |" in row


def test_rerun_reuses_finished_runs(quick_run):
    out, summary, _ = quick_run
    before = (out / "runs" / "baseline" / "seed0" / "metrics.json").stat().st_mtime_ns
    messages = []
    again = run_suite(get_suite("synthetic"), out, methods=METHODS, quick=True, report=messages.append)
    assert "reusing 4 finished run(s) of 4" in messages
    assert not any("trained in" in m for m in messages)
    assert (out / "runs" / "baseline" / "seed0" / "metrics.json").stat().st_mtime_ns == before
    assert again["baseline"]["acc"] == summary["baseline"]["acc"]


def test_same_seed_same_metrics(quick_run, tmp_path):
    out, _, _ = quick_run
    run_suite(get_suite("synthetic"), tmp_path, methods=["ogm_ge"], quick=True, references=False, report=lambda m: None)
    first = json.loads((out / "runs" / "ogm_ge" / "seed0" / "metrics.json").read_text())
    second = json.loads((tmp_path / "runs" / "ogm_ge" / "seed0" / "metrics.json").read_text())
    assert first["test"] == second["test"] and first["val"] == second["val"]


def test_parallel_jobs_give_the_same_metrics(quick_run, tmp_path):
    """Runs trained by two worker processes match the same runs trained one by one in this process."""
    out, _, _ = quick_run
    messages = []
    run_suite(get_suite("synthetic"), tmp_path, methods=["ogm_ge"], quick=True, jobs=2, report=messages.append)
    for method in ("ogm_ge", "audio_only", "visual_only"):
        first = json.loads((out / "runs" / method / "seed0" / "metrics.json").read_text())
        second = json.loads((tmp_path / "runs" / method / "seed0" / "metrics.json").read_text())
        assert first["test"] == second["test"] and first["val"] == second["val"]
    assert sum("trained in" in m for m in messages) == 3
    assert "3 run(s), 2 at a time" in (tmp_path / "README.md").read_text()


def test_changed_recipe_retrains(quick_run, tmp_path):
    suite = get_suite("synthetic")
    run_suite(suite, tmp_path, methods=["mmcosine"], quick=True, references=False, report=lambda m: None)
    run_file = tmp_path / "runs" / "mmcosine" / "seed0" / "run.json"
    data = json.loads(run_file.read_text())
    data["overrides"] = data["overrides"] + ["optim.lr=0.5"]
    run_file.write_text(json.dumps(data))
    messages = []
    run_suite(suite, tmp_path, methods=["mmcosine"], quick=True, references=False, report=messages.append)
    assert any("trained in" in m for m in messages)


def test_summary_stats_student_t():
    values = [0.5, 0.6, 0.7, 0.8, 0.9]
    stats = summary_stats(values)
    assert stats["mean"] == pytest.approx(0.7)
    assert stats["std"] == pytest.approx(statistics.stdev(values))
    assert stats["ci95"] == pytest.approx(2.776445 * statistics.stdev(values) / math.sqrt(5), rel=1e-5)
    assert math.isnan(summary_stats([0.5])["std"])
    assert cell(stats) == "70.0 ± 15.8 [±19.6]"


def test_cli_errors_in_one_line(capsys, tmp_path):
    assert main(["benchmark", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown benchmark suite" in capsys.readouterr().err
    assert main(["benchmark", "synthetic", "--quick", "--methods", "bogus", "--out", str(tmp_path)]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert (
        main(
            [
                "benchmark",
                "grid-digit",
                "--quick",
                "--raw",
                str(tmp_path),
                "--cache",
                str(tmp_path / "c"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "needs the raw data" in capsys.readouterr().err
    assert main(["benchmark", "synthetic", "--quick", "--jobs", "0", "--out", str(tmp_path)]) == 2
    assert "--jobs must be at least 1" in capsys.readouterr().err


def test_validation_sweep(tmp_path):
    from avbalance.benchmark.runner import run_sweep

    rows = run_sweep(get_suite("synthetic"), tmp_path, seeds=1, quick=True, report=lambda m: None)
    assert [r["setting"] for r in rows] == [["method.params.alpha=0.1"], ["method.params.alpha=0.5"]]
    text = (tmp_path / "sweep.md").read_text()
    assert text.count("**(chosen)**") == 1 and "validation" in text
    for number, row in enumerate(rows):
        metrics = json.loads(
            (tmp_path / "sweep" / "ogm_ge" / f"setting{number}" / "seed0" / "metrics.json").read_text()
        )
        assert row["values"] == [metrics["val"]["acc"]]


def test_changed_preparation_gets_its_own_cache_folder(tmp_path):
    import dataclasses

    from avbalance.benchmark.runner import cache_folder

    suite = get_suite("grid-digit")
    other = dataclasses.replace(suite, prepare=[a.replace("32", "48") for a in suite.prepare])
    first, second = cache_folder(suite, tmp_path, False), cache_folder(other, tmp_path, False)
    assert first.parent == second.parent == tmp_path and first != second
    assert cache_folder(suite, tmp_path, False) == first  # stable
    assert cache_folder(suite, tmp_path, True).parent.name == tmp_path.name + "-quick"


def test_sweep_of_a_suite_without_one(tmp_path):
    import dataclasses

    from avbalance.benchmark.runner import run_sweep
    from avbalance.errors import ConfigError

    suite = dataclasses.replace(get_suite("synthetic"), sweep={})
    with pytest.raises(ConfigError, match="suite 'synthetic' defines no validation sweep"):
        run_sweep(suite, tmp_path, quick=True, report=lambda m: None)
    assert not (tmp_path / "sweep.md").exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc to watch the worker process")
def test_worker_exits_when_the_suite_process_is_killed():
    """A worker of ``--jobs N`` stops by itself when its parent dies, even by SIGKILL."""
    import os
    import signal
    import subprocess
    import sys
    import time

    worker = (
        "import os, time; from avbalance.benchmark.runner import _exit_with_parent; "
        "_exit_with_parent(os.getppid()); print('ready', flush=True); time.sleep(60)"
    )
    parent = (
        "import subprocess, sys, time; "
        f"child = subprocess.Popen([sys.executable, '-c', {worker!r}], stdout=subprocess.PIPE, text=True); "
        "print(child.pid, flush=True); child.stdout.readline(); print('ready', flush=True); time.sleep(60)"
    )
    process = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    try:
        child = int(process.stdout.readline())
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.exists(f"/proc/{child}"), "the worker outlived its parent"
    finally:
        process.kill()


def test_sweep_settings_equal_at_this_run_length_are_trained_once():
    from avbalance.benchmark.runner import _distinct_settings

    sweep = {
        "reconboost": [
            ["method.params.stage_epochs={third}"],
            ["method.params.stage_epochs=1"],
            ["method.params.stage_epochs=2"],
        ]
    }
    # 5 epochs: a third is 1 epoch, the same as the second setting
    assert _distinct_settings(sweep, 5) == {
        "reconboost": [(0, ["method.params.stage_epochs=1"]), (2, ["method.params.stage_epochs=2"])]
    }
    assert [n for n, _ in _distinct_settings(sweep, 16)["reconboost"]] == [0, 1, 2]


def test_select_sets_the_monitor_and_retrains_runs_selected_otherwise(quick_run, tmp_path):
    import shutil

    import yaml

    out, _, _ = quick_run
    shutil.copytree(out / "runs" / "baseline", tmp_path / "runs" / "baseline")  # finished with val/acc
    messages = []
    suite = get_suite("synthetic")
    run_suite(suite, tmp_path, methods=["baseline"], quick=True, select="val/acc_visual", report=messages.append)
    assert not any(m.startswith("reusing") for m in messages)
    assert sum("trained in" in m for m in messages) == 3
    monitors = {
        name: yaml.safe_load((tmp_path / "runs" / name / "seed0" / "config.yaml").read_text())["trainer"]["monitor"]
        for name in ("baseline", "audio_only", "visual_only")
    }
    # the audio-only model has no visual output: it selects on its only output's accuracy
    assert monitors == {"baseline": "val/acc_visual", "audio_only": "val/acc", "visual_only": "val/acc_visual"}
    run = json.loads((tmp_path / "runs" / "baseline" / "seed0" / "run.json").read_text())
    assert run["overrides"][-1] == "trainer.monitor=val/acc_visual"
    assert "chosen by `val/acc_visual`" in (tmp_path / "README.md").read_text()


def test_method_variants_run_the_registered_method_in_their_own_row(tmp_path):
    import dataclasses

    import yaml

    variant = ["method.params.alpha=0.1", "method.params.modulate_via=lr"]
    suite = dataclasses.replace(get_suite("synthetic"), method_params={"ogm_ge[lr]": variant})
    summary = run_suite(suite, tmp_path, methods=["ogm_ge[lr]"], quick=True, references=False, report=lambda m: None)
    assert set(summary) == {"ogm_ge[lr]"}
    config = yaml.safe_load((tmp_path / "runs" / "ogm_ge[lr]" / "seed0" / "config.yaml").read_text())
    assert config["method"] == {"name": "ogm_ge", "params": {"alpha": 0.1, "modulate_via": "lr"}}
    assert "| ogm_ge[lr] |" in (tmp_path / "README.md").read_text()


def test_adamw_suite_rows():
    suite = get_suite("avmnist-adamw")
    assert suite.methods == ["baseline", "ogm_ge[grad]", "ogm_ge[lr]", "agm[lr]"]
    shared = suite.overrides("baseline", quick=False)[:-1]
    assert "optim.name=adamw" in shared and "optim.lr=0.001" in shared
    assert not any(o.startswith(("optim.name=sgd", "optim.lr=0.05")) for o in shared)
    assert shared == [o for o in suite.overrides("audio_only", quick=False) if not o.startswith("data.modalities")]
    for row, method, via in (
        ("ogm_ge[grad]", "ogm_ge", "grad"),
        ("ogm_ge[lr]", "ogm_ge", "lr"),
        ("agm[lr]", "agm", "lr"),
    ):
        overrides = suite.overrides(row, quick=False)
        assert overrides[: len(shared)] == shared
        assert f"method.name={method}" in overrides and overrides[-1] == f"method.params.modulate_via={via}"


def test_unknown_variant_or_selection_is_one_line(capsys, tmp_path):
    out = ["--out", str(tmp_path / "o")]
    assert main(["benchmark", "avmnist-adamw", "--quick", "--methods", "ogm_ge[foo]", *out]) == 2
    error = capsys.readouterr().err
    assert "unknown method(s): ogm_ge[foo]" in error and "ogm_ge[lr]" in error and error.count("\n") == 1
    assert main(["benchmark", "synthetic", "--quick", "--select", "val/loss", *out]) == 2
    error = capsys.readouterr().err
    assert "--select: unknown metric 'val/loss'" in error and "val/branch_hmean" in error
    assert main(["benchmark", "synthetic", "--sweep", "--select", "val/acc_audio", *out]) == 2
    assert "--select" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
