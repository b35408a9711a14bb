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

from pathlib import Path

from ..prepare.options import PrepareOptions, option, settings_from_options
from ..prepare.plan import ClipTask, Failure, Listing, PrepareSettings, mark_duplicates
from ..registry import register_dataset
from .cached import PreparedDataset
from .layout import audio_visual, read_csv_dicts, require_dir, require_file, sorted_labels

SPLITS = {"train": "train", "test": "test", "val": "val"}


class Ssw60Options(PrepareOptions):
    require_audio: bool = option(False, "treat videos without usable audio as failures")


@register_dataset
class Ssw60(PreparedDataset):
    """SSW60 bird species (60 classes): video_ml/*.mp4 + video_ml.csv + taxa.csv

    Loader: the official train / test split; ``frames`` per clip (default 3), ``image_size``,
    ``augment``. Audio: ``(1, 257, 625)`` for 10 s with the OGM-GE recipe."""

    examples = "  avbalance prepare ssw60 --root ~/data/ssw60 --out ~/cache/ssw60\n"
    Options = Ssw60Options
    prepare_defaults = {"seconds": 10.0}

    @staticmethod
    def list_clips(root: Path, options: Ssw60Options) -> Listing:
        video_dir = require_dir(root / "video_ml", "the SSW60 .mp4 videos")
        video_list = require_file(root / "video_ml.csv", "SSW60 video list")
        rows = read_csv_dicts(video_list, ["asset_id", "label", "split"])
        name_of = _class_names(root, {row["label"] for _, row in rows})
        listing = Listing(clips=[], class_names=[name_of[label] for label in sorted_labels(name_of)])
        for number, row in rows:
            if row["split"] not in SPLITS:
                problem = f"unknown split {row['split']!r} on line {number} of video_ml.csv"
                listing.failures.append(Failure(row["asset_id"], problem, str(video_list)))
                continue
            video = video_dir / f"{row['asset_id']}.mp4"
            clip = ClipTask(row["asset_id"], name_of[row["label"]], SPLITS[row["split"]], audio_visual(video))
            listing.clips.append(clip)
        listing.clips = mark_duplicates(listing.clips, listing.failures)
        return listing

    @classmethod
    def settings(cls, options: Ssw60Options) -> PrepareSettings:
        return settings_from_options(options, has_audio=True, allow_missing_audio=not options.require_audio)


def _class_names(root: Path, labels: set[str]) -> dict[str, str]:
    """Label number -> class name."""
    taxa = root / "taxa.csv"
    if not taxa.is_file():
        return {label: label for label in labels}
    names = {row["label"]: row.get("common_name") or row["label"] for _, row in read_csv_dicts(taxa, ["label"])}
    return {label: names.get(label, label) for label in labels}
