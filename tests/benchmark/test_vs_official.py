"""benchmarks/vs_official.py: the avbalance side of ``--quick`` on a tiny generated set (no official
repository), the video encoding that makes both sides see the same frames, and the summaries."""

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avb_testing import BENCHMARKS, load_benchmark
from avbalance.data.prepare.video import read_video_frames

vs_official = load_benchmark("vs_official")
sides = load_benchmark("vs_official_sides")
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
    scratch = tmp_path / "scratch"  # the temp folder; without --work the run's caches go there
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "vs_official.json"
    args = ["--quick", "--n-train", "5", "--n-test", "1", "--batch-size", "2", "--epochs", "1"]
    args += ["--loader-samples", "3", "--prepare-workers", "1", "--refbench", str(REFBENCH)]
    args += ["--data", str(tmp_path / "data"), "--out", str(out), "--width", "4", "--layers", "1,1"]
    assert vs_official.main(args) == 0
    printed = capsys.readouterr().out
    assert "REF_OGM_REPO is not set" in printed and "| baseline-f1 | avbalance |" in printed
    assert list(scratch.iterdir()) == []  # hundreds of MB at full size: not left behind

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
    assert document["machine"]["model"] == {"width": 4, "layers": [1, 1]}
    for side in ("avbalance", "bare_loop"):  # one round: its run is the whole side
        assert document["details"]["baseline-f1"][side]["samples_per_s_by_run"] == [document[side]["baseline-f1"]]
    assert document["ratio_by_round"] == {"baseline-f1": []}
    assert document["engine_overhead_by_round"] == {"baseline-f1": [pytest.approx(overhead)]}


