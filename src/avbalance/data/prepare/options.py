"""The options of ``avbalance prepare`` as typed models.

:class:`PrepareOptions` holds the options every dataset shares (where the data is, workers, frames,
audio recipe); a dataset's own options model subclasses it (or :class:`SplitOptions`, which adds
the split fractions) and adds its own fields. The command line is generated from these models:
each field becomes a ``--kebab-case`` flag with the field's type, default, description and, for
a ``Literal`` type, its choices. ``option(...)`` adds what a flag needs beyond that: the help
group, the text shown when the default is None, a metavar.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BeforeValidator, Field

from ...errors import ConfigError
from .features import make_recipe
from .plan import PrepareSettings, SplitRule

FRAMES_AND_AUDIO = "frames and audio"
GENERATED_SPLIT = "generated split"


def option(
    default: Any = ...,
    description: str = "",
    *,
    group: str | None = None,
    needs: str | None = None,
    unset: str | None = None,
    metavar: str | None = None,
    **constraints: Any,
) -> Any:
    """A model field with what its command-line flag needs: ``group`` (help section), ``needs``
    (``"video"`` or ``"audio"``: shown only for datasets with that modality), ``unset`` (help text
    of a None default), ``metavar``; ``constraints`` are pydantic's (``ge=1``, ...). A callable
    ``default`` is called for each model (the number of worker processes depends on the machine)."""
    flag = {"group": group, "needs": needs, "unset": unset, "metavar": metavar}
    extra = {key: value for key, value in flag.items() if value is not None}
    if callable(default):
        return Field(default_factory=default, description=description, json_schema_extra=extra, **constraints)
    return Field(default, description=description, json_schema_extra=extra, **constraints)


def flag_hints(field: pydantic.fields.FieldInfo) -> dict[str, str]:
    """What :func:`option` recorded for the flag of ``field`` (empty for a plain ``Field``)."""
    extra = field.json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


def parse_crop(text: str | tuple | list) -> tuple[int, int, int, int]:
    """``X,Y,W,H`` -> four integers; width and height positive."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        x, y, width, height = (int(p) for p in parts)
    except (ValueError, TypeError):
        raise ValueError(f"expected X,Y,W,H (four integers), got {text!r}") from None
    if x < 0 or y < 0 or width < 1 or height < 1:
        raise ValueError(f"X and Y must be >= 0 and W, H >= 1, got {text!r}")
    return x, y, width, height


def default_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


Crop = Annotated[tuple[int, int, int, int], BeforeValidator(parse_crop)]
AudioRecipeName = Literal["ogm", "vggsound", "fbank"]
AUDIO_HELP = (
    "audio features: ogm = log-STFT n_fft 512 hop 353 at 22.05 kHz; vggsound = log-STFT n_fft 256 hop 128 "
    "at 16 kHz; fbank = Kaldi-style log-mel filterbank, 25 ms window, 10 ms shift"
)


