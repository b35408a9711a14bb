"""CREMA-D: 7442 clips of 91 actors speaking with one of 6 emotions.

Raw layout (``--root``)::

    VideoFlash/<actor>_<sentence>_<EMO>_<level>.flv   e.g. 1001_DFA_ANG_XX.flv
    AudioWAV/<actor>_<sentence>_<EMO>_<level>.wav

The emotion comes from the file name. Splits: the official OGM-GE lists (``--train-list`` and
``--test-list``, rows ``<clip>,<EMO>``), or by default a seeded **actor-disjoint** split (the
official one shares actors between train and test).
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from ..prepare.options import SplitOptions, option, split_rule
from ..prepare.plan import ClipTask, Failure, Listing, mark_duplicates
from ..registry import register_dataset
from .cached import AudioLayout, Frames, LoaderOptions, PreparedDataset, build_splits
from .layout import audio_visual, read_csv_rows, require_dir

# The official OGM-GE class order.
EMOTIONS = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
NAME_PATTERN = "<actor>_<sentence>_<emotion>_<level>"


class CremadOptions(SplitOptions):
    train_list: Path | None = option(None, "official split: training clips, rows '<clip>,<EMO>' (needs --test-list)")
    test_list: Path | None = option(None, "official split: test clips, rows '<clip>,<EMO>'")


@register_dataset
class Cremad(PreparedDataset):
    """CREMA-D emotions (6 classes): VideoFlash/*.flv + AudioWAV/*.wav"""

    examples = (
        "  avbalance prepare cremad --root ~/data/CREMA-D --out ~/cache/cremad\n"
        "  avbalance prepare cremad --root ~/data/CREMA-D --out ~/cache/cremad-official \\\n"
        "      --train-list OGM-GE/data/CREMAD/train.csv --test-list OGM-GE/data/CREMAD/test.csv\n"
    )
    Options = CremadOptions

    @staticmethod
    def list_clips(root: Path, options: CremadOptions) -> Listing:
        video_dir = require_dir(root / "VideoFlash", "the CREMA-D .flv videos")
        audio_dir = require_dir(root / "AudioWAV", "the CREMA-D .wav files")
        listing = Listing(clips=[], class_names=list(EMOTIONS))
        for stem in sorted({p.stem for p in video_dir.glob("*.flv")} | {p.stem for p in audio_dir.glob("*.wav")}):
            if len(stem.split("_")) == 4:
                listing.clips.append(_clip(stem, stem.split("_")[2], "", video_dir, audio_dir))
            else:
                wav = str(audio_dir / f"{stem}.wav")
                listing.failures.append(Failure(stem, f"file name is not {NAME_PATTERN}", wav))
        if (options.train_list is None) != (options.test_list is None):
            given = options.train_list or options.test_list
            raise DataError(f"{given}: give both --train-list and --test-list, or neither")
        if options.train_list is not None:
            _apply_official_lists(listing, options.train_list, options.test_list, video_dir, audio_dir)
        else:
            listing.split_rule = split_rule(options, group=lambda clip: clip.columns["actor"])
        return listing

    @classmethod
    def load(
        cls,
        root: str | None = None,
        frames: Frames = 1,
        image_size: int | None = None,
        augment: bool = True,
        audio_layout: AudioLayout = "image",
    ):
        """CREMA-D from a cache made by ``avbalance prepare cremad``.

        Options: ``frames`` per clip (default 1, as OGM-GE; BalanceMM uses 2; ``all``: every
        stored frame), ``image_size`` (default: the stored size, 224), ``augment`` (random resized
        crop + flip on the train split), ``audio_layout`` (``sequence``: the audio features as a
        ``(T, F)`` sequence). Audio: ``(1, 257, 188)`` with the default recipe. Validation: the
        actor-disjoint split's val part; with the official lists (which have none) a seeded 10 %
        of train.
        """
        options = LoaderOptions(frames=frames, image_size=image_size, augment=augment, audio_layout=audio_layout)
        return build_splits(cls.open(root), options)


def _clip(stem: str, emotion: str, split: str, video_dir: Path, audio_dir: Path) -> ClipTask:
    sources = audio_visual(video_dir / f"{stem}.flv", audio_dir / f"{stem}.wav")
    return ClipTask(id=stem, label=emotion, split=split, sources=sources, columns={"actor": stem.split("_")[0]})


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
