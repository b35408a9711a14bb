"""The engine's own cost per training step: ``avbalance train`` against the bare loop in one process.

``vs_official.py`` runs every side in a process of its own, a minute or more apart; on a shared CPU
the rounds' engine overhead there has a standard deviation of 5-10 %, which hides a 3 % target
unless very many rounds are pooled. Here both sides train in one process, in turn, so that nothing
that differs between processes (start-up, imports, memory layout, the machine's state minutes
apart) separates them:

* ``avbalance``: the Lightning engine as ``avbalance train`` builds it (the same callbacks, loggers
  and checkpoints), timed by a callback around every training batch;
* ``bare_loop``: the same model, loader, optimizer and method in a plain PyTorch loop.

A round trains each side once (``--epochs`` epochs), in turn, the order swapped every other round,
so that the machine's drift favours neither. By default each side builds its own run (model,
optimizer, loaders); with ``--shared-model`` the round's model is built once and both sides train it
(each with its own optimizer and loaders), so that where each build's weights land in memory does
not separate them: "same model, data, method" in the strictest sense. Each run's first
``--warmup`` steps are left out, and with ``--max-foreign C`` the steps during which other processes
used more than C cores (as ``vs_official.py`` does). Per configuration it reports the engine
overhead (bare loop / ``avbalance train`` samples per second) over the pooled steps, round by round,
and the geometric mean of the rounds with its 95 % confidence interval (Student's t over the rounds'
log ratios): what drift is left shows as the interval's width. The engine's own work per step
hardly depends on the method or the frames, so the rounds of every configuration together
(``all_rounds_mean``) bound its cost tighter.

Each step is also split into phases (``data``, ``forward``, ``backward``, ``method``, ``step``; see
``vs_official_sides.step_phases``). Two runs of the same code in one process draw speeds several per
cent apart (where their memory lands, the machine), and that spread lives in the model's forward and
backward and the method's gradient work, the same code on both sides; what the engine adds lives in
the data window (Lightning's fetcher, hooks and logging between steps) and the step phase (the
non-finite guard, Lightning's optimizer closure, the optimizer step). ``outside_the_model`` reports
the engine's extra milliseconds there and the overhead they alone make on the bare loop's step, a
figure far less noisy than the end-to-end ratio.

    python benchmarks/engine_overhead.py --rounds 8 --max-foreign 0.25 --shared-model   # the recorded run (6)
    python benchmarks/engine_overhead.py --configs baseline-f1 --rounds 2 --epochs 1   # a quick look
    python benchmarks/engine_overhead.py --combine run5.json run6.json   # several runs' rounds together

Data: the CREMA-D look-alike of ``vs_official.py`` (``--data``, generated with the refbench harness's
``make_data.py`` and prepared once per frame rate; reused when it is already there). Writes
``benchmarks/engine_overhead.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from scipy import stats

from avbalance.engine.config import RunConfig
from avbalance.engine.run import TrainingRun, build_run
from avbalance.errors import ConfigError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from vs_official import (  # noqa: E402
    add_data_args,
    command_line,
    config_names,
    exit_status,
    host,
    make_data,
    sides_in_turn,
)
from vs_official_sides import CONFIGS, add_model_size_args, run_config, summarise, time_bare, time_lightning  # noqa: E402

SIDES = ("avbalance", "bare_loop")
PHASES = ("data", "forward", "backward", "method", "step")  # a step's wall time (see step_phases)
TARGET = 1.03  # the engine within 3 % of the bare loop


def side_config(args: argparse.Namespace, name: str, cache: Path, out: Path) -> RunConfig:
    method, _, frames = CONFIGS[name]
    size = {"width": args.width, "layers": args.layers}
    return run_config(method, frames, str(cache), str(out), args.batch_size, args.epochs, args.num_workers, **size)


def train_side(side: str, config: RunConfig, run: TrainingRun | None = None) -> list[dict[str, float]]:
    """Every training step of one side's run: of ``run`` (model, method, data module) when given,
    otherwise of a fresh one; the optimizer and loaders are always the side's own."""
    if side == "avbalance":
        return time_lightning(config, run)
    return time_bare(run or build_run(config), config)


def measure_config(args: argparse.Namespace, name: str, cache: Path, work: Path) -> dict[str, list[list[dict]]]:
    """``{side: [the steps of each round]}`` for configuration ``name``; with ``--shared-model`` both
    sides of a round train one model (built once per round, in the same memory)."""
    steps: dict[str, list[list[dict]]] = {side: [] for side in SIDES}
    for round_index in range(args.rounds):
        shared = None
        if args.shared_model:
            shared = build_run(side_config(args, name, cache, work / f"{name}-r{round_index}"))
        for side in sides_in_turn(round_index, SIDES):
            print(f"[engine_overhead] {name} round {round_index + 1}/{args.rounds}: {side}", flush=True)
            config = side_config(args, name, cache, work / f"{name}-r{round_index}-{side}")
            # A finished Lightning run lives on in reference cycles (trainer, module, callbacks) with its
            # model and optimizer state until the collector runs: free it, so that every side starts
            # from a heap with nothing of the previous run in it.
            gc.collect()
            steps[side].append(train_side(side, config, shared))
    return steps


