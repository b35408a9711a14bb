"""benchmarks/engine_overhead.py: both sides in one process, in turn, and the statistics of the rounds."""

import json
import math
import os
import time
from pathlib import Path

import pytest

from avb_testing import load_benchmark

overhead = load_benchmark("engine_overhead")
sides = load_benchmark("vs_official_sides")
REFBENCH = Path(os.environ.get("REFBENCH_DIR", load_benchmark("vs_official").DEFAULT_REFBENCH))


def steps_of(totals: list[float], batch: int = 16) -> list[dict]:
    return [sides.step_record(0.0, total, total, batch) for total in totals]


def test_rounds_mean_is_the_geometric_mean_with_a_t_interval():
    result = overhead.mean_interval([math.exp(0.1), math.exp(-0.1)])
    # log ratios +-0.1: mean 0, standard deviation 0.1 * sqrt(2), t(0.975, 1 degree of freedom) = 12.706
    half = 12.7062 * 0.1 * math.sqrt(2) / math.sqrt(2)
    assert result["geometric_mean"] == pytest.approx(1.0)
    assert result["low"] == pytest.approx(math.exp(-half), rel=1e-4)
    assert result["high"] == pytest.approx(math.exp(half), rel=1e-4)
    assert overhead.mean_interval([1.2]) == {"geometric_mean": pytest.approx(1.2), "low": None, "high": None}


def test_report_pools_the_rounds_without_their_warmup_steps():
    steps = {
        "avbalance": [steps_of([9.0, 2.0, 2.2, 2.0]), steps_of([9.0, 2.1, 2.1, 2.3])],
        "bare_loop": [steps_of([9.0, 2.0, 2.0, 1.9]), steps_of([9.0, 2.0, 2.1, 2.0])],
    }
    report = overhead.config_report(steps, warmup=1)
    # pooled medians: engine 2.1 s (2.0 2.2 2.0 2.1 2.1 2.3), bare loop 2.0 s (2.0 2.0 1.9 2.0 2.1 2.0)
    assert report["pooled"]["avbalance"]["total"] == pytest.approx(2.1)
    assert report["pooled"]["bare_loop"]["total"] == pytest.approx(2.0)
    assert report["engine_overhead"] == pytest.approx(2.1 / 2.0)
    assert report["engine_overhead_by_round"] == [pytest.approx(2.0 / 2.0), pytest.approx(2.1 / 2.0)]
    assert report["rounds_mean"]["geometric_mean"] == pytest.approx(math.sqrt(1.0 * 1.05))
    assert report["step_seconds_by_round"]["avbalance"][1] == [9.0, 2.1, 2.1, 2.3]  # kept whole, warm-up included


def test_steps_that_shared_the_cpu_are_left_out_of_rounds_and_pool():
    def loaded(totals_and_load):
        return [
            sides.step_record(0.0, total, total, 16, cpu_foreign=load, cpu_steal=0.0) for total, load in totals_and_load
        ]

    steps = {
        "avbalance": [loaded([(9.0, 0.0), (2.0, 0.0), (4.0, 0.9), (2.2, 0.1)])],
        "bare_loop": [loaded([(9.0, 0.0), (2.0, 0.0), (2.0, 0.2), (5.0, 1.0)])],
    }
    report = overhead.config_report(steps, warmup=1, max_foreign=0.25)
    assert report["pooled"]["avbalance"]["n_excluded"] == 1 and report["pooled"]["bare_loop"]["n_excluded"] == 1
    assert report["pooled"]["avbalance"]["total"] == pytest.approx(2.1)  # 2.0 and 2.2; 4.0 shared the CPU
    assert report["engine_overhead_by_round"] == [pytest.approx(2.1 / 2.0)]
    assert report["other_load_cores_by_round"]["bare_loop"] == [[0.0, 0.0, 0.2, 1.0]]
    assert overhead.config_report(steps, warmup=1)["pooled"]["avbalance"]["total"] == pytest.approx(2.2)  # all kept


def test_step_phases_split_the_compute_at_the_backward_passes():
    phases = sides.step_phases(10.0, [(10.3, 10.9), (11.0, 11.2)], 11.25, method_seconds=0.03)
    assert phases == {
        "forward": pytest.approx(0.3),  # start to the first backward
        "backward": pytest.approx(0.6 + 0.2),  # both passes, not the gap between them
        "method": 0.03,
        "step": pytest.approx(0.05 - 0.03),  # the last backward's end to the step's end, less the method's work
    }
    assert sides.step_phases(10.0, [], 11.0) == {}  # no backward (nothing to split)
    assert sides.step_phases(10.0, [(10.3, math.nan)], 11.0) == {}  # a backward that did not finish


