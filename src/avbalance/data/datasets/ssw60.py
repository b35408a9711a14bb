"""SSW60 (Sapsucker Woods 60): 5400 bird videos of 60 species, with their audio tracks.

Raw layout (``--root``, the unpacked ``ssw60`` folder)::

    video_ml/<asset_id>.mp4
    video_ml.csv    asset_id,label,split,... (header; split is train or test)
    taxa.csv        label,species_code,...,common_name,... (class names; optional)

Class names are ``taxa.csv``'s common names in label order (the label numbers when it is absent).
Not every SSW60 video has a usable audio track: such clips are kept with silent audio and the
manifest column ``audio_present`` = 0, unless ``--require-audio`` makes them failures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..prepare.plan import (
    AUDIO,
    VIDEO,
    ClipTask,
    Failure,
    Listing,
    Preparer,
    Source,
    mark_duplicates,
    register_preparer,
    settings_from_args,
)
from ..registry import register_dataset
from .cached import LoaderOptions, build_splits, open_cache
from .layout import read_csv_dicts, require_dir, require_file, sorted_labels

SPLITS = {"train": "train", "test": "test", "val": "val"}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--require-audio", action="store_true", help="treat videos without usable audio as failures")


def _class_names(root: Path, labels: set[str]) -> dict[str, str]:
    """Label number -> class name."""
    taxa = root / "taxa.csv"
    if not taxa.is_file():
        return {label: label for label in labels}
    names = {row["label"]: row.get("common_name") or row["label"] for _, row in read_csv_dicts(taxa, ["label"])}
    return {label: names.get(label, label) for label in labels}


def list_clips(root: Path, args: argparse.Namespace) -> Listing:
    video_dir = require_dir(root / "video_ml", "the SSW60 .mp4 videos")
    rows = read_csv_dicts(require_file(root / "video_ml.csv", "SSW60 video list"), ["asset_id", "label", "split"])
    name_of = _class_names(root, {row["label"] for _, row in rows})
    clips, failures = [], []
    for number, row in rows:
        if row["split"] not in SPLITS:
            failures.append(
                Failure(
                    row["asset_id"],
                    f"unknown split {row['split']!r} on line {number} of video_ml.csv",
                    str(root / "video_ml.csv"),
                )
            )
            continue
        path = str(video_dir / f"{row['asset_id']}.mp4")
        clips.append(
            ClipTask(
                id=row["asset_id"],
                label=name_of[row["label"]],
                split=SPLITS[row["split"]],
                sources={"audio": Source(AUDIO, path), "visual": Source(VIDEO, path)},
            )
        )
    ordered = [name_of[label] for label in sorted_labels(name_of)]
    return Listing(clips=mark_duplicates(clips, failures), class_names=ordered, failures=failures)


def _settings(args: argparse.Namespace, preparer: Preparer):
    return settings_from_args(args, preparer, allow_missing_audio=not args.require_audio)


register_preparer(
    Preparer(
        name="ssw60",
        summary="SSW60 bird species (60 classes): video_ml/*.mp4 + video_ml.csv + taxa.csv",
        add_arguments=_add_arguments,
        list_clips=list_clips,
        audio="ogm",
        defaults={"fps": 1.0, "size": 224, "seconds": 10.0},
        make_settings=_settings,
        examples="  avbalance prepare ssw60 --root ~/data/ssw60 --out ~/cache/ssw60\n",
    )
)


@register_dataset("ssw60")
def build_ssw60(root: str | None = None, frames: int = 3, image_size: int | None = None, augment: bool = True):
    """SSW60 videos from a cache made by ``avbalance prepare ssw60`` (official train / test split).

    Options: ``frames`` per clip (default 3), ``image_size`` (default: stored size), ``augment``
    (train split). Audio: ``(1, 257, 625)`` for 10 s with the OGM-GE recipe.
    """
    cache = open_cache(root, "ssw60")
    return build_splits(cache, LoaderOptions(frames=frames, image_size=image_size, augment=augment))
