"""``manifest``: your own data, described by one CSV file.

Columns: ``id``, ``label``, ``split`` (train, val or test) and one column per modality, named as
the modality (``audio``, ``visual``, ``flow``, ``depth``, ...). A cell holds a path, relative to
the CSV file's folder or absolute:

* an audio file (.wav .flac .ogg .mp3 .m4a ...) -> audio features;
* a video file (.mp4 .avi .mkv ...) -> its frames; in a column whose name starts with ``audio``,
  its audio track -> audio features;
* a folder of images -> frames (natural name order, shot at ``--folder-fps``);
* a ``.npy`` file -> the array as it is when every clip's array has the same shape; when only the
  first axis (time) varies between clips: a ``(T, F)`` array is a sequence, a ``(T, H, W)`` or
  ``(T, H, W, C)`` uint8 array a frame stack, both stored without padding;
* a ``.txt`` file -> its text (UTF-8).

Append ``:kind`` to a column name to say what it holds when the guess above is wrong:
``audio``, ``video``, ``folder``, ``flow`` (a folder with ``u/`` and ``v/`` image folders),
``array`` (one fixed shape), ``sequence`` (``(T, F)`` ``.npy``), ``frames`` (``(T, H, W[, C])``
uint8 ``.npy``) or ``text`` (the cell's string itself, or a ``.txt`` file); e.g. ``sound:audio``
reads the audio track of the video in column ``sound``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ...errors import DataError
from ..prepare.cache import read_npy_header
from ..prepare.options import PrepareOptions, option
from ..prepare.plan import (
    ARRAY,
    AUDIO,
    FLOW,
    FOLDER,
    FRAME_STACK,
    SEQUENCE,
    TEXT,
    VIDEO,
    ClipTask,
    Failure,
    Listing,
    Source,
    mark_duplicates,
)
from ..registry import register_dataset
from .cached import AudioLayout, Frames, PreparedDataset, build_splits, windowed_options
from .layout import AUDIO_SUFFIXES, VIDEO_SUFFIXES, read_csv_dicts, require_file, sorted_labels

REQUIRED = ["id", "label", "split"]
SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
KINDS = {
    "audio": AUDIO,
    "video": VIDEO,
    "folder": FOLDER,
    "flow": FLOW,
    "array": ARRAY,
    "sequence": SEQUENCE,
    "frames": FRAME_STACK,
    "text": TEXT,
}
RAGGED_ARRAY_KINDS = {2: SEQUENCE, 3: FRAME_STACK, 4: FRAME_STACK}  # by number of axes
SMALL_ENCODER = {"width": 16, "layers": [1, 1, 1]}


class ManifestOptions(PrepareOptions):
    csv: Path | None = option(None, "the clip list (default: ROOT/manifest.csv)")


def guess_kind(column: str, value: str, base: Path) -> str:
    suffix = Path(value).suffix.lower()
    if suffix == ".npy":
        return ARRAY
    if suffix == ".txt":
        return TEXT
    if suffix in AUDIO_SUFFIXES:
        return AUDIO
    if suffix in VIDEO_SUFFIXES:
        return AUDIO if column.startswith("audio") else VIDEO
    if (base / value).is_dir() or not suffix:
        return FOLDER
    raise DataError(
        f"column {column!r}: cannot tell what {value!r} holds; name the column '{column}:<kind>' ({', '.join(KINDS)})"
    )


def _modality_columns(rows: list[tuple[int, dict]], base: Path, csv_path: Path) -> dict[str, tuple[str, str]]:
    """CSV column -> (modality name, source kind)."""
    header = list(rows[0][1]) if rows else []
    columns = {}
    for column in header:
        if column in REQUIRED:
            continue
        name, _, kind = column.partition(":")
        if kind and kind not in KINDS:
            raise DataError(f"{csv_path}: column {column!r} has unknown kind {kind!r}; use one of {', '.join(KINDS)}")
        if not kind:
            first = next((row[column] for _, row in rows if row.get(column)), None)
            if first is None:
                raise DataError(f"{csv_path}: column {column!r} is empty in every row")
            try:
                kind = guess_kind(name, first, base)
            except DataError as error:
                raise DataError(f"{csv_path}: {error}") from None
            if kind == ARRAY:
                kind = array_kind([npy_shape(_path(row[column], base)) for _, row in rows if row.get(column)])
        columns[column] = (name, KINDS.get(kind, kind))
    if not columns:
        raise DataError(f"{csv_path}: no modality column besides {', '.join(REQUIRED)}")
    return columns


def npy_shape(path: Path) -> tuple[int, ...] | None:
    """The shape in a ``.npy`` file's header (None: unreadable; the clip fails when prepared)."""
    try:
        with open(path, "rb") as handle:
            return tuple(read_npy_header(handle)[0])
    except (OSError, ValueError):
        return None