def test_a_smaller_model_reaches_every_avbalance_side(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(vs_official.subprocess, "run", lambda command, **kwargs: commands.append(command))
    monkeypatch.setattr(vs_official, "saved_result", lambda path: {})
    args = vs_official.parse_args(["--width", "8", "--layers", "1,1,1,1", "--work", str(tmp_path)])
    vs_official.run_side(args, "lightning", "baseline-f1-r0", ["--config", "baseline-f1"])
    side_args = sides.parse_args([*commands[0][2:], "--cache", "cache"])
    assert (side_args.width, side_args.layers) == (8, [1, 1, 1, 1])
    config = sides.run_config("ogm_ge", 3, "cache", str(tmp_path), 16, 1, 0, "cpu", side_args.width, side_args.layers)
    assert (config.model.width, config.model.layers) == (8, [1, 1, 1, 1])
    official = sides.run_config("ogm_ge", 3, "cache", str(tmp_path), 16, 1, 0)
    assert (official.model.width, official.model.layers) == (64, [2, 2, 2, 2])


def test_smaller_models_are_refused_with_the_official_loop_and_bad_layers_in_one_line(tmp_path, capsys):
    repository = tmp_path / "repo"
    repository.mkdir()
    assert vs_official.main(["--width", "8", "--ref-repo", str(repository)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "official-size model" in error and "REF_OGM_REPO" in error
    with pytest.raises(SystemExit) as stop:
        vs_official.parse_args(["--layers", "2,0"])
    assert (
        stop.value.code == 2
        and "--layers: blocks per stage as positive whole numbers, e.g. 2,2,2,2; got '2,0'" in capsys.readouterr().err
    )


on_cuda = load_benchmark("refbench_on_cuda")
needs_harness = pytest.mark.skipif(
    not (REFBENCH / "launch.py").is_file(), reason="the refbench harness is not on this machine"
)


@needs_harness
def test_cuda_overlay_runs_the_harness_bench_with_the_cuda_launcher(tmp_path):
    folder = on_cuda.cuda_overlay(REFBENCH, tmp_path / "overlay")
    assert sorted(path.name for path in folder.iterdir()) == ["bench.py", "launch.py", "make_data.py"]
    for name in ("bench.py", "make_data.py"):
        assert (folder / name).resolve() == (REFBENCH / name).resolve()
    assert (folder / "launch.py").resolve() == (BENCHMARKS / "refbench_on_cuda.py").resolve()
    assert on_cuda.cuda_overlay(REFBENCH, folder) == folder  # made again over an existing one


PATCH_CHECK = """
import sys, torch
sys.path.insert(0, {benchmarks!r})
import refbench_on_cuda as on_cuda
launcher = on_cuda.harness_launcher({refbench!r})
install = launcher.install_torch_patches
if sys.argv[1] == "cuda":
    install = on_cuda.keeping_devices(install)
originals = (torch.Tensor.to, torch.nn.Module.cuda, torch.utils.data.DataLoader.__init__, torch.Tensor.backward)
install(0, 0)
print("to kept", torch.Tensor.to is originals[0], "cuda kept", torch.nn.Module.cuda is originals[1])
print("loader patched", torch.utils.data.DataLoader.__init__ is not originals[2])
print("backward patched", torch.Tensor.backward is not originals[3])
try:
    print("moved to", torch.zeros(1).to("cuda").device.type)
except (RuntimeError, AssertionError):
    print("moved to cuda: refused")
"""


@needs_harness
@pytest.mark.skipif(torch.cuda.is_available(), reason="tells the two launchers apart by a refused CUDA move")
def test_cuda_launcher_keeps_device_moves_and_every_other_harness_patch(tmp_path):
    """The harness's patches map a CUDA move to the CPU; the CUDA launcher's leave torch's own moves
    (refused here: no CUDA) and keep the timing and worker patches."""
    import subprocess

    script = tmp_path / "check.py"
    script.write_text(PATCH_CHECK.format(benchmarks=str(BENCHMARKS), refbench=str(REFBENCH)))
    printed = {}
    for launcher in ("harness", "cuda"):
        run = subprocess.run([sys.executable, str(script), launcher], capture_output=True, text=True, check=True)
        printed[launcher] = run.stdout
    assert "to kept False cuda kept False" in printed["harness"] and "moved to cpu" in printed["harness"]
    assert "to kept True cuda kept True" in printed["cuda"] and "moved to cuda: refused" in printed["cuda"]
    for text in printed.values():
        assert "loader patched True" in text and "backward patched True" in text


def test_official_side_on_cuda_runs_the_harness_from_the_overlay(tmp_path, monkeypatch):
    """With --accelerator cuda the harness's bench.py runs from the overlay, told where the harness is."""
    calls = []

    def fake_run(command, check, env):
        calls.append((command, env))
        out = Path(command[command.index("--out") + 1])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"runs": []}))

    monkeypatch.setattr(vs_official.subprocess, "run", fake_run)
    harness = tmp_path / "harness"
    harness.mkdir()
    for name in ("bench.py", "make_data.py"):
        (harness / name).write_text("")
    args = vs_official.parse_args(["--refbench", str(harness), "--work", str(tmp_path / "work")])
    args.ref_repo, args.ref_python = str(tmp_path / "repo"), sys.executable
    for accelerator in ("cpu", "cuda"):
        args.accelerator = accelerator
        assert vs_official.official_side(args, "ogm_ge-f3", repeat=1) == {"runs": []}
    (cpu_command, cpu_env), (cuda_command, cuda_env) = calls
    assert cpu_command[1] == str(harness / "bench.py")
    assert cuda_command[1] == str(tmp_path / "work" / "refbench-cuda" / "bench.py")
    assert cuda_env["REFBENCH_DIR"] == str(harness.resolve()) and cuda_env["REF_OGM_REPO"] == args.ref_repo
    assert cpu_command[2:] == cuda_command[2:]  # the same run otherwise
    assert cuda_command[cuda_command.index("--ogm-modes") + 1] == "OGM_GE"
    assert cuda_command[cuda_command.index("--fps") + 1] == "3"
    assert cuda_command[cuda_command.index("--repeats") + 1] == "1"  # one run per round
    assert cuda_command[cuda_command.index("--out") + 1].endswith("official-ogm_ge-f3-r1.json")


def harness_run(totals, foreign=0.0, rc=0, maxrss_kb=2048 * 1024):
    """A harness run document entry: its step records (data 0.1 s each) and its peak RSS."""
    steps = [
        {"type": "step", "bs": 16, "data": 0.1, "compute": t - 0.1, "total": t, "modulation": 0.05, "cpu_foreign": f}
        for t, f in zip(totals, foreign if isinstance(foreign, list) else [foreign] * len(totals))
    ]
    return {"rc": rc, "time_v": {"maxrss_kb": maxrss_kb}, "records": [{"type": "env"}, *steps, {"type": "run"}]}


