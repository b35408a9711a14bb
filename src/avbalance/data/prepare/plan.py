"""What ``avbalance prepare`` works on: the clips a dataset lists, how each is turned into arrays,
and the registry of datasets that can be prepared.

A dataset module (``avbalance.data.datasets.<name>``) reads its raw layout and returns a
:class:`Listing`: one :class:`ClipTask` per clip, with its label, split and the files each modality
comes from. Problems found while listing (an unknown label, a clip listed twice, a bad row) are
:class:`Failure` entries of the listing. Everything else -- decoding, features, the cache, workers,
resuming -- is shared and lives in this package.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .features import AudioRecipe, make_recipe

# Kinds of source a modality can be read from.
AUDIO = "audio"  # an audio file or the audio track of any container FFmpeg reads
VIDEO = "video"  # the frames of a video file
FOLDER = "folder"  # a folder of images, one per frame, in natural name order
FLOW = "flow"  # optical flow as two image folders (u, v), one image per frame
IMAGE = "image"  # one image held in memory (a uint8 array)
ARRAY = "array"  # a .npy file stored as it is
SOURCE_KINDS = (AUDIO, VIDEO, FOLDER, FLOW, IMAGE, ARRAY)

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


@dataclass
class Preparer:
    """How to prepare one dataset from the command line."""

    name: str
    summary: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    list_clips: Callable[[Path, argparse.Namespace], Listing]
    examples: str = ""
    video: bool = True  # the dataset has frames: add --fps / --size
    audio: str | None = "ogm"  # default audio recipe; None when the dataset has no audio
    defaults: dict = field(default_factory=dict)  # per-dataset defaults of the common options
    # Settings from the parsed arguments; by default settings_from_args (GRID adapts them to --task).
    make_settings: Callable[[argparse.Namespace, Preparer], PrepareSettings] | None = None

    def settings(self, args: argparse.Namespace) -> PrepareSettings:
        return (self.make_settings or settings_from_args)(args, self)


_PREPARERS: dict[str, Preparer] = {}


def register_preparer(preparer: Preparer) -> Preparer:
    _PREPARERS[preparer.name] = preparer
    return preparer


def preparers() -> dict[str, Preparer]:
    from .. import datasets  # noqa: F401  (importing the dataset modules registers them)

    return dict(sorted(_PREPARERS.items()))


def add_common_arguments(parser: argparse.ArgumentParser, preparer: Preparer) -> None:
    """Options every dataset shares; their defaults come from the dataset."""
    d = {
        "fps": 1.0,
        "size": 224,
        "folder_fps": 25.0,
        "seconds": None,
        "sample_rate": None,
        "mel_bins": None,
        "min_seconds": 0.1,
    }
    d.update(preparer.defaults)

    def default(key: str, unset: str = "set by the dataset") -> str:
        return f"(default: {d[key] if d[key] is not None else unset})"

    group = parser.add_argument_group("frames and audio")
    if preparer.video:
        group.add_argument(
            "--fps", type=float, default=d["fps"], help=f"frames kept per second of video {default('fps')}"
        )
        group.add_argument(
            "--size", type=int, default=d["size"], help=f"stored frames are SIZE x SIZE pixels {default('size')}"
        )
        group.add_argument(
            "--crop",
            type=parse_crop,
            metavar="X,Y,W,H",
            help="cut this box (source pixels: left, top, width, height) out of every frame before resizing, "
            "e.g. the mouth of a talking face filmed with a fixed camera (default: the whole frame)",
        )
        group.add_argument(
            "--folder-fps",
            type=float,
            default=d["folder_fps"],
            help=f"frame rate of image folders {default('folder_fps')}",
        )
    if preparer.audio:
        group.add_argument(
            "--audio",
            choices=["ogm", "vggsound", "fbank"],
            default=preparer.audio,
            help="audio features: ogm = log-STFT n_fft 512 hop 353 at 22.05 kHz; vggsound = log-STFT n_fft 256 hop 128 "
            "at 16 kHz; fbank = Kaldi-style log-mel filterbank, 25 ms window, 10 ms shift (default: %(default)s)",
        )
        group.add_argument(
            "--seconds",
            type=float,
            default=d["seconds"],
            help=f"audio is tiled or cut to this length {default('seconds', 'the recipe')}",
        )
        group.add_argument(
            "--sample-rate",
            type=int,
            default=d["sample_rate"],
            help=f"resample audio to this rate {default('sample_rate', 'the recipe')}",
        )
        group.add_argument(
            "--mel-bins",
            type=int,
            default=d["mel_bins"],
            help=f"filterbank bins for --audio fbank {default('mel_bins', '128')}",
        )
        group.add_argument(
            "--waveform", action="store_true", help="also store the resampled waveform so features can be recomputed"
        )
        group.add_argument(
            "--min-seconds",
            type=float,
            default=d["min_seconds"],
            help=f"audio shorter than this is a failure {default('min_seconds')}",
        )


def parse_crop(text: str) -> tuple[int, int, int, int]:
    """``X,Y,W,H`` -> four integers; width and height positive."""
    parts = text.split(",")
    try:
        x, y, width, height = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y,W,H (four integers), got {text!r}") from None
    if x < 0 or y < 0 or width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"X and Y must be >= 0 and W, H >= 1, got {text!r}")
    return x, y, width, height


def settings_from_args(args: argparse.Namespace, preparer: Preparer, **overrides) -> PrepareSettings:
    audio = None
    if preparer.audio:
        audio = make_recipe(args.audio, sample_rate=args.sample_rate, seconds=args.seconds, mel_bins=args.mel_bins)
    values = dict(
        fps=getattr(args, "fps", 1.0),
        size=getattr(args, "size", 224),
        folder_fps=getattr(args, "folder_fps", 25.0),
        crop=getattr(args, "crop", None),
        audio=audio,
        waveform=getattr(args, "waveform", False),
        min_seconds=getattr(args, "min_seconds", 0.1),
    )
    values.update(overrides)
    return PrepareSettings(**values)


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


def add_split_arguments(parser: argparse.ArgumentParser, test: float = 0.2, val: float = 0.1) -> None:
    group = parser.add_argument_group("generated split")
    group.add_argument(
        "--test-fraction", type=float, default=test, help="share of groups in the test split (default: %(default)s)"
    )
    group.add_argument(
        "--val-fraction", type=float, default=val, help="share of groups in the validation split (default: %(default)s)"
    )


def split_rule_from_args(args: argparse.Namespace, **kwargs) -> SplitRule:
    return SplitRule(test_fraction=args.test_fraction, val_fraction=args.val_fraction, seed=args.seed, **kwargs)


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
    "IMAGE",
    "VIDEO",
    "ClipError",
    "ClipTask",
    "Failure",
    "Listing",
    "PrepareSettings",
    "Preparer",
    "Source",
    "SplitRule",
    "assign_splits",
    "make_recipe",
    "register_preparer",
]
