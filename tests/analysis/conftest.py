"""Quick synthetic training runs shared by the analysis tests (trained once per test process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from avbalance.cli import main

# Small enough to train in seconds, long enough for the encoders to learn something.
QUICK = [
    "--epochs",
    "4",
    "--lr",
    "0.05",
    "--set",
    "data.options.train_size=400",
    "--set",
    "data.options.test_size=400",
    "--set",
    "trainer.progress_bar=false",
]


def train_quick(root: Path, name: str, *args: str) -> Path:
    assert main(["train", *args, *QUICK, "--out", str(root / name)]) == 0
    return root / name


@pytest.fixture(scope="session")
def analysis_runs_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("analysis_runs")


@pytest.fixture(scope="session")
def baseline_run(analysis_runs_root) -> Path:
    return train_quick(analysis_runs_root, "baseline_seed0", "--method", "baseline", "--seed", "0")


@pytest.fixture(scope="session")
def baseline_seed1_run(analysis_runs_root) -> Path:
    return train_quick(analysis_runs_root, "baseline_seed1", "--method", "baseline", "--seed", "1")


@pytest.fixture(scope="session")
def ogm_ge_run(analysis_runs_root) -> Path:
    return train_quick(analysis_runs_root, "ogm_ge", "--method", "ogm_ge", "--alpha", "0.5")


@pytest.fixture(scope="session")
def visual_only_run(analysis_runs_root) -> Path:
    return train_quick(analysis_runs_root, "visual_only", "--modalities", "visual")