def array_kind(shapes: list[tuple[int, ...] | None]) -> str:
    """How a ``.npy`` column without a kind is stored: as it is (ARRAY) when every clip has the same
    shape, as a sequence or a frame stack when the first axis (time) varies. Other differences stay
    per-clip failures of the ARRAY kind."""
    shapes = [shape for shape in shapes if shape is not None]
    if len(set(shapes)) <= 1 or len({len(shape) for shape in shapes}) != 1:
        return ARRAY
    if len({shape[0] for shape in shapes}) == 1:
        return ARRAY
    return RAGGED_ARRAY_KINDS.get(len(shapes[0]), ARRAY)


def _path(value: str, base: Path) -> Path:
    return Path(value) if Path(value).is_absolute() else base / value


def _source(kind: str, value: str, base: Path) -> Source:
    if kind == TEXT and Path(value).suffix.lower() != ".txt":
        return Source(TEXT, text=value)
    path = _path(value, base)
    if kind == FLOW:
        return Source(FLOW, (str(path / "u"), str(path / "v")))
    return Source(kind, str(path))


@register_dataset
class Manifest(PreparedDataset):
    """your own data: a CSV with id,label,split and one column per modality"""

    examples = (
        "  avbalance prepare manifest --root ~/data/mine --out ~/cache/mine\n"
        "      with ~/data/mine/manifest.csv:\n"
        "        id,label,split,audio,visual\n"
        "        clip1,dog,train,wav/clip1.wav,video/clip1.mp4\n"
    )
    Options = ManifestOptions

    @staticmethod
    def list_clips(root: Path, options: ManifestOptions) -> Listing:
        csv_path = require_file(
            options.csv or root / "manifest.csv", "the clip list with id,label,split and modality columns"
        )
        base = csv_path.parent
        ragged: list[tuple[int, int, int]] = []
        rows = read_csv_dicts(csv_path, REQUIRED, ragged)
        if not rows:
            lines = "no line has as many cells as the header" if ragged else "no clips below the header"
            raise DataError(f"{csv_path}: {lines}; add one line per clip")
        columns = _modality_columns(rows, base, csv_path)
        failures = [
            Failure(f"line {number}", f"{cells} cells on line {number}, the header has {width}", str(csv_path))
            for number, cells, width in ragged
        ]
        clips = []
        for number, row in rows:
            clip_id = row["id"] or f"line {number}"
            empty = [column for column in ["id", "label", *columns] if not row.get(column)]
            if empty or row["split"].lower() not in SPLITS:
                problem = f"empty {empty[0]!r}" if empty else f"unknown split {row['split']!r} (use train, val or test)"
                failures.append(Failure(clip_id, f"{problem} on line {number}", str(csv_path)))
                continue
            sources = {name: _source(kind, row[column], base) for column, (name, kind) in columns.items()}
            clips.append(
                ClipTask(id=row["id"], label=row["label"], split=SPLITS[row["split"].lower()], sources=sources)
            )
        clips = mark_duplicates(clips, failures, str(csv_path))
        return Listing(clips=clips, class_names=sorted_labels(c.label for c in clips), failures=failures)

    @classmethod
    def load(
        cls,
        root: str | None = None,
        frames: Frames = 3,
        image_size: int | None = None,
        augment: bool = True,
        audio_seconds: float | None = None,
        audio_layout: AudioLayout = "image",
        seq_len: int | None = None,
        resample: bool = False,
        tokenizer: str | None = None,
        max_tokens: int | None = None,
        min_count: int = 1,
    ):
        """Your own data from a cache made by ``avbalance prepare manifest``; modalities are the
        CSV's modality columns.

        Options: ``frames`` per clip (default 3; ``all``: every stored frame, variable length),
        ``image_size`` (default: stored size), ``augment`` (train split), ``audio_seconds`` (a
        window of the audio features, random in training; default: all of it), ``audio_layout``
        (``image`` ``(1, F, T)`` or ``sequence`` ``(T, F)``); sequences: ``seq_len`` (steps
        served; default: the whole sequence, variable length) and ``resample`` (interpolate to
        ``seq_len`` instead of a window or zero padding); text: ``tokenizer`` (a local Hugging Face
        tokenizer folder; default: a word vocabulary of the train split), ``max_tokens``,
        ``min_count`` (word vocabulary). The small encoder is recommended when stored frames are
        at most 64 pixels.
        """
        cache = cls.open(root)
        sizes = [spec["row_shape"][0] for spec in cache.modalities.values() if spec["kind"] in ("frames", "flow")]
        small = bool(sizes) and max(sizes) <= 64
        options = replace(
            windowed_options(cache, frames, image_size, augment, audio_seconds, audio_layout),
            seq_len=seq_len,
            resample=resample,
            tokenizer=tokenizer,
            max_tokens=max_tokens,
            min_count=min_count,
        )
        return build_splits(cache, options, recommended_encoder=SMALL_ENCODER if small else {})