def test_official_steps_are_pooled_as_the_avbalance_sides_are():
    """Each run's first step left out, steps with other load left out, failed runs ignored, medians of
    the rest and the largest peak RSS."""
    documents = [
        {"runs": [harness_run([9.0, 2.0, 3.0], maxrss_kb=1024 * 1024)]},
        {"runs": [harness_run([8.0, 4.0, 5.0, 7.0], foreign=[0, 0, 0, 0.9], maxrss_kb=3 * 1024 * 1024)]},
        {"runs": [harness_run([1.0, 1.0], rc=1)]},
    ]
    summary = vs_official.official_summary(documents, warmup=1, max_foreign=0.25)
    assert summary["n_steps"] == 4 and summary["n_excluded"] == 1 and summary["n_runs"] == 2
    assert summary["total"] == pytest.approx(3.5)  # median of 2, 3, 4, 5
    assert summary["samples_per_s"] == pytest.approx(16 / 3.5)
    assert summary["data"] == pytest.approx(0.1) and summary["modulation"] == pytest.approx(0.05)
    assert summary["peak_rss_mib"] == pytest.approx(3072) and "compute_cpu" not in summary
    assert vs_official.official_summary([{"runs": []}], 1, 0.25)["n_steps"] == 0


def test_ratios_round_by_round_pair_each_rounds_runs():
    """Each round's avbalance run against that round's official run (and bare against avbalance);
    a run with no kept step gives no ratio, and a side not measured gives none at all."""
    details = {
        "baseline-f1": {
            "official": {"samples_per_s_by_run": [4.0, 5.0, None]},
            "avbalance": {"samples_per_s_by_run": [6.0, 5.5, 6.0]},
            "bare_loop": {"samples_per_s_by_run": [6.3, 5.5, 5.4]},
        },
        "ogm_ge-f1": {"official": None, "avbalance": {"samples_per_s_by_run": [2.0]}, "bare_loop": None},
    }
    ratios = vs_official.by_round(details, "avbalance", "official")
    assert ratios == {"baseline-f1": [pytest.approx(1.5), pytest.approx(1.1), None], "ogm_ge-f1": []}
    overhead = vs_official.by_round(details, "bare_loop", "avbalance")
    assert overhead["baseline-f1"] == [pytest.approx(1.05), pytest.approx(1.0), pytest.approx(0.9)]
    document = {"ratio_by_round": ratios, "engine_overhead_by_round": overhead}
    assert vs_official.round_lines(document) == [
        "",
        "baseline-f1 vs official, round by round: 1.500 1.100 -",
        "baseline-f1 engine overhead, round by round: 1.050 1.000 0.900",
    ]


