"""What ``avbalance prepare`` works on: the clips a dataset lists and how each is turned into arrays.

A dataset module (``avbalance.data.datasets.<name>``) reads its raw layout and returns a
:class:`Listing`: one :class:`ClipTask` per clip, with its label, split and the files each modality
comes from. Problems found while listing (an unknown label, a clip listed twice, a bad row) are
:class:`Failure` entries of the listing. Everything else -- decoding, features, the cache, workers,
resuming -- is shared and lives in this package.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .features import AudioRecipe

# Kinds of source a modality can be read from.
AUDIO = "audio"  # an audio file or the audio track of any container FFmpeg reads
VIDEO = "video"  # the frames of a video file
FOLDER = "folder"  # a folder of images, one per frame, in natural name order
FLOW = "flow"  # optical flow as two image folders (u, v), one image per frame
IMAGE = "image"  # one image held in memory (a uint8 array)
ARRAY = "array"  # a .npy file stored as it is
SEQUENCE = "sequence"  # a .npy (T, F) array stored as T rows (T varies between clips)
FRAME_STACK = "frame_stack"  # a .npy (T, H, W) or (T, H, W, C) uint8 array stored as T frames
TEXT = "text"  # a text: the string itself or a UTF-8 .txt file
SOURCE_KINDS = (AUDIO, VIDEO, FOLDER, FLOW, IMAGE, ARRAY, SEQUENCE, FRAME_STACK, TEXT)

SPLITS = ("train", "val", "test")


class ClipError(Exception):
    """A problem with one clip's input files. The clip is skipped and the reason reported."""

    def __init__(self, message: str, file: str | Path | None = None):
        super().__init__(message)
        self.file = str(file) if file else None


@dataclass(frozen=True)
class Source:
    """Where one modality of a clip comes from."""

    kind: str
    path: str | tuple[str, str] | None = None
    data: np.ndarray | None = None  # only for IMAGE
    text: str | None = None  # only for TEXT given in the listing itself (no file)

    def describe(self) -> str:
        if isinstance(self.path, tuple):
            return " + ".join(self.path)
        return self.path or f"<{self.kind}>"


@dataclass
class ClipTask:
    """One clip to prepare. ``split`` may be left empty for the split rule of the listing to fill."""

    id: str
    label: str
    split: str
    sources: dict[str, Source]
    start: float | None = None  # seconds: cut [start, end) out of the files (GRID words, AVE events)
    end: float | None = None
    columns: dict[str, str] = field(default_factory=dict)  # extra manifest columns (actor, fold, words)

    def main_file(self) -> str:
        return next(iter(self.sources.values())).describe() if self.sources else ""


@dataclass
class Failure:
    id: str
    reason: str
    file: str = ""


@dataclass
class SplitRule:
    """A seeded split for datasets without an official one.

    Groups (``group``: e.g. the actor) never straddle two splits; within each stratum (``stratify``:
    e.g. the speaker for identification) a fraction of the groups goes to test and val.
    """

    test_fraction: float = 0.2
    val_fraction: float = 0.1
    seed: int = 0
    group: Callable[[ClipTask], str] | None = None
    stratify: Callable[[ClipTask], str] | None = None


@dataclass
class Listing:
    clips: list[ClipTask]
    class_names: list[str]
    failures: list[Failure] = field(default_factory=list)
    # Other label columns and their classes (GRID: command, colour, ...).
    label_sets: dict[str, list[str]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # dataset-level facts saved in the cache (GRID task)
    notes: list[str] = field(default_factory=list)  # lines printed before the run
    split_rule: SplitRule | None = None


@dataclass(frozen=True)
class PrepareSettings:
    """How clips become arrays. Saved with the cache: a rerun must use the same settings."""

    fps: float = 1.0  # frames kept per second of video
    size: int = 224  # stored frames are size x size
    audio: AudioRecipe | None = None
    waveform: bool = False  # also store the resampled waveform (int16) so features can be recomputed
    folder_fps: float = 25.0  # frame rate of image folders (frames, flow)
    min_seconds: float = 0.1  # shorter audio is a failure
    allow_missing_audio: bool = False  # a clip without audio gets silence instead of failing (SSW60)
    crop: tuple[int, int, int, int] | None = None  # x, y, width, height cut out of every frame first

    def to_dict(self) -> dict:
        data = asdict(self)
        data["audio"] = self.audio.to_dict() if self.audio else None
        if self.crop is None:
            del data["crop"]  # caches prepared before the option existed stay resumable
        else:
            data["crop"] = list(self.crop)
        return data


def take_subset(clips: list[ClipTask], limit: int | None, seed: int) -> list[ClipTask]:
    """A seeded random subset of ``limit`` clips, kept in listing order."""
    if not limit or limit >= len(clips):
        return clips
    keep = set(random.Random(seed).sample(range(len(clips)), limit))
    return [clip for i, clip in enumerate(clips) if i in keep]


def assign_splits(clips: list[ClipTask], rule: SplitRule) -> None:
    """Fill the empty ``split`` of each clip following ``rule`` (deterministic for a given seed)."""
    group_of = rule.group or (lambda clip: clip.id)
    stratum_of = rule.stratify or (lambda clip: "")
    strata: dict[str, list[str]] = {}
    for clip in clips:
        if not clip.split:
            groups = strata.setdefault(stratum_of(clip), [])
            if group_of(clip) not in groups:
                groups.append(group_of(clip))
    split_of_group: dict[tuple[str, str], str] = {}
    rng = random.Random(rule.seed)
    for stratum in sorted(strata):
        groups = sorted(strata[stratum])
        rng.shuffle(groups)
        n_test, n_val = _split_sizes(len(groups), rule.test_fraction, rule.val_fraction)
        for i, group in enumerate(groups):
            split_of_group[stratum, group] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    for clip in clips:
        if not clip.split:
            clip.split = split_of_group[stratum_of(clip), group_of(clip)]


def _split_sizes(count: int, test_fraction: float, val_fraction: float) -> tuple[int, int]:
    n_test = min(int(math.floor(count * test_fraction + 0.5)), max(count - 1, 0))
    n_val = min(int(math.floor(count * val_fraction + 0.5)), max(count - 1 - n_test, 0))
    return n_test, n_val


def mark_duplicates(clips: list[ClipTask], failures: list[Failure], where: str = "") -> list[ClipTask]:
    """Keep the first of clips listed twice; report the others."""
    seen: set[str] = set()
    unique = []
    for clip in clips:
        if clip.id in seen:
            failures.append(Failure(clip.id, "listed twice; the first entry is kept", where or clip.main_file()))
            continue
        seen.add(clip.id)
        unique.append(clip)
    return unique


__all__ = [
    "AUDIO",
    "ARRAY",
    "FLOW",
    "FOLDER",
    "FRAME_STACK",
    "IMAGE",
    "SEQUENCE",
    "TEXT",
    "VIDEO",
    "ClipError",
    "ClipTask",
    "Failure",
    "Listing",
    "PrepareSettings",
    "Source",
    "SplitRule",
    "assign_splits",
]
