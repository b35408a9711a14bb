"""CREMA-D: 7442 clips of 91 actors speaking with one of 6 emotions.

Raw layout (``--root``)::

    VideoFlash/<actor>_<sentence>_<EMO>_<level>.flv   e.g. 1001_DFA_ANG_XX.flv
    AudioWAV/<actor>_<sentence>_<EMO>_<level>.wav

The emotion comes from the file name. Splits: the official OGM-GE lists (``--train-list`` and
``--test-list``, rows ``<clip>,<EMO>``), or by default a seeded **actor-disjoint** split (the
official one shares actors between train and test).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...errors import DataError
from ..prepare.plan import (
    AUDIO,
    VIDEO,
    ClipTask,
    Failure,
    Listing,
    Preparer,
    Source,
    add_split_arguments,
    mark_duplicates,
    register_preparer,
    split_rule_from_args,
)
from ..registry import register_dataset
from .cached import LoaderOptions, build_splits, open_cache
from .layout import read_csv_rows, require_dir

# The official OGM-GE class order.
EMOTIONS = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--train-list", type=Path, help="official split: training clips, rows '<clip>,<EMO>' (needs --test-list)"
    )
    parser.add_argument("--test-list", type=Path, help="official split: test clips, rows '<clip>,<EMO>'")
    add_split_arguments(parser, test=0.2, val=0.1)


def list_clips(root: Path, args: argparse.Namespace) -> Listing:
    video_dir = require_dir(root / "VideoFlash", "the CREMA-D .flv videos")
    audio_dir = require_dir(root / "AudioWAV", "the CREMA-D .wav files")
    stems = sorted({p.stem for p in video_dir.glob("*.flv")} | {p.stem for p in audio_dir.glob("*.wav")})
    failures: list[Failure] = []
    clips = []
    for stem in stems:
        parts = stem.split("_")
        if len(parts) != 4:
            failures.append(
                Failure(stem, "file name is not <actor>_<sentence>_<emotion>_<level>", str(audio_dir / f"{stem}.wav"))
            )
            continue
        clips.append(_clip(stem, parts[2], "", video_dir, audio_dir))

    if (args.train_list is None) != (args.test_list is None):
        raise DataError(f"{args.train_list or args.test_list}: give both --train-list and --test-list, or neither")
    listing = Listing(clips=clips, class_names=list(EMOTIONS), failures=failures)
    if args.train_list is not None:
        _apply_official_lists(listing, args.train_list, args.test_list, video_dir, audio_dir)
    else:
        listing.split_rule = split_rule_from_args(args, group=lambda clip: clip.columns["actor"])
    return listing


def _clip(stem: str, emotion: str, split: str, video_dir: Path, audio_dir: Path) -> ClipTask:
    return ClipTask(
        id=stem,
        label=emotion,
        split=split,
        sources={
            "audio": Source(AUDIO, str(audio_dir / f"{stem}.wav")),
            "visual": Source(VIDEO, str(video_dir / f"{stem}.flv")),
        },
        columns={"actor": stem.split("_")[0]},
    )


def _apply_official_lists(
    listing: Listing, train_list: Path, test_list: Path, video_dir: Path, audio_dir: Path
) -> None:
    clips = []
    for split, path in (("train", train_list), ("test", test_list)):
        for number, row in read_csv_rows(path):
            if len(row) < 2 or not row[0]:
                raise DataError(f"{path}: line {number} is not '<clip>,<EMO>': {','.join(row)!r}")
            clips.append(_clip(row[0], row[1], split, video_dir, audio_dir))
    listed = {clip.id for clip in clips}
    left_out = [clip.id for clip in listing.clips if clip.id not in listed]
    if left_out:
        listing.notes.append(f"{len(left_out)} clips on disk are in neither list and are not prepared")
    listing.clips = mark_duplicates(clips, listing.failures, str(train_list))


register_preparer(
    Preparer(
        name="cremad",
        summary="CREMA-D emotions (6 classes): VideoFlash/*.flv + AudioWAV/*.wav",
        add_arguments=_add_arguments,
        list_clips=list_clips,
        audio="ogm",
        defaults={"fps": 1.0, "size": 224},
        examples=(
            "  avbalance prepare cremad --root ~/data/CREMA-D --out ~/cache/cremad\n"
            "  avbalance prepare cremad --root ~/data/CREMA-D --out ~/cache/cremad-official \\\n"
            "      --train-list OGM-GE/data/CREMAD/train.csv --test-list OGM-GE/data/CREMAD/test.csv\n"
        ),
    )
)


@register_dataset("cremad")
def build_cremad(root: str | None = None, frames: int = 1, image_size: int | None = None, augment: bool = True):
    """CREMA-D from a cache made by ``avbalance prepare cremad``.

    Options: ``frames`` per clip (default 1, as OGM-GE; BalanceMM uses 2), ``image_size`` (default:
    the stored size, 224), ``augment`` (random resized crop + flip on the train split).
    Audio: ``(1, 257, 188)`` with the default recipe. Validation: the actor-disjoint split's val
    part; with the official lists (which have none) a seeded 10 % of train.
    """
    cache = open_cache(root, "cremad")
    return build_splits(cache, LoaderOptions(frames=frames, image_size=image_size, augment=augment))
