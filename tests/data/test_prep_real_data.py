"""Real data from ../shared/data (skipped when absent): GRID (both tasks) and AV-MNIST on a
subset, checked against the raw labels, then one short training epoch on each cache."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from prep_helpers import prepare

from avbalance.data import build_dataset
from avbalance.data.datasets.grid import WORDS, read_alignment
from avbalance.data.prepare.cache import PreparedCache

GRID_CLIPS = 40
AVMNIST_PAIRS = 300

needs_cli = pytest.mark.skipif(
    importlib.util.find_spec("avbalance.cli") is None, reason="the avbalance train command is not available"
)


def train_one_epoch(dataset: str, cache: Path, run: Path, *overrides: str) -> None:
    from avbalance.cli import main

    sets = [item for override in overrides for item in ("--set", override)]
    status = main(
        [
            "train",
            "--dataset",
            dataset,
            "--data",
            str(cache),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--out",
            str(run),
            *sets,
        ]
    )
    assert status == 0


@pytest.fixture(scope="module")
def grid_caches(tmp_path_factory, real_data):
    data = real_data
    out = tmp_path_factory.mktemp("grid")
    for task in ("digit", "sentence"):
        assert prepare("grid", data / "grid", out / task, "--task", task, "--limit", str(GRID_CLIPS), workers=2) == 0
    return data, out


def test_grid_digit_words(grid_caches):
    data, out = grid_caches
    cache = PreparedCache(out / "digit")
    assert len(cache.ok_rows()) == GRID_CLIPS and cache.info["task"] == "digit"
    for row in cache.ok_rows():
        speaker, stem = row["id"].split("/")
        words = read_alignment(data / "grid" / "alignments" / speaker / f"{stem}.align")
        start, end, digit = words[4]
        assert row["label"] == digit and row["label_index"] == str(WORDS["digit"].index(digit))
        # the word's frames at 25 fps: one per 40 ms of the word
        assert abs(int(row["visual_count"]) - (end - start) * 25) <= 1.5
    splits = build_dataset("grid", str(out / "digit"), frames=2)
    assert splits.info.input_shapes == {"audio": (1, 128, 98), "visual": (3, 2, 96, 96)}
    assert len(splits.train) + len(splits.val) + len(splits.test) == GRID_CLIPS
    assert len(splits.test) == 8 and len(splits.val) == 4


def test_grid_sentence_labels(grid_caches):
    data, out = grid_caches
    cache = PreparedCache(out / "sentence")
    for row in cache.ok_rows():
        speaker, stem = row["id"].split("/")
        words = [w for _, _, w in read_alignment(data / "grid" / "alignments" / speaker / f"{stem}.align")]
        assert [row[position] for position in WORDS] == words
        assert row["visual_count"] == "15"  # 3 s at 5 fps
    splits = build_dataset("grid", str(out / "sentence"), task="colour")
    assert splits.info.input_shapes == {"audio": (1, 128, 298), "visual": (3, 3, 96, 96)}
    sample = splits.test[0]
    assert (
        splits.info.class_names[int(sample["label"])]
        == cache.ok_rows()[[r["split"] for r in cache.ok_rows()].index("test")]["colour"]
    )


def _mnist_labels(folder: Path) -> np.ndarray:
    data = gzip.decompress((folder / "train-labels-idx1-ubyte.gz").read_bytes())
    return np.frombuffer(data, dtype=np.uint8, offset=8)


@pytest.fixture(scope="module")
def avmnist_cache(tmp_path_factory, real_data):
    data = real_data
    out = tmp_path_factory.mktemp("avmnist") / "cache"
    assert prepare("avmnist", data, out, "--limit", str(AVMNIST_PAIRS), workers=2) == 0
    return data, out


def test_avmnist_real_pairs(avmnist_cache):
    data, out = avmnist_cache
    cache = PreparedCache(out)
    rows = cache.ok_rows()
    assert len(rows) == AVMNIST_PAIRS
    train_labels = _mnist_labels(data / "mnist")
    for row in rows:
        digit, _, index = row["recording"].split("_")
        assert row["label"] == digit
        assert (row["split"] == "test") == (int(index) < 5)
        if row["split"] == "train":
            assert train_labels[int(row["mnist_index"])] == int(digit)
    splits = build_dataset("avmnist", str(out))
    assert splits.info.input_shapes == {"audio": (1, 40, 98), "visual": (3, 1, 28, 28)}


@needs_cli
def test_train_on_grid_digit(grid_caches, tmp_path):
    _, out = grid_caches
    train_one_epoch("grid", out / "digit", tmp_path / "run", "data.options.frames=2")
    assert (tmp_path / "run").is_dir()


@needs_cli
def test_train_on_grid_sentence(grid_caches, tmp_path):
    _, out = grid_caches
    # the full-size default encoder works too; a narrow one keeps the test short on a CPU
    overrides = ["data.options.task=colour", "data.options.frames=2", "model.width=16", "model.layers=[1,1,1]"]
    train_one_epoch("grid", out / "sentence", tmp_path / "run", *overrides)


@needs_cli
def test_train_on_avmnist(avmnist_cache, tmp_path):
    _, out = avmnist_cache
    train_one_epoch("avmnist", out, tmp_path / "run")
