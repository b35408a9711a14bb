"""The prepare command line: help with examples, one-line errors, ``python -m`` and ``avbalance``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fixture_datasets import make_esc50
from prep_helpers import prepare_main

from avbalance.data import dataset_names, prepared_datasets

ROOT = Path(__file__).resolve().parents[2]
DATASETS = [
    "ave",
    "avmnist",
    "cremad",
    "esc50",
    "grid",
    "kinetics_sounds",
    "manifest",
    "ssw60",
    "ucf101",
    "vggsound",
    "voxceleb",
]


def test_every_dataset_can_be_prepared():
    assert list(prepared_datasets()) == DATASETS
    assert dataset_names() == sorted([*DATASETS, "synthetic"])  # synthetic is generated, not prepared


def show_help(argv: list[str]) -> None:
    from avbalance.cli import main

    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own exit after --help
        status = exit_.code
    assert status in (0, None)


def test_help_shows_examples(capsys):
    show_help(["prepare", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "avbalance prepare cremad --root" in text
    assert all(name in text for name in DATASETS)
    show_help(["prepare", "grid", "--help"])
    text = capsys.readouterr().out
    for option in ("--root", "--out", "--workers", "--strict", "--task", "--fps", "--audio", "--limit"):
        assert option in text
    assert "avbalance prepare grid --root ~/data/grid --out ~/cache/grid-digit --task digit" in text


def test_user_errors_are_one_line_without_traceback(tmp_path, capsys):
    from avbalance.cli import main

    assert main(["prepare", "esc50", "--root", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "raw dataset folder not found" in err and "Traceback" not in err
    assert prepare_main("esc50", tmp_path, tmp_path / "c2") == 2
    err = capsys.readouterr().err
    assert err.startswith("avbalance: error: ") and "audio: missing folder" in err and err.strip().count("\n") == 0


def test_avbalance_command(tmp_path):
    # (python -m avbalance.data.prepare is run by the interrupted-run test)
    raw = make_esc50(tmp_path / "raw")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "avbalance.cli",
            "prepare",
            "esc50",
            "--root",
            str(raw),
            "--out",
            str(tmp_path / "c"),
            "--workers",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "prepared 15, skipped 0 (already in the cache), failed 0" in result.stderr
    assert (tmp_path / "c" / "meta.json").is_file()
