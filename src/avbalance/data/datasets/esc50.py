"""ESC-50: 2000 five-second environmental sound recordings of 50 classes in 5 folds (audio only).

Raw layout (``--root``, the unpacked ESC-50 repository)::

    audio/<fold>-<source id>-<take>-<target>.wav
    meta/esc50.csv     filename,fold,target,category,esc10,src_file,take (with this header)

Every clip is stored with its fold (split ``fold1`` ... ``fold5``); the loader's ``test_fold``
chooses the test fold and ``val_fold`` (optional) a validation fold, the rest is train.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import ConfigError, DataError
from ..prepare.options import PrepareOptions
from ..prepare.plan import AUDIO, ClipTask, Failure, Listing, Source, mark_duplicates
from ..registry import register_dataset
from .cached import AudioLayout, LoaderOptions, PreparedDataset, build_splits
from .layout import read_csv_dicts, require_dir, require_file

COLUMNS = ["filename", "fold", "target", "category"]
FOLDS = range(1, 6)


@register_dataset
class Esc50(PreparedDataset):
    """ESC-50 environmental sounds (50 classes, 5 folds, audio only): audio/*.wav + meta/esc50.csv"""

    examples = "  avbalance prepare esc50 --root ~/data/ESC-50-master --out ~/cache/esc50\n"
    video = False
    prepare_defaults = {"seconds": 5.0}

    @staticmethod
    def list_clips(root: Path, options: PrepareOptions) -> Listing:
        audio_dir = require_dir(root / "audio", "the ESC-50 .wav files")
        meta = require_file(root / "meta" / "esc50.csv", "ESC-50 metadata")
        names: dict[int, str] = {}
        clips, failures = [], []
        for number, row in read_csv_dicts(meta, COLUMNS):
            if not (row["fold"].isdigit() and int(row["fold"]) in FOLDS and row["target"].isdigit()):
                problem = f"bad fold {row['fold']!r} or target {row['target']!r} on line {number}"
                failures.append(Failure(row["filename"] or f"line {number}", problem, str(meta)))
                continue
            target = int(row["target"])
            if names.setdefault(target, row["category"]) != row["category"]:
                raise DataError(
                    f"{meta}: line {number} names target {target} {row['category']!r}, earlier rows {names[target]!r}"
                )
            sources = {"audio": Source(AUDIO, str(audio_dir / row["filename"]))}
            columns = {"fold": row["fold"], "esc10": row.get("esc10", "")}
            clips.append(
                ClipTask(Path(row["filename"]).stem, row["category"], f"fold{row['fold']}", sources, columns=columns)
            )
        class_names = [names[target] for target in sorted(names)]  # the official target order
        return Listing(clips=mark_duplicates(clips, failures), class_names=class_names, failures=failures)

    @classmethod
    def load(
        cls,
        root: str | None = None,
        test_fold: int = 1,
        val_fold: int | None = None,
        audio_layout: AudioLayout = "image",
    ):
        """ESC-50 from a cache made by ``avbalance prepare esc50`` (audio only).

        Options: ``test_fold`` (1-5, default 1), ``val_fold`` (another fold for validation;
        default none: a seeded 10 % of the training folds), ``audio_layout`` (``sequence``: the
        audio features as a ``(T, F)`` sequence). Audio: ``(1, 257, 313)`` for 5 s with the
        default OGM-GE recipe.
        """
        for name, fold in (("test_fold", test_fold), ("val_fold", val_fold)):
            if fold is not None and fold not in FOLDS:
                raise ConfigError(f"option {name} must be one of 1-5, got {fold!r}")
        if val_fold == test_fold:
            raise ConfigError(f"options val_fold and test_fold are both {test_fold}; choose two different folds")

        def split_of(row: dict) -> str:
            fold = int(row["split"][len("fold") :])
            return "test" if fold == test_fold else "val" if fold == val_fold else "train"

        options = LoaderOptions(augment=False, audio_layout=audio_layout)
        return build_splits(cls.open(root), options, split_of=split_of)
