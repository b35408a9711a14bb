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

import argparse
from pathlib import Path

from ..prepare.features import AudioRecipe
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
)
from ..registry import register_dataset
from .cached import LoaderOptions, build_splits, open_cache
from .layout import MediaIndex, read_csv_rows, require_file, sorted_labels

SPLITS = {"train": "train", "test": "test", "val": "val", "validation": "val"}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--csv", type=Path, help="the VGGSound list (default: ROOT/vggsound.csv)")


def list_clips(root: Path, args: argparse.Namespace) -> Listing:
    csv_path = require_file(args.csv or root / "vggsound.csv", "VGGSound list: youtube_id,start_seconds,label,split")
    media = MediaIndex(root)
    failures: list[Failure] = []
    clips = []
    for number, row in read_csv_rows(csv_path):
        if len(row) != 4 or not row[1].isdigit() or row[3].lower() not in SPLITS:
            failures.append(
                Failure(
                    f"{csv_path.name}:{number}",
                    f"bad row {','.join(row)!r}: expected youtube_id,start_seconds,label,split",
                    str(csv_path),
                )
            )
            continue
        youtube_id, start, label, split = row
        clip_id = f"{youtube_id}_{int(start):06d}"
        video, audio = media.find([clip_id, f"{youtube_id}_{start}", youtube_id])
        if video is None:
            failures.append(Failure(clip_id, f"missing video {clip_id}.mp4", str(root)))
            continue
        clips.append(
            ClipTask(
                id=clip_id,
                label=label,
                split=SPLITS[split.lower()],
                sources={"audio": Source(AUDIO, str(audio or video)), "visual": Source(VIDEO, str(video))},
            )
        )
    clips = mark_duplicates(clips, failures)
    return Listing(clips=clips, class_names=sorted_labels(c.label for c in clips), failures=failures)


register_preparer(
    Preparer(
        name="vggsound",
        summary="VGGSound: vggsound.csv + video folder (309 classes, derived from the list)",
        add_arguments=_add_arguments,
        list_clips=list_clips,
        audio="vggsound",
        defaults={"fps": 1.0, "size": 224},
        examples="  avbalance prepare vggsound --root ~/data/vggsound --out ~/cache/vggsound --workers 16\n",
    )
)


@register_dataset("vggsound")
def build_vggsound(
    root: str | None = None,
    frames: int = 3,
    image_size: int | None = None,
    augment: bool = True,
    audio_seconds: float | None = 5.0,
):
    """VGGSound from a cache made by ``avbalance prepare vggsound``.

    Options: ``frames`` per clip (default 3, as OGM-GE), ``image_size`` (default: stored size),
    ``augment`` (train split: crop + flip, random audio window), ``audio_seconds`` (window of the
    stored spectrogram fed to the model, default 5 s = 626 columns; None for all of it).
    """
    cache = open_cache(root, "vggsound")
    window = None
    if audio_seconds:
        # The number of feature columns the recipe gives for audio_seconds of sound.
        window = AudioRecipe(**{**cache.settings["audio"], "seconds": audio_seconds}).shape()[1]
    options = LoaderOptions(frames=frames, image_size=image_size, augment=augment, audio_frames=window)
    return build_splits(cache, options)