@pytest.mark.skipif(not (REFBENCH / "make_data.py").is_file(), reason="the refbench harness is not on this machine")
def test_report_rebuilt_from_the_runs_saved_in_work(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("REF_OGM_REPO", raising=False)
    args = ["--quick", "--n-train", "5", "--n-test", "1", "--batch-size", "2", "--epochs", "1", "--loader-samples", "3"]
    args += ["--prepare-workers", "1", "--refbench", str(REFBENCH), "--data", str(tmp_path / "data")]
    args += ["--work", str(tmp_path / "work")]
    assert vs_official.main([*args, "--out", str(tmp_path / "measured.json")]) == 0
    capsys.readouterr()
    (tmp_path / "data").rename(tmp_path / "moved")  # nothing is prepared or measured again
    assert vs_official.main([*args, "--from-work", "--out", str(tmp_path / "rebuilt.json")]) == 0
    assert "[vs_official] lightning" not in capsys.readouterr().out
    measured, rebuilt = (json.loads((tmp_path / name).read_text()) for name in ("measured.json", "rebuilt.json"))
    for key in ("avbalance", "bare_loop", "engine_overhead", "details", "loader_samples_per_s"):
        assert rebuilt[key] == measured[key], key


def test_report_from_work_needs_the_saved_runs(tmp_path, capsys):
    assert vs_official.main(["--quick", "--from-work"]) == 2
    assert "give --work" in capsys.readouterr().err
    assert vs_official.main(["--quick", "--from-work", "--work", str(tmp_path / "absent")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert vs_official.main(["--quick", "--from-work", "--work", str(tmp_path / "empty")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "result.json: no saved result (that run did not finish)" in error


def test_rounds_run_every_configuration_with_the_side_order_reversed_every_other_round(monkeypatch):
    """Round by round through the configurations, so that a slow spell of the machine does not fall on
    one configuration; the sides' order flips every round; the cache loader is timed once per frame
    rate, in its first bare run; every side pools its runs in round order."""
    calls = []

    def fake_run(args, side, label, extra):
        calls.append((side, label, "--samples" in extra))
        loader = {"samples_per_s": 100.0} if "--samples" in extra else None
        step = {"data": 0.1, "compute": 0.9, "total": 1.0, "bs": 2}
        return {"steps": [step, step], "peak_rss_mib": 10.0, "loader": loader}

    def fake_official(args, name, repeat):
        calls.append(("official", f"{name}-r{repeat}", False))
        return {"runs": []}

    monkeypatch.setattr(vs_official, "run_side", fake_run)
    monkeypatch.setattr(vs_official, "official_side", fake_official)
    args = vs_official.parse_args(["--repeats", "2", "--configs", "baseline-f1,ogm_ge-f1,baseline-f3"])
    args.ref_repo = "official"
    details, loaders = vs_official.measure_all(args, args.configs.split(","), {1: "c1", 3: "c3"}, None)
    assert [f"{side} {label}" for side, label, _ in calls] == [
        "official baseline-f1-r0", "lightning baseline-f1-r0", "bare baseline-f1-r0",
        "official ogm_ge-f1-r0", "lightning ogm_ge-f1-r0", "bare ogm_ge-f1-r0",
        "official baseline-f3-r0", "lightning baseline-f3-r0", "bare baseline-f3-r0",
        "bare baseline-f1-r1", "lightning baseline-f1-r1", "official baseline-f1-r1",
        "bare ogm_ge-f1-r1", "lightning ogm_ge-f1-r1", "official ogm_ge-f1-r1",
        "bare baseline-f3-r1", "lightning baseline-f3-r1", "official baseline-f3-r1",
    ]  # fmt: skip
    assert [label for _, label, timed_loader in calls if timed_loader] == ["baseline-f1-r0", "baseline-f3-r0"]
    assert loaders == {"avbalance": {"f1": 100.0, "f3": 100.0}, "official": {}}
    assert details["ogm_ge-f1"]["avbalance"]["n_runs"] == 2 and details["ogm_ge-f1"]["official"]["n_runs"] == 0
    assert details["baseline-f3"]["bare_loop"]["samples_per_s_by_run"] == [pytest.approx(2.0)] * 2


def test_loader_passes_last_long_enough_for_a_fast_loader():
    """Each timed pass cycles over the samples until min_seconds are up, so that a loader reading a
    sample in microseconds is not timed over a few of them; the rate is the reads over the time."""
    import time

    class Slow:
        def __init__(self, seconds):
            self.seconds, self.reads = seconds, 0

        def __len__(self):
            return 4

        def __getitem__(self, index):
            self.reads += 1
            time.sleep(self.seconds)

    fast = Slow(0.0)
    rate = sides.loader_rate(fast, samples=10, passes=3, min_seconds=0.05)
    assert rate["samples"] == 3 and rate["passes"] == 3 and len(rate["rates"]) == 3
    assert all(reads % 3 == 0 and reads > 3 for reads in rate["reads"])  # whole cycles, more than one
    assert fast.reads == 4 + sum(rate["reads"])  # one untimed warm-up pass over all four
    slow = Slow(0.02)  # one cycle already outlasts min_seconds: exactly one per pass
    rate = sides.loader_rate(slow, samples=10, passes=2, min_seconds=0.05)
    assert rate["reads"] == [3, 3]
    assert 0 < rate["samples_per_s"] <= 50  # at most one read per 20 ms
    assert sides.loader_rate(Slow(0.0), samples=0, passes=2)["samples_per_s"] == 0.0
