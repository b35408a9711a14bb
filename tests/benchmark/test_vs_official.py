"""benchmarks/vs_official.py: the avbalance side of ``--quick`` on a tiny generated set (no official
repository), the video encoding that makes both sides see the same frames, and the summaries."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avbalance.data.prepare.video import read_video_frames

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


vs_official = load("vs_official")
sides = load("vs_official_sides")
REFBENCH = Path(os.environ.get("REFBENCH_DIR", vs_official.DEFAULT_REFBENCH))


@pytest.mark.parametrize("fps", [1, 3])
def test_flv_keeps_exactly_the_official_frames(tmp_path, fps):
    rng = np.random.default_rng(fps)
    colours = [rng.integers(0, 256, 3) for _ in range(2 * fps + 1)]  # 2 s and a bit, like a short clip
    paths = []
    for index, colour in enumerate(colours):
        path = tmp_path / f"{index * 30 // fps:05d}.jpg"
        Image.fromarray(np.broadcast_to(colour, (360, 480, 3)).astype(np.uint8)).save(path, quality=95)
        paths.append(path)
    video = tmp_path / "clip.flv"
    vs_official.encode_flv(paths, video, fps)
    frames, _ = read_video_frames(video, fps, 32)  # what `avbalance prepare cremad --fps K` keeps
    assert len(frames) == len(colours)
    means = frames.reshape(len(frames), -1, 3).mean(axis=1)
    for mean, colour in zip(means, colours):
        assert np.abs(mean - colour).max() < 6  # the same frame, up to lossy coding


def test_summary_leaves_out_warmup_steps():
    steps = [sides.step_record(9.0, 9.0, 9.0, 16)]
    steps += [sides.step_record(d, c, 2 * c, 16) for d, c in [(0.1, 1.0), (0.3, 2.0), (0.2, 1.5)]]
    summary = sides.summarise(steps, warmup=1)
    assert summary["n_steps"] == 3
    assert summary["data"] == pytest.approx(0.2) and summary["total"] == pytest.approx(1.7)
    assert summary["compute_cpu"] == pytest.approx(3.0)
    assert summary["samples_per_s"] == pytest.approx(16 / 1.7)
    assert sides.summarise(steps[:1], warmup=1)["n_steps"] == 0


def test_steps_that_shared_the_cpu_are_left_out_as_the_harness_does():
    steps = [sides.step_record(0.1, 1.0, 2.0, 16, cpu_foreign=foreign, cpu_steal=0.0) for foreign in (0.0, 0.1, 0.9)]
    steps.append(sides.step_record(0.1, 5.0, 10.0, 16, cpu_foreign=0.8, cpu_steal=0.0))
    summary = sides.summarise(steps, warmup=0, max_foreign=0.25)
    assert summary["n_steps"] == 2 and summary["n_excluded"] == 2 and summary["total"] == pytest.approx(1.1)
    assert sides.summarise(steps, warmup=0)["n_steps"] == 4  # no limit: every step


def test_other_load_is_what_the_machine_used_beyond_this_process():
    ticks = os.sysconf("SC_CLK_TCK")
    before, after = (10.0, 1000, 5, 300), (12.0, 1000 + 3 * ticks, 5 + ticks // 2, 300 + 2 * ticks)
    foreign, steal = sides.other_load(before, after)
    assert foreign == pytest.approx(0.5) and steal == pytest.approx(0.25, abs=0.01)
    assert sides.other_load(None, after) == (None, None)
    sample = sides.machine_sample()
    if sample is not None:  # Linux: a real sample, this process's ticks within the machine's
        assert sample[3] <= sample[1] and sample[0] > 0


def test_unknown_configuration_is_one_line_error(capsys):
    assert vs_official.main(["--configs", "baseline-f2"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "'baseline-f2'" in error and "baseline-f1" in error


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_device_is_one_line_error(capsys):
    assert vs_official.main(["--accelerator", "cuda"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--accelerator cuda" in error and "no CUDA device" in error


@pytest.mark.skipif(not (REFBENCH / "make_data.py").is_file(), reason="the refbench harness is not on this machine")
def test_quick_avbalance_side_without_official_repository(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("REF_OGM_REPO", raising=False)
    out = tmp_path / "vs_official.json"
    args = ["--quick", "--n-train", "5", "--n-test", "1", "--batch-size", "2", "--epochs", "1"]
    args += ["--loader-samples", "3", "--prepare-workers", "1", "--refbench", str(REFBENCH)]
    args += ["--data", str(tmp_path / "data"), "--work", str(tmp_path / "work"), "--out", str(out)]
    assert vs_official.main(args) == 0
    printed = capsys.readouterr().out
    assert "REF_OGM_REPO is not set" in printed and "| baseline-f1 | avbalance |" in printed

    document = json.loads(out.read_text())
    assert {"official", "avbalance", "bare_loop", "ratio", "engine_overhead", "machine", "command"} <= set(document)
    assert document["official"] == {} and document["ratio"] == {"baseline-f1": None}
    assert set(document["avbalance"]) == set(document["bare_loop"]) == {"baseline-f1"}
    for side in ("avbalance", "bare_loop"):
        details = document["details"]["baseline-f1"][side]
        # 5 train clips less one carved out for validation: two batches of 2; the first is warm-up
        assert details["n_steps"] == 1 and details["batch_size"] == 2
        assert document[side]["baseline-f1"] == pytest.approx(2 / details["total"])
        assert document[side]["baseline-f1"] > 0
        assert details["peak_rss_mib"] > 0
    overhead = document["engine_overhead"]["baseline-f1"]
    assert overhead == pytest.approx(document["bare_loop"]["baseline-f1"] / document["avbalance"]["baseline-f1"])
    assert document["loader_samples_per_s"]["avbalance"]["f1"] > 0
    assert document["loader_samples_per_s"]["official"] == {}
    for side in ("avbalance", "bare_loop"):
        assert document["peak_rss_mib"][side]["baseline-f1"] == document["details"]["baseline-f1"][side]["peak_rss_mib"]
    assert document["loader_ratio"] == {"f1": None} and document["targets_met"]["ratio"] is None
    assert set(document["keys"]) >= {"ratio", "engine_overhead", "peak_rss_mib", "loader_ratio"}
    assert document["machine"]["batch_size"] == 2 and "--quick" in document["command"]
