"""Quick mode on the real data in ../shared/data (skipped when it is absent)."""

import json
import os
from pathlib import Path

import pytest

from avbalance.benchmark import get_suite, run_suite
from avbalance.benchmark.runner import default_cache

RAW = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.mark.parametrize("name", ["grid-digit", "grid-command", "avmnist", "grid-digit-seq"])
def test_quick_suite_on_real_data(name, tmp_path):
    suite = get_suite(name)
    if not (RAW / suite.raw_required).exists():
        pytest.skip(f"real data absent: {RAW / suite.raw_required} not found (see ../shared/data/README.md)")
    # The prepared cache is shared with the benchmark command (preparing takes minutes), unless
    # AVBALANCE_BENCHMARK_CACHE points elsewhere.
    cache = Path(os.environ.get("AVBALANCE_BENCHMARK_CACHE", default_cache(suite).parent)) / name
    summary = run_suite(suite, tmp_path, methods=["baseline"], quick=True, raw=RAW, cache=cache, report=lambda m: None)
    assert set(summary) == {"baseline", "audio_only", "visual_only"}
    metrics = json.loads((tmp_path / "runs" / "baseline" / "seed0" / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["acc"] <= 1.0 and "acc_audio" in metrics["test"]
    assert (tmp_path / "README.md").is_file() and (tmp_path / "accuracy.png").is_file()
