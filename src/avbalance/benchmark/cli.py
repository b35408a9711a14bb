"""``avbalance benchmark SUITE``: the multi-seed benchmark of the balancing methods."""

from __future__ import annotations

import argparse
import shlex
from contextlib import contextmanager
from pathlib import Path

from .suites import SUITES


def _report(message: str) -> None:
    print(message, flush=True)


EXAMPLES = """examples:
  avbalance benchmark synthetic --quick --out runs/bench-quick
  avbalance benchmark grid-digit --raw ../shared/data --out benchmarks/results/grid-digit
  avbalance benchmark avmnist --raw ../shared/data --methods baseline ogm_ge mmcosine --seeds 5
  avbalance benchmark avmnist-adamw --raw ../shared/data --select val/min_branch_acc"""


def add_parser(commands) -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:13s} {suite.description}" for name, suite in SUITES.items())
    sub = commands.add_parser(
        "benchmark",
        help="train every method for N seeds on a suite; Markdown table + plots",
        description="Train every requested balancing method, plus audio-only and visual-only references, for N "
        "seeds with one shared recipe; write a Markdown table (mean ± std and 95 %% CI of fused, "
        "audio and visual test accuracy and macro-F1, and the imbalance gap) and PNG plots. "
        "Finished runs are reused when the command is rerun.\n\nsuites:\n" + lines.replace("%", "%%"),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_argument("suite", metavar="SUITE", help=f"one of: {', '.join(SUITES)}")
    sub.add_argument("--seeds", type=int, help="number of seeds 0..N-1 (default: 5; 1 with --quick)")
    sub.add_argument(
        "--methods",
        nargs="+",
        metavar="METHOD",
        help="methods to run (default: the suite's, else every registered method; a suite's variants are "
        "named NAME[TAG], e.g. ogm_ge[lr]); references are always added",
    )
    sub.add_argument(
        "--select",
        metavar="METRIC",
        help="validation metric that picks each run's best epoch (trainer.monitor, maximised), e.g. "
        "val/acc_visual, val/min_branch_acc, val/branch_hmean (default: val/acc)",
    )
    sub.add_argument("--no-references", action="store_true", help="skip the audio-only and visual-only models")
    sub.add_argument("--quick", action="store_true", help="1 seed, few epochs, small data: exercises the whole path")
    sub.add_argument("--out", help="results folder (default: benchmarks/results/SUITE, or runs/benchmark/SUITE-quick)")
    sub.add_argument(
        "--raw", default="../shared/data", help="raw data folder holding grid/, mnist/, fsdd/ (default: %(default)s)"
    )
    sub.add_argument("--cache", help="prepared-data folder (default: ~/.cache/avbalance/benchmark/SUITE)")
    sub.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="runs trained at once, in separate processes of one thread each (default: one per "
        "core, at most 8); results do not depend on it",
    )
    sub.add_argument(
        "--sweep",
        action="store_true",
        help="instead: the suite's validation sweep (OGM-GE alpha x window, LFM initial weight, "
        "ReconBoost stages), 2 seeds by default; writes sweep.md ranked by validation accuracy",
    )
    sub.set_defaults(handler=run)
    return sub


@contextmanager
def finished_runs_kept():
    """A stopped suite says how to go on (its finished runs are reused)."""
    from ..signals import Stopped

    try:
        yield
    except Stopped as stop:
        raise Stopped(stop.signum, "interrupted; finished runs are kept: rerun the same command to go on") from None


def reproduce_command(args: argparse.Namespace, suite, jobs: int, out: Path) -> str:
    """The command line that reproduces this benchmark, for its README."""
    parts = ["avbalance", "benchmark", suite.name]
    if args.seeds:
        parts += ["--seeds", str(args.seeds)]
    if args.methods:
        parts += ["--methods", *args.methods]
    if args.no_references:
        parts.append("--no-references")
    if args.quick:
        parts.append("--quick")
    if args.select:
        parts += ["--select", args.select]
    parts += ["--jobs", str(jobs), "--out", str(out)]
    if suite.prepare is not None:
        parts += ["--raw", args.raw]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..outputs import check_output_folder
    from ..signals import StopSignals
    from .runner import default_jobs, run_suite
    from .suites import get_suite

    suite = get_suite(args.suite)
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    if args.sweep and args.select:
        raise ConfigError("--select: the sweep ranks settings by validation accuracy; leave --select out")
    if args.seeds is not None and args.seeds < 1:
        raise ConfigError(f"--seeds: must be at least 1, got {args.seeds}")
    if args.seeds is not None and args.seeds > 2**32:  # seeds 0..N-1 must be valid random seeds
        raise ConfigError(f"--seeds: must be at most 2**32, got {args.seeds}")
    jobs = args.jobs or default_jobs()
    out = (
        Path(args.out)
        if args.out
        else (Path("runs/benchmark") / f"{suite.name}-quick" if args.quick else Path("benchmarks/results") / suite.name)
    )
    check_output_folder(out)
    command = reproduce_command(args, suite, jobs, out)
    with StopSignals(), finished_runs_kept():  # SIGTERM stops like Ctrl+C: workers stop, finished runs stay
        if args.sweep:
            from .runner import run_sweep

            run_sweep(
                suite,
                out,
                seeds=args.seeds or 2,
                quick=args.quick,
                raw=args.raw,
                cache=args.cache,
                jobs=jobs,
                report=_report,
            )
            return 0
        run_suite(
            suite,
            out,
            seeds=args.seeds,
            methods=args.methods,
            quick=args.quick,
            raw=args.raw,
            cache=args.cache,
            references=not args.no_references,
            command=command,
            jobs=jobs,
            report=_report,
            select=args.select,
        )
    return 0
