"""Resumable, atomic prepare: reruns, an interrupted run (process killed), bad clip files, settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fixture_datasets import GRID_SENTENCES, make_esc50, make_grid
from fixture_media import tone, write_corrupt, write_video
from prep_helpers import prepare

from avbalance.data.prepare.cache import (
    CLIPS,
    META,
    PreparedCache,
    finished_clip_files,
    read_clip,
)
from avbalance.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[2]


def cache_arrays(path: Path) -> dict[str, dict[str, np.ndarray]]:
    cache = PreparedCache(path)
    return {row["id"]: {m: np.array(cache.clip(row, m)) for m in cache.modalities} for row in cache.ok_rows()}


def make_many_grid_clips(root: Path, count: int) -> Path:
    make_grid(root, ".mp4")
    for index in range(len(GRID_SENTENCES), count):
        stem = f"clip{index:02d}"
        write_video(
            root / "s1" / f"{stem}.mp4", seconds=3.0, fps=25, size=(64, 48), audio=tone(3.0, 16000, 200 + 10 * index)
        )
        (root / "alignments" / "s1" / f"{stem}.align").write_text(
            (root / "alignments" / "s1" / "clip00.align").read_text()
        )
    return root


def test_rerun_skips_everything_and_changes_nothing(tmp_path, capsys):
    raw = make_grid(tmp_path / "raw")
    out = tmp_path / "cache"
    assert prepare("grid", raw, out, "--size", "16") == 0
    first = cache_arrays(out)
    capsys.readouterr()
    assert prepare("grid", raw, out, "--size", "16") == 0
    assert "prepared 0, skipped 10 (already in the cache), failed 0" in capsys.readouterr().err
    again = cache_arrays(out)
    assert first.keys() == again.keys()
    assert all(np.array_equal(first[i][m], again[i][m]) for i in first for m in first[i])
    assert json.loads((out / META).read_text())["version"] == "v0002"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("v")) == ["v0002"]  # the old version is gone


def test_rerun_adds_new_clips(tmp_path, capsys):
    raw = make_grid(tmp_path / "raw")
    out = tmp_path / "cache"
    assert prepare("grid", raw, out, "--size", "16", "--limit", "4") == 0
    subset = cache_arrays(out)
    assert len(subset) == 4
    capsys.readouterr()
    assert prepare("grid", raw, out, "--size", "16") == 0
    assert "prepared 6, skipped 4" in capsys.readouterr().err
    full = cache_arrays(out)
    assert len(full) == 10 and len(PreparedCache(out).rows) == 10
    assert all(np.array_equal(subset[i]["audio"], full[i]["audio"]) for i in subset)


def test_interrupted_prepare_loses_nothing_and_duplicates_nothing(tmp_path):
    raw = make_many_grid_clips(tmp_path / "raw", 24)
    out = tmp_path / "cache"
    options = ["--task", "sentence", "--fps", "25", "--size", "24"]
    command = [
        sys.executable,
        "-m",
        "avbalance.data.prepare",
        "grid",
        "--root",
        str(raw),
        "--out",
        str(out),
        "--workers",
        "2",
        *options,
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    try:
        while len(finished_clip_files(out)) < 4 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the command and its worker processes, mid-way
        process.wait()
    done_before = finished_clip_files(out)
    assert not (out / META).exists(), "the run finished before it could be interrupted"
    assert 4 <= len(done_before) < 24
    for path in done_before.values():  # every clip file present is complete
        arrays = read_clip(path).arrays
        assert arrays["audio"].shape == (1, 128, 298) and arrays["visual"].shape == (75, 24, 24, 3)
    assert prepare("grid", raw, out, *options, workers=2) == 0
    cache = PreparedCache(out)
    ids = [row["id"] for row in cache.rows]
    assert len(ids) == len(set(ids)) == 24 and all(row["status"] == "ok" for row in cache.rows)
    assert not any((out / CLIPS).iterdir()) and not any(p.name.endswith(".tmp") for p in out.rglob("*"))
    # the resumed cache holds exactly what an uninterrupted run produces
    reference = tmp_path / "reference"
    assert prepare("grid", raw, reference, *options, workers=2) == 0
    resumed, expected = cache_arrays(out), cache_arrays(reference)
    assert resumed.keys() == expected.keys()
    for clip_id in expected:
        for modality in expected[clip_id]:
            assert np.array_equal(resumed[clip_id][modality], expected[clip_id][modality]), (clip_id, modality)


def test_leftovers_of_a_crash_are_cleaned_and_bad_clip_files_prepared_again(tmp_path, capsys):
    raw = make_grid(tmp_path / "raw")
    out = tmp_path / "cache"
    assert prepare("grid", raw, out, "--size", "16", "--limit", "3") == 0
    (out / "v0002.tmp").mkdir()  # a version folder that was being written
    (out / CLIPS / ".half.npz.123.tmp").write_bytes(b"partial")  # a clip file that was being written
    write_corrupt(out / CLIPS / "s1%2Fclip09.npz")  # a damaged finished clip file
    capsys.readouterr()
    assert prepare("grid", raw, out, "--size", "16") == 0
    assert "unreadable prepared clip file" in capsys.readouterr().err
    assert not (out / "v0002.tmp").exists() and not (out / CLIPS / ".half.npz.123.tmp").exists()
    assert prepare("grid", raw, out, "--size", "16") == 0
    assert len(PreparedCache(out).ok_rows()) == 10


def test_settings_must_match_and_out_must_be_a_cache(tmp_path):
    raw = make_esc50(tmp_path / "raw")
    out = tmp_path / "cache"
    assert prepare("esc50", raw, out) == 0
    with pytest.raises(ConfigError, match="audio.seconds=5.0 \\(now 2.0\\)"):
        prepare("esc50", raw, out, "--seconds", "2")
    with pytest.raises(ConfigError, match="dataset 'esc50', not 'grid'"):
        prepare("grid", make_grid(tmp_path / "grid"), out)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        prepare("esc50", raw, other)


def test_exit_status_strict_and_all_failed(tmp_path, capsys):
    raw = make_esc50(tmp_path / "raw")
    write_corrupt(raw / "audio" / "1-10000-A-0.wav")
    assert prepare("esc50", raw, tmp_path / "a") == 0
    assert prepare("esc50", raw, tmp_path / "b", "--strict") == 1
    for wav in (raw / "audio").glob("*.wav"):
        write_corrupt(wav)
    capsys.readouterr()
    assert prepare("esc50", raw, tmp_path / "c") == 1
    assert "no clip could be prepared" in capsys.readouterr().err


def test_one_prepare_at_a_time(tmp_path):
    raw = make_esc50(tmp_path / "raw")
    out = tmp_path / "cache"
    out.mkdir()
    holder = (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.lockf(f, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(60)"
    )
    other = subprocess.Popen([sys.executable, "-c", holder, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        with pytest.raises(DataError, match="another 'avbalance prepare'"):
            prepare("esc50", raw, out)
    finally:
        other.kill()
        other.wait()
    assert prepare("esc50", raw, out) == 0


def test_crop_is_a_saved_setting(tmp_path, capsys):
    raw = make_grid(tmp_path / "raw", ".mp4")  # 48x48 frames
    out = tmp_path / "cache"
    assert prepare("grid", raw, out, "--size", "8", "--crop", "8,8,32,24", "--limit", "3") == 0
    cache = PreparedCache(out)
    assert cache.settings["crop"] == [8, 8, 32, 24]
    assert prepare("grid", raw, out, "--size", "8", "--crop", "8,8,32,24") == 0  # same crop: resumes
    assert len(PreparedCache(out).ok_rows()) == 10
    with pytest.raises(ConfigError, match=r"crop=\[8, 8, 32, 24\] \(now \[0, 0, 16, 16\]\)"):
        prepare("grid", raw, out, "--size", "8", "--crop", "0,0,16,16")
    with pytest.raises(ConfigError, match=r"crop=\[8, 8, 32, 24\] \(now None\)"):
        prepare("grid", raw, out, "--size", "8")
    capsys.readouterr()
    assert prepare("grid", raw, tmp_path / "too-big", "--size", "8", "--crop", "0,0,64,16") == 1
    assert "does not fit the 48x48 frames" in capsys.readouterr().err
