"""runs.csv: every run's figures, from which the table's statistics can be recomputed."""

import csv
import random

import pytest

from avbalance.benchmark import summary_stats
from avbalance.benchmark.aggregate import aggregate
from avbalance.benchmark.report import write_runs_csv


def fake_runs(seeds: int = 5) -> dict:
    rng = random.Random(3)
    runs: dict = {}
    for method in ("ogm_ge", "baseline", "audio_only", "visual_only"):
        for seed in range(seeds):
            test = {"acc": rng.random(), "f1_macro": rng.random()}
            if method not in ("audio_only", "visual_only"):
                test.update(acc_audio=rng.random(), acc_visual=rng.random())
            runs.setdefault(method, {})[seed] = {
                "val": {"acc": rng.random()},
                "test": test,
                "best_epoch": seed,
                "train_seconds": 1.5 * seed,
            }
    return runs


def test_runs_csv_recomputes_summary(tmp_path):
    runs = fake_runs()
    write_runs_csv(tmp_path / "runs.csv", runs)
    with open(tmp_path / "runs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 20
    assert [r["method"] for r in rows[::5]] == ["baseline", "ogm_ge", "audio_only", "visual_only"]
    summary = aggregate(runs)
    for method in runs:
        mine = [r for r in rows if r["method"] == method]
        assert [int(r["seed"]) for r in mine] == list(range(5))
        for column, key in (("test/acc", "acc"), ("val/acc", "val_acc")):
            stats = summary_stats([float(r[column]) for r in mine])
            assert stats["mean"] == pytest.approx(summary[method][key]["mean"], abs=1e-12)
            assert stats["ci95"] == pytest.approx(summary[method][key]["ci95"], abs=1e-12)
    baseline = [r for r in rows if r["method"] == "baseline"]
    assert [float(r["test/acc_visual"]) for r in baseline] == [
        runs["baseline"][s]["test"]["acc_visual"] for s in range(5)
    ]
    assert rows[-1]["test/acc_visual"] == ""  # a unimodal reference has no branch figures
