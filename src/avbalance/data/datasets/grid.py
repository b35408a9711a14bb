"""GRID audio-visual sentence corpus: talking faces saying 'command colour preposition letter
digit adverb' sentences (e.g. "place blue in u eight now").

Raw layout (``--root``)::

    s<k>/<id>.mpg (or .mp4)         the videos of speaker s<k>, with their audio track
    alignments/s<k>/<id>.align      word alignments: 'start end word' per line, times in 1/25000 s,
                                    'sil' and 'sp' mark silence

Two tasks, chosen when preparing (``--task``):

* ``digit`` (default): the digit word cut out of each clip with the alignment -- its audio and the
  frames shown while it is spoken (25 fps); a 10-class spoken-digit task;
* ``sentence``: whole clips with all six word labels; the loader's ``task`` option picks which
  word is the label (command, colour, preposition, letter, digit, adverb).

GRID has no official split: a seeded split by clip (``--test-fraction``, ``--val-fraction``).
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Literal

from ...errors import ConfigError
from ..prepare.features import make_recipe
from ..prepare.options import SplitOptions, option, settings_from_options, split_rule
from ..prepare.plan import ClipTask, Failure, Listing, PrepareSettings
from ..registry import register_dataset
from .cached import AudioLayout, Frames, LoaderOptions, PreparedDataset, build_splits
from .layout import audio_visual, read_text_lines, require_dir

# The GRID grammar: every sentence has one word of each position, in this order.
WORDS = {
    "command": ["bin", "lay", "place", "set"],
    "colour": ["blue", "green", "red", "white"],
    "preposition": ["at", "by", "in", "with"],
    "letter": [c for c in string.ascii_lowercase if c != "w"],
    "digit": ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
    "adverb": ["again", "now", "please", "soon"],
}
SILENCE = {"sil", "sp"}
ALIGN_UNITS_PER_SECOND = 25000.0
SMALL_ENCODER = {"width": 16, "layers": [1, 1, 1]}
TASK_DEFAULTS = {"digit": {"fps": 25.0, "seconds": 1.0}, "sentence": {"fps": 5.0, "seconds": 3.0}}


class GridOptions(SplitOptions):
    task: Literal["digit", "sentence"] = option(
        "digit", "digit: the digit word cut out of each clip; sentence: whole clips"
    )
    speakers: str | None = option(None, "comma-separated speakers to prepare, e.g. s1,s2 (default: every s<k> folder)")


@register_dataset
class Grid(PreparedDataset):
    """GRID talking faces: s<k>/*.mpg|mp4 + alignments (word-level digits or sentence labels)"""

    examples = (
        "  avbalance prepare grid --root ~/data/grid --out ~/cache/grid-digit --task digit\n"
        "  avbalance prepare grid --root ~/data/grid --out ~/cache/grid-sentence --task sentence --speakers s1,s2\n"
    )
    Options = GridOptions
    audio = "fbank"
    prepare_defaults = {"fps": None, "size": 96}

    @staticmethod
    def list_clips(root: Path, options: GridOptions) -> Listing:
        alignments = require_dir(root / "alignments", "GRID word alignments, alignments/s<k>/<id>.align")
        failures: list[Failure] = []
        clips = []
        for speaker in _speakers(root, options.speakers):
            videos = {}
            for path in sorted((root / speaker).iterdir()):
                if path.suffix.lower() in (".mpg", ".mp4"):
                    videos.setdefault(path.stem, path)
            for stem, video in videos.items():
                clip = _clip(speaker, stem, video, alignments / speaker / f"{stem}.align", options.task, failures)
                if clip is not None:
                    clips.append(clip)
        label_sets = dict(WORDS) if options.task == "sentence" else {"digit": WORDS["digit"]}
        listing = Listing(clips, WORDS["digit"], failures, label_sets=label_sets, info={"task": options.task})
        listing.split_rule = split_rule(options)
        return listing

    @classmethod
    def settings(cls, options: GridOptions) -> PrepareSettings:
        """The frame rate and audio length suit the task unless ``--fps`` / ``--seconds`` say otherwise."""
        defaults = TASK_DEFAULTS[options.task]
        seconds = options.seconds or defaults["seconds"]
        recipe = make_recipe(options.audio, sample_rate=options.sample_rate, seconds=seconds, mel_bins=options.mel_bins)
        return settings_from_options(options, has_audio=True, fps=options.fps or defaults["fps"], audio=recipe)

    @classmethod
    def load(
        cls,
        root: str | None = None,
        task: str = "digit",
        frames: Frames = 3,
        image_size: int | None = None,
        augment: bool = True,
        audio_layout: AudioLayout = "image",
    ):
        """GRID from a cache made by ``avbalance prepare grid``.

        Options: ``task`` -- the label: ``digit`` (on a ``--task digit`` cache: the word-level
        spoken-digit task; on a sentence cache: the sentence's digit) or another sentence word:
        ``command``, ``colour``, ``preposition``, ``letter``, ``adverb`` (sentence caches only);
        ``frames`` per clip (default 3; ``all``: every stored frame, ``(3, T, H, W)`` with a
        variable ``T``), ``image_size`` (default: stored size, 96), ``augment`` (train split),
        ``audio_layout`` (``sequence``: the fbank as a ``(T, 128)`` sequence). Audio:
        ``(1, 128, 98)`` fbank for the 1 s word task, ``(1, 128, 298)`` for 3 s sentences.
        Validation: the generated val split.
        """
        if task not in WORDS:
            raise ConfigError(f"option task must be one of {', '.join(WORDS)}, got {task!r}")
        cache = cls.open(root)
        prepared = cache.info.get("task", "sentence")
        if prepared == "digit" and task != "digit":
            raise ConfigError(
                f"{cache.root} holds the word-level digit task; prepare with --task sentence to train on {task!r}"
            )
        options = LoaderOptions(frames=frames, image_size=image_size, augment=augment, audio_layout=audio_layout)
        return build_splits(
            cache,
            options,
            label_column="label" if task == "digit" else task,
            class_names=WORDS[task],
            recommended_encoder=SMALL_ENCODER if prepared == "digit" else {},
        )


def _speakers(root: Path, wanted: str | None) -> list[str]:
    """The s<k> speaker folders, or the ``wanted`` ones (comma-separated; each must exist)."""
    speakers = sorted(p.name for p in root.iterdir() if p.is_dir() and re.fullmatch(r"s\d+", p.name))
    if not wanted:
        return speakers
    for speaker in wanted.split(","):
        require_dir(root / speaker, f"videos of speaker {speaker}")
    return [s for s in speakers if s in wanted.split(",")]


def read_alignment(path: Path) -> list[tuple[float, float, str]]:
    """(start s, end s, word) of the spoken words, silences left out."""
    words = []
    for number, line in read_text_lines(path):
        parts = line.split()
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
            raise ValueError(f"line {number} is not 'start end word': {line!r}")
        if parts[2] not in SILENCE:
            words.append((int(parts[0]) / ALIGN_UNITS_PER_SECOND, int(parts[1]) / ALIGN_UNITS_PER_SECOND, parts[2]))
    return words


def _clip(speaker: str, stem: str, video: Path, align: Path, task: str, failures: list[Failure]) -> ClipTask | None:
    clip_id = f"{speaker}/{stem}"
    if not align.is_file():
        failures.append(Failure(clip_id, f"missing alignment file {align}", str(align)))
        return None
    try:
        words = read_alignment(align)
    except (ValueError, OSError) as error:
        failures.append(Failure(clip_id, f"bad alignment file: {error}", str(align)))
        return None
    if len(words) != len(WORDS):
        failures.append(Failure(clip_id, f"alignment has {len(words)} words, a GRID sentence has 6", str(align)))
        return None
    columns = {}
    for (_, _, word), (position, vocabulary) in zip(words, WORDS.items()):
        if word not in vocabulary:
            failures.append(Failure(clip_id, f"unknown label {word!r} for the {position} word", str(align)))
            return None
        columns[position] = word
    start, end, digit = words[4]
    cut = task == "digit"
    return ClipTask(
        id=clip_id,
        label=digit,
        split="",
        sources=audio_visual(video),
        start=start if cut else None,
        end=end if cut else None,
        columns=columns,
    )
