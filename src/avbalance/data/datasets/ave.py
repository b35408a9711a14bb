"""AVE (Audio-Visual Event localisation): 4143 ten-second YouTube clips of 28 event classes.

Raw layout (``--root``, the unpacked ``AVE_Dataset`` folder)::

    AVE/<video id>.mp4
    Annotations.txt    Category&VideoID&Quality&StartTime&EndTime   (header + one row per clip)
    trainSet.txt       same format: the official train / validation / test splits
    valSet.txt
    testSet.txt

Classes are the sorted categories of ``Annotations.txt``. ``--event-only`` keeps only the
annotated event segment [StartTime, EndTime) instead of the whole clip.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...errors import DataError
from ..prepare.plan import (
    AUDIO,
    VIDEO,
    ClipTask,
    Listing,
    Preparer,
    Source,
    mark_duplicates,
    register_preparer,
)
from ..registry import register_dataset
from .cached import LoaderOptions, build_splits, open_cache
from .layout import read_text_lines, require_dir, require_file, sorted_labels

SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--event-only", action="store_true", help="keep only the annotated event segment of each clip")


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    rows = []
    for number, line in read_text_lines(path):
        fields = [field.strip() for field in line.split("&")]
        if fields[0] == "Category":  # the header row
            continue
        if len(fields) != 5:
            raise DataError(f"{path}: line {number} is not 'Category&VideoID&Quality&StartTime&EndTime': {line!r}")
        try:
            float(fields[3]), float(fields[4])
        except ValueError:
            raise DataError(f"{path}: line {number} has non-numeric start/end times: {line!r}") from None
        rows.append((number, fields))
    return rows


def list_clips(root: Path, args: argparse.Namespace) -> Listing:
    video_dir = require_dir(root / "AVE", "the AVE .mp4 videos")
    annotations = require_file(root / "Annotations.txt", "AVE annotations")
    class_names = sorted_labels(fields[0] for _, fields in _read_rows(annotations))
    listing = Listing(clips=[], class_names=class_names)
    for split, name in SPLIT_FILES.items():
        for _, (category, video_id, _quality, start, end) in _read_rows(
            require_file(root / name, f"AVE {split} split")
        ):
            path = str(video_dir / f"{video_id}.mp4")
            listing.clips.append(
                ClipTask(
                    id=video_id,
                    label=category,
                    split=split,
                    sources={"audio": Source(AUDIO, path), "visual": Source(VIDEO, path)},
                    start=float(start) if args.event_only else None,
                    end=float(end) if args.event_only else None,
                    columns={"event_start": start, "event_end": end},
                )
            )
    listing.clips = mark_duplicates(listing.clips, listing.failures)
    return listing


register_preparer(
    Preparer(
        name="ave",
        summary="AVE events (28 classes): AVE/*.mp4 + Annotations.txt and the official split lists",
        add_arguments=_add_arguments,
        list_clips=list_clips,
        audio="ogm",
        defaults={"fps": 1.0, "size": 224, "seconds": 10.0},
        examples="  avbalance prepare ave --root ~/data/AVE_Dataset --out ~/cache/ave\n",
    )
)


@register_dataset("ave")
def build_ave(root: str | None = None, frames: int = 3, image_size: int | None = None, augment: bool = True):
    """AVE from a cache made by ``avbalance prepare ave``: the official train / val / test splits.

    Options: ``frames`` per clip (default 3, as OGM-GE), ``image_size`` (default: stored size),
    ``augment`` (train split). Audio: ``(1, 257, 625)`` for the default 10 s OGM-GE recipe.
    """
    cache = open_cache(root, "ave")
    return build_splits(cache, LoaderOptions(frames=frames, image_size=image_size, augment=augment))