class PrepareOptions(pydantic.BaseModel):
    """The options of every dataset. The frame options apply to datasets with video, the audio
    options to datasets with audio; a dataset sets its own defaults for them."""

    model_config = pydantic.ConfigDict(extra="forbid")

    root: Path = option(description="the raw dataset folder (layout: docs/datasets.md)")
    out: Path = option(description="the cache folder to create, or to resume")
    workers: int = option(default_workers, "parallel worker processes", ge=1)
    strict: bool = option(False, "exit with status 1 if any clip fails")
    limit: int | None = option(None, "prepare a seeded random subset of N clips", metavar="N", ge=1)
    seed: int = option(0, "seed of generated splits, --limit and pairings")

    fps: float | None = option(
        1.0, "frames kept per second of video", group=FRAMES_AND_AUDIO, needs="video", unset="set by the dataset", gt=0
    )
    size: int = option(224, "stored frames are SIZE x SIZE pixels", group=FRAMES_AND_AUDIO, needs="video", ge=1)
    crop: Crop | None = option(
        None,
        "cut this box (source pixels: left, top, width, height) out of every frame before resizing, "
        "e.g. the mouth of a talking face filmed with a fixed camera",
        group=FRAMES_AND_AUDIO,
        needs="video",
        unset="the whole frame",
        metavar="X,Y,W,H",
    )
    folder_fps: float = option(25.0, "frame rate of image folders", group=FRAMES_AND_AUDIO, needs="video", gt=0)
    audio: AudioRecipeName = option("ogm", AUDIO_HELP, group=FRAMES_AND_AUDIO, needs="audio")
    seconds: float | None = option(
        None, "audio is tiled or cut to this length", group=FRAMES_AND_AUDIO, needs="audio", unset="the recipe", gt=0
    )
    sample_rate: int | None = option(
        None, "resample audio to this rate", group=FRAMES_AND_AUDIO, needs="audio", unset="the recipe", ge=1
    )
    mel_bins: int | None = option(
        None, "filterbank bins for --audio fbank", group=FRAMES_AND_AUDIO, needs="audio", unset="128", ge=1
    )
    waveform: bool = option(
        False, "also store the resampled waveform so features can be recomputed", group=FRAMES_AND_AUDIO, needs="audio"
    )
    min_seconds: float = option(
        0.1, "audio shorter than this is a failure", group=FRAMES_AND_AUDIO, needs="audio", ge=0
    )


class SplitOptions(PrepareOptions):
    """The options of a dataset without an official split: the shares of a seeded split."""

    test_fraction: float = option(0.2, "share of groups in the test split", group=GENERATED_SPLIT, ge=0, lt=1)
    val_fraction: float = option(0.1, "share of groups in the validation split", group=GENERATED_SPLIT, ge=0, lt=1)


def split_rule(options: SplitOptions, **grouping: Any) -> SplitRule:
    """The seeded split of ``options`` (``grouping``: ``group`` and ``stratify`` of :class:`SplitRule`)."""
    return SplitRule(
        test_fraction=options.test_fraction, val_fraction=options.val_fraction, seed=options.seed, **grouping
    )


def own_fields(model: type[PrepareOptions]) -> list[str]:
    """The fields a dataset's options model adds to the shared ones, in declaration order."""
    return [name for name in model.model_fields if name not in PrepareOptions.model_fields]


def settings_from_options(options: PrepareOptions, has_audio: bool, **overrides: Any) -> PrepareSettings:
    """How clips become arrays, from the options (``has_audio``: the dataset has audio)."""
    recipe = None
    if has_audio:
        recipe = make_recipe(
            options.audio, sample_rate=options.sample_rate, seconds=options.seconds, mel_bins=options.mel_bins
        )
    values = dict(
        fps=options.fps,
        size=options.size,
        folder_fps=options.folder_fps,
        crop=options.crop,
        audio=recipe,
        waveform=options.waveform,
        min_seconds=options.min_seconds,
    )
    values.update(overrides)
    return PrepareSettings(**values)


def validation_message(error: pydantic.ValidationError) -> str:
    """The first problem of ``error`` in one line, naming the flag: ``--limit: Input should be ...``."""
    problem = error.errors()[0]
    name = str(problem["loc"][0]) if problem["loc"] else ""
    message = problem["msg"].removeprefix("Value error, ")
    if problem["type"] == "extra_forbidden":
        return f"no option --{name.replace('_', '-')}"
    if problem["type"] == "missing":
        return f"--{name.replace('_', '-')} is required"
    return f"--{name.replace('_', '-')}: {message} (got {problem.get('input')!r})"


def make_options(model: type[PrepareOptions], defaults: dict[str, Any], values: dict[str, Any]) -> PrepareOptions:
    """``model`` from ``values`` over the dataset's ``defaults``; a bad value is a one-line ConfigError."""
    try:
        return model(**{**defaults, **values})
    except pydantic.ValidationError as error:
        raise ConfigError(validation_message(error)) from None
