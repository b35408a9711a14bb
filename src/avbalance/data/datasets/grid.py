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

import argparse
import re
import string
from pathlib import Path

from ...errors import ConfigError
from ..prepare.features import make_recipe
from ..prepare.plan import (
    AUDIO,
    VIDEO,
    ClipTask,
    Failure,
    Listing,
    Preparer,
    Source,
    add_split_arguments,
    register_preparer,
    settings_from_args,
    split_rule_from_args,
)
from ..registry import register_dataset
from .cached import LoaderOptions, build_splits, open_cache
from .layout import read_text_lines, require_dir

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


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task",
        choices=["digit", "sentence"],
        default="digit",
        help="digit: the digit word cut out of each clip; sentence: whole clips (default: %(default)s)",
    )
    parser.add_argument(
        "--speakers", help="comma-separated speakers to prepare, e.g. s1,s2 (default: every s<k> folder)"
    )
    add_split_arguments(parser, test=0.2, val=0.1)


def _settings(args: argparse.Namespace, preparer: Preparer):
    defaults = TASK_DEFAULTS[args.task]
    return settings_from_args(args, preparer, fps=args.fps or defaults["fps"], audio=_recipe(args, defaults["seconds"]))


def _recipe(args: argparse.Namespace, seconds: float):
    return make_recipe(
        args.audio, sample_rate=args.sample_rate, seconds=args.seconds or seconds, mel_bins=args.mel_bins
    )


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


def list_clips(root: Path, args: argparse.Namespace) -> Listing:
    alignments = require_dir(root / "alignments", "GRID word alignments, alignments/s<k>/<id>.align")
    speakers = sorted(p.name for p in root.iterdir() if p.is_dir() and re.fullmatch(r"s\d+", p.name))
    if args.speakers:
        wanted = args.speakers.split(",")
        for speaker in wanted:
            require_dir(root / speaker, f"videos of speaker {speaker}")
        speakers = [s for s in speakers if s in wanted]
    failures: list[Failure] = []
    clips = []
    for speaker in speakers:
        videos = {}
        for path in sorted((root / speaker).iterdir()):
            if path.suffix.lower() in (".mpg", ".mp4"):
                videos.setdefault(path.stem, path)
        for stem, video in videos.items():
            clip = _clip(speaker, stem, video, alignments / speaker / f"{stem}.align", args.task, failures)
            if clip is not None:
                clips.append(clip)
    label_sets = dict(WORDS) if args.task == "sentence" else {"digit": WORDS["digit"]}
    listing = Listing(
        clips=clips, class_names=WORDS["digit"], failures=failures, label_sets=label_sets, info={"task": args.task}
    )
    listing.split_rule = split_rule_from_args(args)
    return listing


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
        sources={"audio": Source(AUDIO, str(video)), "visual": Source(VIDEO, str(video))},
        start=start if cut else None,
        end=end if cut else None,
        columns=columns,
    )


register_preparer(
    Preparer(
        name="grid",
        summary="GRID talking faces: s<k>/*.mpg|mp4 + alignments (word-level digits or sentence labels)",
        add_arguments=_add_arguments,
        list_clips=list_clips,
        audio="fbank",
        defaults={"fps": None, "size": 96, "seconds": None},
        make_settings=_settings,
        examples=(
            "  avbalance prepare grid --root ~/data/grid --out ~/cache/grid-digit --task digit\n"
            "  avbalance prepare grid --root ~/data/grid --out ~/cache/grid-sentence --task sentence --speakers s1,s2\n"
        ),
    )
)


@register_dataset("grid")
def build_grid(
    root: str | None = None, task: str = "digit", frames: int = 3, image_size: int | None = None, augment: bool = True
):
    """GRID from a cache made by ``avbalance prepare grid``.

    Options: ``task`` -- the label: ``digit`` (on a ``--task digit`` cache: the word-level
    spoken-digit task; on a sentence cache: the sentence's digit) or another sentence word:
    ``command``, ``colour``, ``preposition``, ``letter``, ``adverb`` (sentence caches only);
    ``frames`` per clip (default 3), ``image_size`` (default: stored size, 96), ``augment``
    (train split). Audio: ``(1, 128, 98)`` fbank for the 1 s word task, ``(1, 128, 298)`` for 3 s
    sentences. Validation: the generated val split.
    """
    if task not in WORDS:
        raise ConfigError(f"option task must be one of {', '.join(WORDS)}, got {task!r}")
    cache = open_cache(root, "grid")
    prepared = cache.info.get("task", "sentence")
    if prepared == "digit" and task != "digit":
        raise ConfigError(
            f"{cache.root} holds the word-level digit task; prepare with --task sentence to train on {task!r}"
        )
    options = LoaderOptions(frames=frames, image_size=image_size, augment=augment)
    return build_splits(
        cache,
        options,
        label_column="label" if task == "digit" else task,
        class_names=WORDS[task],
        recommended_encoder=SMALL_ENCODER if prepared == "digit" else {},
    )
