"""VGGSound: ~200k ten-second YouTube clips of 309 sound classes (those still available).

Raw layout (``--root``)::

    vggsound.csv                  rows youtube_id,start_seconds,label,split (no header;
                                  labels with commas are quoted; split is train or test)
    **/<youtube_id>_<start:06d>.mp4   videos anywhere below the root (e.g. video/), also found as
                                  <youtube_id>_<start>.mp4 or <youtube_id>.mp4
    **/<same stem>.wav            optional separate audio; otherwise the video's audio track

The classes are the sorted labels of the listed rows, saved in the cache. Audio follows the
VGGSound recipe of OGM-GE (16 kHz, n_fft 256, hop 128): 129 x 1251 stored for 10 s; the loader
takes a 5 s window (626 columns), random in training and centred in evaluation.
"""

from __future__ import annotations

from pathlib import Path

from ..prepare.options import PrepareOptions, option
from ..prepare.plan import ClipTask, Failure, Listing, mark_duplicates
from ..registry import register_dataset
from .cached import AudioLayout, Frames, PreparedDataset, build_splits, windowed_options
from .layout import MediaIndex, audio_visual, read_csv_rows, require_file, sorted_labels

SPLITS = {"train": "train", "test": "test", "val": "val", "validation": "val"}
ROW = "youtube_id,start_seconds,label,split"


class VggsoundOptions(PrepareOptions):
    csv: Path | None = option(None, "the VGGSound list (default: ROOT/vggsound.csv)")


@register_dataset
class Vggsound(PreparedDataset):
    """VGGSound: vggsound.csv + video folder (309 classes, derived from the list)"""

    examples = "  avbalance prepare vggsound --root ~/data/vggsound --out ~/cache/vggsound --workers 16\n"
    Options = VggsoundOptions
    audio = "vggsound"

    @staticmethod
    def list_clips(root: Path, options: VggsoundOptions) -> Listing:
        csv_path = require_file(options.csv or root / "vggsound.csv", f"VGGSound list: {ROW}")
        media = MediaIndex(root)
        listing = Listing(clips=[], class_names=[])
        for number, row in read_csv_rows(csv_path):
            if len(row) != 4 or not row[1].isdigit() or row[3].lower() not in SPLITS:
                problem = f"bad row {','.join(row)!r}: expected {ROW}"
                listing.failures.append(Failure(f"{csv_path.name}:{number}", problem, str(csv_path)))
                continue
            youtube_id, start, label, split = row
            clip_id = f"{youtube_id}_{int(start):06d}"
            video, audio = media.find([clip_id, f"{youtube_id}_{start}", youtube_id])
            if video is None:
                listing.failures.append(Failure(clip_id, f"missing video {clip_id}.mp4", str(root)))
                continue
            sources = audio_visual(video, audio)
            listing.clips.append(ClipTask(id=clip_id, label=label, split=SPLITS[split.lower()], sources=sources))
        listing.clips = mark_duplicates(listing.clips, listing.failures)
        listing.class_names = sorted_labels(clip.label for clip in listing.clips)
        return listing

    @classmethod
    def load(cls, root: str | None = None, frames: Frames = 3, image_size: int | None = None, augment: bool = True,
             audio_seconds: float | None = 5.0, audio_layout: AudioLayout = "image"):  # fmt: skip
        """VGGSound from a cache made by ``avbalance prepare vggsound``.

        Options: ``frames`` per clip (default 3, as OGM-GE), ``image_size`` (default: stored size),
        ``augment`` (train split: crop + flip, random audio window), ``audio_seconds`` (window of
        the stored spectrogram fed to the model, default 5 s = 626 columns; None for all of it),
        ``audio_layout`` (``sequence``: the audio features as a ``(T, F)`` sequence).
        """
        cache = cls.open(root)
        return build_splits(cache, windowed_options(cache, frames, image_size, augment, audio_seconds, audio_layout))
