"""The ``probe`` and ``report`` sub-commands, and the analysis tables that ``avbalance test`` prints."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..commands import add_command
from .shapley import REMOVAL_RULES

PROBE_HELP = "linear probes on a trained model's frozen encoders (per modality and concatenated)"
PROBE_EXAMPLES = """examples:
  avbalance probe --ckpt runs/ogm_ge                       # writes runs/ogm_ge/probe.json
  avbalance probe --ckpt runs/ogm_ge/checkpoints/last.ckpt --out runs/ogm_ge/probe_last.json
  avbalance probe --ckpt runs/baseline --data /new/place/of/cache --C 0.1"""

REPORT_HELP = "an HTML report (with PNG figures) comparing training runs"
REPORT_EXAMPLES = """examples:
  avbalance report runs/baseline runs/ogm_ge runs/visual_only --out report
  avbalance report runs/*_seed* --title "OGM-GE vs baseline, 3 seeds" --probe
  avbalance report runs/ogm_ge --split val --removal mean
  avbalance report runs/a runs/b --no-analysis        (learning curves and metrics only)

Open report/index.html in a browser: no server or network needed."""

MAX_PRINTED_CLASSES = 20


def add_parser(commands) -> None:
    probe = add_command(commands, "probe", PROBE_HELP, PROBE_EXAMPLES, cmd_probe)
    probe.add_argument(
        "--ckpt",
        required=True,
        metavar="RUN",
        help="run folder (its checkpoints/best.ckpt is probed) or a checkpoint file",
    )
    probe.add_argument("--data", help="prepared data folder, if it moved since training")
    probe.add_argument("--batch-size", type=int, help="batch size of the feature extraction")
    probe.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default: %(default)s)")
    probe.add_argument(
        "--C",
        type=float,
        default=1.0,
        dest="C",
        help="inverse L2 strength of the logistic regression (default: %(default)s)",
    )
    probe.add_argument("--seed", type=int, default=0, help="seed of the classifier (default: %(default)s)")
    probe.add_argument("--out", help="JSON file to write (default: RUN/probe.json)")

    report = add_command(commands, "report", REPORT_HELP, REPORT_EXAMPLES, cmd_report)
    report.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by 'avbalance train --out'")
    report.add_argument("--out", default="report", help="folder for index.html and the figures (default: %(default)s)")
    report.add_argument("--title", help="page title")
    report.add_argument(
        "--split",
        default="test",
        choices=["test", "val"],
        help="split of the Shapley values and confusion matrices (default: %(default)s)",
    )
    report.add_argument(
        "--removal",
        default="zero",
        choices=REMOVAL_RULES,
        help="how a removed modality is replaced for Shapley values (default: %(default)s)",
    )
    report.add_argument(
        "--no-analysis",
        dest="analysis",
        action="store_false",
        help="skip Shapley values and confusion matrices (no checkpoint or data is read)",
    )
    report.add_argument(
        "--probe", action="store_true", help="probe runs that have no probe.json yet (and save it in the run folder)"
    )


def cmd_probe(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..outputs import check_output_file
    from .probe import probe_checkpoint
    from .runs import resolve_checkpoint, run_folder_of

    if not args.C > 0:
        raise ConfigError(f"--C: must be greater than 0, got {args.C}")
    out = check_output_file(args.out or run_folder_of(resolve_checkpoint(args.ckpt)) / "probe.json")
    result = probe_checkpoint(
        args.ckpt,
        data_root=args.data,
        batch_size=args.batch_size,
        accelerator=args.accelerator,
        C=args.C,
        seed=args.seed,
    )
    print_probe(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written: {out}")
    return 0


def check_distinct_runs(runs: list[str]) -> None:
    """Each run once: a run named twice would show up as two identical runs."""
    from pathlib import Path

    from ..errors import ConfigError

    seen: dict[Path, str] = {}
    for run in runs:
        resolved = Path(run).resolve()
        if resolved in seen:
            raise ConfigError(f"{run}: the same run folder is given twice (as {seen[resolved]!r} too)")
        seen[resolved] = run


def cmd_report(args: argparse.Namespace) -> int:
    from ..outputs import check_output_folder
    from .report import write_report

    check_output_folder(args.out)
    check_distinct_runs(args.runs)
    path = write_report(
        args.runs,
        out=args.out,
        title=args.title,
        split=args.split,
        removal=args.removal,
        analysis=args.analysis,
        probe=args.probe,
    )
    print(f"report: {path}  (open it in a browser)")
    return 0


# -- console tables --------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def print_probe(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    accuracy = result["accuracy"]
    splits = [s for s in ("train", "val", "test") if s in next(iter(accuracy.values()))]
    table = Table(title="linear probe accuracy (%)", caption=result["checkpoint"])
    table.add_column("encoder")
    for split in splits:
        table.add_column(split, justify="right")
    for representation, scores in accuracy.items():
        table.add_row(representation, *(_percent(scores[s]) for s in splits))
    Console().print(table)


def print_analysis(analysis: dict[str, Any]) -> None:
    """Shapley values and per-class accuracy, as computed for ``avbalance test``."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    shapley = analysis["shapley"]
    table = Table(title=f"modality contribution on {analysis['split']} ({shapley['removal']} removal)")
    for column in ("modality", "Shapley value (acc. points)", "share of the gain (%)"):
        table.add_column(column, justify="left" if column == "modality" else "right")
    shares = shapley["share"] or {}
    for modality, value in shapley["shapley"].items():
        table.add_row(modality, _percent(value), _percent(shares.get(modality)))
    degree = shapley["imbalance_degree"]
    table.caption = (
        f"v(all) {_percent(shapley['full'])}  v(none) {_percent(shapley['empty'])}  "
        f"imbalance degree {'-' if degree is None else f'{degree:.2f}'}"
    )
    console.print(table)

    confusion = analysis["confusion"]
    names = confusion["class_names"]
    if len(names) > MAX_PRINTED_CLASSES:
        console.print(f"per-class accuracy: {len(names)} classes, see the metrics JSON (--out)")
        return
    outputs = confusion["outputs"]
    table = Table(title=f"per-class accuracy (%) on {analysis['split']}")
    table.add_column("class")
    for output in outputs:
        table.add_column(output, justify="right")
    for index, name in enumerate(names):
        table.add_row(name, *(_percent(outputs[o]["per_class_acc"][index]) for o in outputs))
    console.print(table)