def test_gradient_work_clock_times_the_methods_after_backward():
    class Slow:
        def after_backward(self, model, output, batch):
            time.sleep(0.02)
            return model

    method = Slow()
    clock = sides.GradientWorkClock(method)
    assert method.after_backward("model", None, None) == "model"  # the work itself is unchanged
    method.after_backward("model", None, None)
    assert 0.04 <= clock.take() < 1.0  # both calls
    assert clock.take() == 0.0  # taken
    later = sides.GradientWorkClock(method)  # the next side on a shared model: replaces, not nests
    method.after_backward("model", None, None)
    assert clock.take() == 0.0 and 0.02 <= later.take() < 1.0


def phased_steps(data: float, forward: float, backward: float, method: float, step: float) -> list[dict]:
    compute = forward + backward + method + step
    phases = {"forward": forward, "backward": backward, "method": method, "step": step}
    return [sides.step_record(data, compute, compute, 16) | phases for _ in range(3)]


def test_outside_the_model_is_the_engines_extra_data_and_step_time():
    steps = {
        "avbalance": [phased_steps(0.010, 0.35, 0.80, 0.12, 0.016)],
        "bare_loop": [phased_steps(0.007, 0.30, 0.70, 0.09, 0.010)],
    }
    outside = overhead.config_report(steps, warmup=1)["outside_the_model"]
    assert outside["data_and_step_ms"] == {"avbalance": pytest.approx(26.0), "bare_loop": pytest.approx(17.0)}
    assert outside["engine_extra_ms"] == pytest.approx(9.0)  # the slower forward, backward and method do not count
    assert outside["overhead"] == pytest.approx((1107.0 + 9.0) / 1107.0)
    assert outside["phases_ms"]["bare_loop"] == {
        "data": pytest.approx(7.0),
        "forward": pytest.approx(300.0),
        "backward": pytest.approx(700.0),
        "method": pytest.approx(90.0),
        "step": pytest.approx(10.0),
    }
    without_phases = {"avbalance": [steps_of([2.0, 2.0])], "bare_loop": [steps_of([2.0, 2.0])]}
    assert overhead.config_report(without_phases, warmup=1)["outside_the_model"] is None


def test_sides_swap_order_every_other_round():
    assert overhead.sides_in_turn(0, overhead.SIDES) == ("avbalance", "bare_loop")
    assert overhead.sides_in_turn(1, overhead.SIDES) == ("bare_loop", "avbalance")


@pytest.mark.parametrize("shared", [False, True])
def test_shared_model_gives_both_sides_of_a_round_one_run(shared, tmp_path, monkeypatch):
    built, trained = [], []

    def fake_build_run(config):
        built.append(config.out)
        return object()

    def fake_time_lightning(config, run=None):
        trained.append(("avbalance", config.out, run))
        return []

    def fake_time_bare(run, config):
        trained.append(("bare_loop", config.out, run))
        return []

    monkeypatch.setattr(overhead, "build_run", fake_build_run)
    monkeypatch.setattr(overhead, "time_lightning", fake_time_lightning)
    monkeypatch.setattr(overhead, "time_bare", fake_time_bare)
    collected = []
    monkeypatch.setattr(overhead.gc, "collect", lambda: collected.append(len(trained)))
    args = overhead.parse_args(["--rounds", "2", "--width", "4", "--layers", "1,1"] + ["--shared-model"] * shared)
    steps = overhead.measure_config(args, "baseline-f1", tmp_path / "cache", tmp_path)
    assert steps == {"avbalance": [[], []], "bare_loop": [[], []]}
    assert [side for side, _, _ in trained] == ["avbalance", "bare_loop", "bare_loop", "avbalance"]
    assert len({out for _, out, _ in trained}) == 4  # every side's run writes to a folder of its own
    assert collected == [0, 1, 2, 3]  # the previous run's garbage is freed before every side
    if shared:  # one run per round, handed to both of its sides
        assert len(built) == 2
        runs = [run for _, _, run in trained]
        assert runs[0] is runs[1] and runs[2] is runs[3] and runs[0] is not runs[2]
    else:  # the engine builds its own run; the bare loop gets a fresh one
        assert [run for side, _, run in trained if side == "avbalance"] == [None, None]
        assert len(built) == 2 and all(run is not None for side, _, run in trained if side == "bare_loop")


