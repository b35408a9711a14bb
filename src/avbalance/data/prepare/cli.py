"""The ``prepare`` sub-command: ``avbalance prepare <dataset> --root RAW --out CACHE [options]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from ...errors import AvbalanceError, DataError
from .cache import FAILURES
from .plan import add_common_arguments, preparers, take_subset
from .runner import Summary, default_workers, run_prepare

DESCRIPTION = """\
Turn a raw dataset into a prepared cache: frames (uint8) and audio features (float16) in
memory-mappable arrays plus a manifest with id, label, split and status per clip.

Runs in parallel, shows progress with an ETA and is resumable: rerunning the same command skips
every clip already prepared. Clips that cannot be prepared (missing, corrupt, silent or too-short
files, unknown labels, clips listed twice) are skipped and listed with the reason in
CACHE/failures.csv. See docs/datasets.md for each dataset's expected raw layout.
"""

EXAMPLES = """\
examples:
  avbalance prepare cremad --root ~/data/CREMA-D --out ~/cache/cremad --workers 8
  avbalance prepare grid --root ~/data/grid --out ~/cache/grid-digit --task digit
  avbalance prepare avmnist --root ~/data --out ~/cache/avmnist
  avbalance prepare manifest --root ~/data/mine --out ~/cache/mine --csv ~/data/mine/clips.csv
  avbalance prepare grid --help        (options of one dataset)
"""

SHOWN_FAILURES = 5


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``prepare`` (with one sub-command per dataset) to an argparse sub-parsers object."""
    parser = subparsers.add_parser(
        "prepare",
        help="turn a raw dataset into a prepared cache",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    datasets = parser.add_subparsers(dest="prepare_dataset", metavar="DATASET", required=True)
    for name, preparer in preparers().items():
        sub = datasets.add_parser(
            name,
            help=preparer.summary,
            description=preparer.summary,
            epilog="examples:\n" + preparer.examples if preparer.examples else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("--root", required=True, type=Path, help="the raw dataset folder (layout: docs/datasets.md)")
        sub.add_argument("--out", required=True, type=Path, help="the cache folder to create, or to resume")
        sub.add_argument(
            "--workers", type=int, default=default_workers(), help="parallel worker processes (default: %(default)s)"
        )
        sub.add_argument("--strict", action="store_true", help="exit with status 1 if any clip fails")
        sub.add_argument(
            "--limit", type=int, default=None, metavar="N", help="prepare a seeded random subset of N clips"
        )
        sub.add_argument(
            "--seed", type=int, default=0, help="seed of generated splits, --limit and pairings (default: %(default)s)"
        )
        preparer.add_arguments(sub)
        add_common_arguments(sub, preparer)
    return parser


def run(args: argparse.Namespace, console: Console | None = None) -> int:
    """Run ``prepare`` for parsed arguments; returns the exit status.

    Raises :class:`avbalance.errors.AvbalanceError` (one line) for a missing folder, an unreadable
    list file or a cache prepared with other settings.
    """
    console = console or Console(stderr=True, highlight=False, soft_wrap=True)
    preparer = preparers()[args.prepare_dataset]
    root = Path(args.root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: raw dataset folder not found")
    settings = preparer.settings(args)
    listing = preparer.list_clips(root, args)
    listing.clips = take_subset(listing.clips, args.limit, args.seed)
    if not listing.clips and not listing.failures:
        raise DataError(f"{root}: no clips found for {preparer.name}; see docs/datasets.md for the expected layout")
    for note in listing.notes:
        console.print(note, markup=False)
    out = Path(args.out).expanduser()
    summary = run_prepare(preparer.name, listing, settings, out, workers=args.workers, console=console)
    return _report(summary, out, args.strict, console)


def _report(summary: Summary, out: Path, strict: bool, console: Console) -> int:
    for failure in summary.failures[:SHOWN_FAILURES]:
        console.print(f"  failed {failure.id}: {failure.reason}", markup=False)
    if len(summary.failures) > SHOWN_FAILURES:
        console.print(f"  ... and {len(summary.failures) - SHOWN_FAILURES} more")
    line = f"prepared {summary.prepared}, skipped {summary.skipped} (already in the cache), failed {summary.failed}"
    if summary.interrupted:
        console.print(f"interrupted: {line}; rerun the same command to resume", markup=False)
        return 130
    if summary.failed:
        line += f" (reasons in {out / FAILURES})"
    console.print(line, markup=False)
    if summary.total_ok == 0:
        console.print(f"no clip could be prepared; {out} holds no usable data", markup=False)
        return 1
    console.print(f"cache ready: {out} ({summary.total_ok} clips)", markup=False)
    return 1 if strict and summary.failed else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m avbalance.data.prepare``."""
    parser = argparse.ArgumentParser(prog="avbalance")
    commands = parser.add_subparsers(dest="command", required=True)
    add_parser(commands)
    args = parser.parse_args(["prepare", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args)
    except AvbalanceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
