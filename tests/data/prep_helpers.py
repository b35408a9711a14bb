"""Helpers for the data tests: run ``prepare`` in-process; where the real data lives."""

from __future__ import annotations

import argparse
from pathlib import Path

from avbalance.data.prepare.cache import PreparedCache
from avbalance.prepare_cli import add_parser, main, run

REAL_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def parse_prepare(dataset: str, root: Path, out: Path, *options: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="avbalance")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["prepare", dataset, "--root", str(root), "--out", str(out), *options])


def prepare(dataset: str, root: Path, out: Path, *options: str, workers: int = 1) -> int:
    """Run ``avbalance prepare`` in this process; user errors propagate as exceptions."""
    return run(parse_prepare(dataset, root, out, "--workers", str(workers), *options))


def prepared_cache(dataset: str, root: Path, out: Path, *options: str) -> PreparedCache:
    """Run ``avbalance prepare`` in this process (it must succeed) and open the cache it made."""
    assert prepare(dataset, root, out, *options) == 0
    return PreparedCache(out)


def prepare_main(dataset: str, root: Path, out: Path, *options: str) -> int:
    """Like the command line: user errors become exit status 2 and one line on stderr."""
    return main([dataset, "--root", str(root), "--out", str(out), *options])
