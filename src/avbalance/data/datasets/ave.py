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

from pathlib import Path

from ...errors import DataError
from ..prepare.options import PrepareOptions, option
from ..prepare.plan import ClipTask, Listing, mark_duplicates
from ..registry import register_dataset
from .cached import PreparedDataset
from .layout import audio_visual, read_text_lines, require_dir, require_file, sorted_labels

SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}


class AveOptions(PrepareOptions):
    event_only: bool = option(False, "keep only the annotated event segment of each clip")


@register_dataset
class Ave(PreparedDataset):
    """AVE events (28 classes): AVE/*.mp4 + Annotations.txt and the official split lists

    Loader: the official train / val / test splits; ``frames`` per clip (default 3, as OGM-GE),
    ``image_size``, ``augment``. Audio: ``(1, 257, 625)`` for the default 10 s OGM-GE recipe."""

    examples = "  avbalance prepare ave --root ~/data/AVE_Dataset --out ~/cache/ave\n"
    Options = AveOptions
    prepare_defaults = {"seconds": 10.0}

    @staticmethod
    def list_clips(root: Path, options: AveOptions) -> Listing:
        video_dir = require_dir(root / "AVE", "the AVE .mp4 videos")
        annotations = require_file(root / "Annotations.txt", "AVE annotations")
        listing = Listing(clips=[], class_names=sorted_labels(fields[0] for _, fields in _read_rows(annotations)))
        for split, name in SPLIT_FILES.items():
            for _, (category, video_id, _quality, start, end) in _read_rows(
                require_file(root / name, f"AVE {split} split")
            ):
                clip = ClipTask(video_id, category, split, audio_visual(video_dir / f"{video_id}.mp4"))
                clip.columns = {"event_start": start, "event_end": end}
                if options.event_only:
                    clip.start, clip.end = float(start), float(end)
                listing.clips.append(clip)
        listing.clips = mark_duplicates(listing.clips, listing.failures)
        return listing


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