def mean_interval(ratios: list[float], confidence: float = 0.95) -> dict[str, float | None]:
    """Geometric mean of ``ratios`` and its ``confidence`` interval: Student's t over the log ratios
    (the rounds' ratios multiply, and a log makes 0.9 and 1/0.9 equally far from 1)."""
    logs = [math.log(value) for value in ratios]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return {"geometric_mean": math.exp(mean), "low": None, "high": None}
    half = stats.t.ppf(0.5 + confidence / 2, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return {"geometric_mean": math.exp(mean), "low": math.exp(mean - half), "high": math.exp(mean + half)}


def config_report(steps: dict[str, list[list[dict]]], warmup: int, max_foreign: float = math.inf) -> dict:
    """Pooled medians per side, the pooled overhead, the rounds' overheads and their mean's interval;
    steps during which other processes used more than ``max_foreign`` cores are left out."""
    pooled = {
        side: summarise([step for run in runs for step in run[warmup:]], 0, max_foreign) for side, runs in steps.items()
    }
    by_round = {
        side: [summarise(run, warmup, max_foreign).get("samples_per_s") for run in runs] for side, runs in steps.items()
    }
    rounds = [bare / engine for bare, engine in zip(by_round["bare_loop"], by_round["avbalance"]) if bare and engine]
    overhead = pooled["bare_loop"].get("samples_per_s", 0) / pooled["avbalance"].get("samples_per_s", math.inf)
    return {
        "engine_overhead": overhead or None,
        "outside_the_model": outside_the_model(pooled),
        "engine_overhead_by_round": rounds,
        "rounds_mean": mean_interval(rounds) if rounds else None,
        "samples_per_s_by_round": by_round,
        "pooled": pooled,
        "step_seconds_by_round": {side: [[s["total"] for s in run] for run in runs] for side, runs in steps.items()},
        "phase_seconds_by_round": {
            side: [[{key: s[key] for key in PHASES if key in s} for s in run] for run in runs]
            for side, runs in steps.items()
        },
        "other_load_cores_by_round": {
            side: [[s.get("cpu_foreign") for s in run] for run in runs] for side, runs in steps.items()
        },
    }


def outside_the_model(pooled: dict[str, dict]) -> dict | None:
    """The engine's cost outside the model's and the method's work: the pooled median milliseconds of
    the ``data`` and ``step`` phases (:func:`vs_official_sides.step_phases`) per side, the engine's
    extra, and the overhead that extra alone makes on the bare loop's step. The forward, backward and
    method phases run the same code on both sides; their difference between the sides is the speed that
    separate runs draw (memory placement, the machine), which the end-to-end ratio carries too.
    None when the steps have no phases."""
    if not all(all(key in pooled[side] for key in PHASES) for side in SIDES):
        return None
    phases = {side: {key: pooled[side][key] * 1000 for key in PHASES} for side in SIDES}
    outside = {side: phases[side]["data"] + phases[side]["step"] for side in SIDES}
    extra = outside["avbalance"] - outside["bare_loop"]
    bare_step = sum(phases["bare_loop"].values())
    return {
        "phases_ms": phases,
        "data_and_step_ms": outside,
        "engine_extra_ms": extra,
        "overhead": (bare_step + extra) / bare_step,
    }


def machine(args: argparse.Namespace) -> dict:
    return {
        **host(),
        "threads": torch.get_num_threads(),
        "num_workers": args.num_workers,
        "batch_size": args.batch_size,
        "epochs_per_round": args.epochs,
        "warmup_steps": args.warmup,
        "max_foreign_cores": args.max_foreign if math.isfinite(args.max_foreign) else None,
        "rounds": args.rounds,
        "shared_model": args.shared_model,
        "clips": {"train": args.n_train, "test": args.n_test},
        "model": {"width": args.width, "layers": args.layers},
    }


def table(document: dict) -> str:
    lines = [
        "| config | avbalance train samples/s | bare loop samples/s | engine overhead (pooled) | rounds: "
        "geometric mean [95 % interval] | per round |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in document["configs"].items():
        pooled, mean = result["pooled"], result["rounds_mean"] or {}
        engine, bare = (pooled[side].get("samples_per_s", 0) for side in SIDES)
        interval = f"[{mean['low']:.3f}, {mean['high']:.3f}]" if mean.get("low") else "-"
        rounds = ", ".join(f"{value:.3f}" for value in result["engine_overhead_by_round"])
        pooled_overhead, rounds_mean = result["engine_overhead"] or 0, mean.get("geometric_mean", 0)
        lines.append(
            f"| {name} | {engine:.2f} | {bare:.2f} | {pooled_overhead:.3f} | {rounds_mean:.3f} {interval} | {rounds} |"
        )
    return "\n".join(lines)


def phase_table(document: dict) -> str:
    """Pooled median milliseconds per phase, engine / bare loop, and the engine's extra outside the model."""
    lines = [
        "| config | "
        + " | ".join(f"{phase} ms (engine / bare)" for phase in PHASES)
        + " | engine's extra in data + step, ms | its overhead |",
        "|---|" + "---|" * (len(PHASES) + 2),
    ]
    for name, result in document["configs"].items():
        outside = result["outside_the_model"]
        if outside is None:
            continue
        phases = outside["phases_ms"]
        cells = [f"{phases['avbalance'][phase]:.1f} / {phases['bare_loop'][phase]:.1f}" for phase in PHASES]
        lines.append(f"| {name} | {' | '.join(cells)} | {outside['engine_extra_ms']:.1f} | {outside['overhead']:.4f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma list of " + ", ".join(CONFIGS))
    p.add_argument("--rounds", type=int, default=8, help="rounds; each trains both sides once")
    p.add_argument("--epochs", type=int, default=3, help="epochs of each side's run in a round")
    p.add_argument("--warmup", type=int, default=1, help="steps left out at the start of every run")
    p.add_argument(
        "--max-foreign",
        type=float,
        default=math.inf,
        help="leave out steps that shared the CPU with more than this many cores of other work (default: keep all)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers on both sides")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--shared-model",
        action="store_true",
        help="both sides of a round train one model, built once per round (default: each side builds its own)",
    )
    add_model_size_args(p)
    add_data_args(p)
    p.add_argument("--out", default=str(HERE / "engine_overhead.json"))
    p.add_argument(
        "--combine",
        nargs="+",
        metavar="JSON",
        help="train nothing: print the rounds of these results files together (per configuration and all)",
    )
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    args.argv = argv
    return args


def check_args(args: argparse.Namespace) -> list[str]:
    names = config_names(args.configs)
    if min(args.rounds, args.epochs) < 1 or args.warmup < 0:
        raise ConfigError(
            "--rounds and --epochs must be at least 1 and --warmup at least 0, "
            f"got {args.rounds}, {args.epochs}, {args.warmup}"
        )
    if not (Path(args.refbench) / "make_data.py").is_file():
        raise ConfigError(f"--refbench {args.refbench}: no make_data.py there (the harness generates the clips)")
    return names


def read_rounds(path: Path) -> dict[str, list[float]]:
    """``{config: its rounds' engine overheads}`` of a results file this script wrote."""
    try:
        configs = json.loads(path.read_text())["configs"]
        return {name: list(result["engine_overhead_by_round"]) for name, result in configs.items()}
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it ({error.strerror or error})") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"{path}: not a results file of engine_overhead.py (no configs with rounds)") from None


def combine(paths: list[Path]) -> dict:
    """The rounds of several runs of this script together: per configuration and over every round,
    the geometric mean of the rounds' overheads and its 95 % interval (printed; nothing is written)."""
    rounds: dict[str, list[float]] = {}
    for path in paths:
        for name, values in read_rounds(path).items():
            rounds.setdefault(name, []).extend(values)
    every_round = [value for values in rounds.values() for value in values]
    if not every_round:
        raise ConfigError(f"{', '.join(map(str, paths))}: no rounds to combine")
    document = {name: mean_interval(values) | {"rounds": len(values)} for name, values in rounds.items() if values}
    document["all"] = mean_interval(every_round) | {"rounds": len(every_round)}
    lines = ["| config | rounds | geometric mean [95 % interval] |", "|---|---|---|"]
    for name, mean in document.items():
        interval = f"[{mean['low']:.3f}, {mean['high']:.3f}]" if mean["low"] is not None else "-"
        lines.append(f"| {name} | {mean['rounds']} | {mean['geometric_mean']:.3f} {interval} |")
    print("\n".join(lines))
    return document


def run(args: argparse.Namespace) -> dict:
    if args.combine:
        return combine([Path(path) for path in args.combine])
    names = check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    caches = make_data(args, sorted({CONFIGS[name][2] for name in names}))
    with tempfile.TemporaryDirectory(prefix="engine_overhead_") as work:  # run folders: checkpoints, logs
        configs = {}
        for name in names:
            steps = measure_config(args, name, caches[CONFIGS[name][2]], Path(work))
            configs[name] = config_report(steps, args.warmup, args.max_foreign)
    every_round = [value for result in configs.values() for value in result["engine_overhead_by_round"]]
    document = {
        "engine_overhead": {name: result["engine_overhead"] for name, result in configs.items()},
        "engine_overhead_outside_the_model": {
            name: (result["outside_the_model"] or {}).get("overhead") for name, result in configs.items()
        },
        "all_rounds_mean": mean_interval(every_round) if every_round else None,
        "target": TARGET,
        "configs": configs,
        "machine": machine(args),
        "command": command_line(__file__, args.argv),
    }
    Path(args.out).write_text(json.dumps(document, indent=1))
    print(table(document))
    print(phase_table(document))
    if len(every_round) > 1:
        mean = document["all_rounds_mean"]
        print(
            f"every configuration's rounds ({len(every_round)}): geometric mean {mean['geometric_mean']:.3f} "
            f"[{mean['low']:.3f}, {mean['high']:.3f}]"
        )
    print(f"[engine_overhead] results: {args.out}")
    return document


def main(argv: list[str] | None = None) -> int:
    return exit_status("engine_overhead", lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
