"""Kinetics-Sounds: the Kinetics clips of the classes that can be heard (31-34 classes depending
on the paper), 10 s each.

Raw layout (``--root``)::

    annotations/train.csv      Kinetics format: label,youtube_id,time_start,time_end,split[,is_cc]
    annotations/validate.csv   the Kinetics validation split: our test split (or val, see below)
    annotations/test.csv       optional: when present it is the test split and validate.csv the val split
    classes.txt                optional (or --classes FILE): the Kinetics-Sounds classes, one per line
    **/<youtube_id>_<start:06d>_<end:06d>.mp4   videos anywhere below the root (the Kinetics
                               downloader layout <split>/<label>/...), or **/<youtube_id>.mp4
    **/<same stem>.wav         optional separate audio; otherwise the video's audio track is used

Without a class list the classes are every label of the CSV files; with one, rows of other labels
are left out. The classes are saved in the cache (``classes.txt``, ``meta.json``).
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from ..prepare.options import PrepareOptions, option
from ..prepare.plan import ClipTask, Failure, Listing, mark_duplicates
from ..registry import register_dataset
from .cached import PreparedDataset
from .layout import MediaIndex, audio_visual, read_csv_dicts, read_text_lines, sorted_labels

COLUMNS = ["label", "youtube_id", "time_start", "time_end"]


class KineticsSoundsOptions(PrepareOptions):
    annotations: Path | None = option(None, "folder of train.csv / validate.csv / test.csv (default: ROOT/annotations)")
    classes: Path | None = option(
        None, "the class list, one per line (default: ROOT/classes.txt if present, else every label)"
    )


@register_dataset
class KineticsSounds(PreparedDataset):
    """Kinetics-Sounds: Kinetics CSV annotations + video folders (classes from the CSVs or a class list)

    Loader options: ``frames`` per clip (default 3, as BalanceMM), ``image_size``, ``augment``.
    Audio: ``(1, 128, 998)`` Kaldi-style fbank of 10 s by default."""

    examples = "  avbalance prepare kinetics_sounds --root ~/data/kinetics --out ~/cache/ks --classes ks_classes.txt\n"
    Options = KineticsSoundsOptions
    audio = "fbank"
    prepare_defaults = {"seconds": 10.0}

    @staticmethod
    def list_clips(root: Path, options: KineticsSoundsOptions) -> Listing:
        folder = options.annotations or (root / "annotations" if (root / "annotations").is_dir() else root)
        rows = {split: read_csv_dicts(path, COLUMNS) for split, path in _split_files(folder).items()}
        class_file = options.classes or (root / "classes.txt" if (root / "classes.txt").is_file() else None)
        if class_file is not None:
            class_names = [line for _, line in read_text_lines(class_file)]
        else:
            class_names = sorted_labels(row["label"] for split_rows in rows.values() for _, row in split_rows)
        media, wanted = MediaIndex(root), set(class_names)
        listing = Listing(clips=[], class_names=class_names)
        left_out = 0
        for split, split_rows in rows.items():
            for _, row in split_rows:
                if row["label"] not in wanted:
                    left_out += 1
                else:
                    listing.clips.append(_clip(row, split, media, listing.failures))
        listing.clips = mark_duplicates([c for c in listing.clips if c is not None], listing.failures)
        if left_out:
            listing.notes.append(f"{left_out} rows have a label outside {class_file} and are left out")
        return listing


def _split_files(folder: Path) -> dict[str, Path]:
    found = {
        name: folder / f"{name}.csv"
        for name in ("train", "validate", "val", "test")
        if (folder / f"{name}.csv").is_file()
    }
    if "train" not in found:
        raise DataError(f"{folder / 'train.csv'}: missing file (Kinetics train annotations)")
    validate = found.get("validate") or found.get("val")
    files = {"train": found["train"]}
    if "test" in found:
        files["test"] = found["test"]
        if validate:
            files["val"] = validate
    elif validate:
        files["test"] = validate
    else:
        raise DataError(f"{folder}: no validate.csv or test.csv for the test split")
    return files


def _clip(row: dict, split: str, media: MediaIndex, failures: list[Failure]) -> ClipTask | None:
    youtube_id = row["youtube_id"]
    try:
        start, end = int(float(row["time_start"])), int(float(row["time_end"]))
    except ValueError:
        failures.append(Failure(youtube_id, f"bad time_start/time_end {row['time_start']!r}/{row['time_end']!r}"))
        return None
    clip_id = f"{youtube_id}_{start:06d}_{end:06d}"
    video, audio = media.find([clip_id, youtube_id])
    if video is None:
        failures.append(Failure(clip_id, f"missing video {clip_id}.mp4 (or {youtube_id}.mp4)"))
        return None
    return ClipTask(id=clip_id, label=row["label"], split=split, sources=audio_visual(video, audio))