def test_combine_pools_the_rounds_of_several_results_files(tmp_path, capsys):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"configs": {"x": {"engine_overhead_by_round": [1.1, 0.9]}}}))
    second.write_text(
        json.dumps({"configs": {"x": {"engine_overhead_by_round": [1.2]}, "y": {"engine_overhead_by_round": [1.0]}}})
    )
    argv = ["--combine", str(first), str(second), "--out", str(tmp_path / "untouched.json")]
    assert overhead.main(argv) == 0
    document = overhead.run(overhead.parse_args(argv))
    assert document["x"]["rounds"] == 3 and document["y"]["rounds"] == 1
    assert document["x"]["geometric_mean"] == pytest.approx((1.1 * 0.9 * 1.2) ** (1 / 3))
    assert document["y"]["low"] is None  # one round has no interval
    assert document["all"]["rounds"] == 4
    assert document["all"]["geometric_mean"] == pytest.approx((1.1 * 0.9 * 1.2 * 1.0) ** 0.25)
    assert document["all"]["low"] < document["all"]["geometric_mean"] < document["all"]["high"]
    assert "| x | 3 |" in capsys.readouterr().out
    assert not (tmp_path / "untouched.json").exists()


@pytest.mark.parametrize("content, message", [(None, "cannot read it"), ("{}", "not a results file")])
def test_combine_names_a_file_it_cannot_use(content, message, tmp_path, capsys):
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    assert overhead.main(["--combine", str(path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(path) in error and message in error


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--configs", "baseline-f2"], "'baseline-f2'"),
        (["--rounds", "0"], "--rounds and --epochs must be at least 1"),
        (["--refbench", "/nonexistent"], "no make_data.py there"),
    ],
)
def test_bad_settings_are_one_line_errors(argv, message, capsys):
    assert overhead.main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error


@pytest.mark.skipif(not (REFBENCH / "make_data.py").is_file(), reason="the refbench harness is not on this machine")
def test_both_sides_train_in_turn_in_one_process(tmp_path, capsys):
    out = tmp_path / "engine_overhead.json"
    argv = ["--configs", "baseline-f1", "--rounds", "2", "--epochs", "1", "--width", "4", "--layers", "1,1"]
    argv += ["--n-train", "5", "--n-test", "1", "--batch-size", "2", "--prepare-workers", "1"]
    argv += ["--refbench", str(REFBENCH), "--data", str(tmp_path / "data"), "--out", str(out)]
    assert overhead.main(argv) == 0
    printed = capsys.readouterr().out
    order = [line.rsplit(": ", 1)[1] for line in printed.splitlines() if line.startswith("[engine_overhead] baseline")]
    assert order == ["avbalance", "bare_loop", "bare_loop", "avbalance"]
    assert "| baseline-f1 |" in printed

    document = json.loads(out.read_text())
    result = document["configs"]["baseline-f1"]
    for side in ("avbalance", "bare_loop"):
        # 5 train clips less one carved out for validation: two batches of 2 per run, the first is warm-up
        assert [len(run) for run in result["step_seconds_by_round"][side]] == [2, 2]
        assert result["pooled"][side]["n_steps"] == 2 and result["pooled"][side]["batch_size"] == 2
    rates = {side: result["pooled"][side]["samples_per_s"] for side in ("avbalance", "bare_loop")}
    assert document["engine_overhead"]["baseline-f1"] == pytest.approx(rates["bare_loop"] / rates["avbalance"])
    by_round = result["samples_per_s_by_round"]
    assert result["engine_overhead_by_round"] == [
        pytest.approx(bare / engine) for bare, engine in zip(by_round["bare_loop"], by_round["avbalance"])
    ]
    low, high = result["rounds_mean"]["low"], result["rounds_mean"]["high"]
    assert low < result["rounds_mean"]["geometric_mean"] < high
    assert document["all_rounds_mean"]["geometric_mean"] == pytest.approx(
        math.prod(result["engine_overhead_by_round"]) ** 0.5
    )
    assert "every configuration's rounds (2)" in printed
    for side in ("avbalance", "bare_loop"):  # every step splits into its phases exactly
        for totals, phases in zip(result["step_seconds_by_round"][side], result["phase_seconds_by_round"][side]):
            assert [sum(step.values()) for step in phases] == pytest.approx(totals, rel=1e-9)
            assert all(step.keys() == set(overhead.PHASES) for step in phases)
            assert all(min(step.values()) > 0 for step in phases)  # the baseline's after_backward is timed too
    outside = result["outside_the_model"]
    assert document["engine_overhead_outside_the_model"]["baseline-f1"] == pytest.approx(outside["overhead"])
    assert "engine's extra in data + step" in printed
    assert document["machine"]["rounds"] == 2 and document["target"] == 1.03
