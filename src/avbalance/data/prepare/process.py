"""Turn one clip into the arrays stored in the cache.

Stored per modality (one row = one item along the first axis of the modality's array):

* audio features: one ``(F, T)`` float16 row per clip; with ``waveform`` also ``<name>_wave``:
  the resampled mono waveform as int16 samples (a variable number of rows per clip);
* frames (video, image folder, in-memory image): ``(size, size, C)`` uint8 rows, one per frame;
* flow: ``(size, size, 2)`` uint8 rows (u, v), one per frame;
* arrays: the ``.npy`` content as one float32 row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .audio import NoAudioTrack, check_audio, read_audio
from .plan import (
    ARRAY,
    AUDIO,
    FLOW,
    FOLDER,
    IMAGE,
    VIDEO,
    ClipError,
    ClipTask,
    PrepareSettings,
    Source,
)
from .video import (
    array_to_frame,
    read_flow_frames,
    read_folder_frames,
    read_video_frames,
)

# Which kind of stored array each source kind produces (saved in the cache metadata).
STORED_KIND = {AUDIO: "feature", VIDEO: "frames", FOLDER: "frames", IMAGE: "frames", FLOW: "flow", ARRAY: "array"}
WAVE_SUFFIX = "_wave"


@dataclass
class ClipResult:
    arrays: dict[str, np.ndarray]
    kinds: dict[str, str]
    columns: dict[str, str] = field(default_factory=dict)


def prepare_clip(task: ClipTask, settings: PrepareSettings) -> ClipResult:
    """Decode and transform every modality of ``task``. Raises :class:`ClipError` on bad input."""
    result = ClipResult(arrays={}, kinds={})
    video_times = None  # flow is read at the times of the clip's video frames
    for name, source in sorted(task.sources.items(), key=lambda item: item[1].kind != VIDEO):
        if source.kind == AUDIO:
            _add_audio(result, name, source, task, settings)
        elif source.kind == VIDEO:
            result.arrays[name], video_times = read_video_frames(
                source.path, settings.fps, settings.size, task.start, task.end, settings.crop
            )
        elif source.kind == FOLDER:
            result.arrays[name] = read_folder_frames(
                source.path, settings.fps, settings.folder_fps, settings.size, task.start, task.end, crop=settings.crop
            )
        elif source.kind == FLOW:
            u_folder, v_folder = source.path
            result.arrays[name] = read_flow_frames(
                u_folder, v_folder, settings.fps, settings.folder_fps, settings.size, task.start, task.end, video_times
            )
        elif source.kind == IMAGE:
            result.arrays[name] = array_to_frame(source.data, settings.size)
        elif source.kind == ARRAY:
            result.arrays[name] = _read_npy(source)
        else:
            raise ValueError(f"unknown source kind {source.kind!r}")
        result.kinds.setdefault(name, STORED_KIND[source.kind])
        _check_finite(name, result.arrays[name], source)
    return result


def _check_finite(name: str, array: np.ndarray, source: Source) -> None:
    """A NaN or infinite value in a prepared feature would poison training: report the clip."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ClipError(f"{name} has NaN or infinite values after preparation ({source.path})", source.path)


def _add_audio(result: ClipResult, name: str, source: Source, task: ClipTask, settings: PrepareSettings) -> None:
    recipe = settings.audio
    try:
        wave = read_audio(source.path, recipe.sample_rate, task.start, task.end)
        check_audio(wave, recipe.sample_rate, settings.min_seconds, source.path)
        has_audio = True
    except ClipError as error:
        # Some datasets (SSW60) have videos without a usable audio track: they get silence.
        if not settings.allow_missing_audio or not _is_missing_audio(error):
            raise
        wave = np.zeros(recipe.samples, dtype=np.float32)
        has_audio = False
    result.arrays[name] = recipe.features(wave)[None].astype(np.float16)
    if settings.allow_missing_audio:
        result.columns[f"{name}_present"] = "1" if has_audio else "0"
    if settings.waveform:
        pcm = np.round(np.clip(wave, -1.0, 1.0) * 32767).astype(np.int16)
        result.arrays[name + WAVE_SUFFIX] = pcm
        result.kinds[name + WAVE_SUFFIX] = "wave"


def _is_missing_audio(error: ClipError) -> bool:
    message = str(error)
    return isinstance(error, NoAudioTrack) or message.startswith(("silent audio", "audio too short"))


def _read_npy(source: Source) -> np.ndarray:
    try:
        array = np.load(source.path, allow_pickle=False)
    except FileNotFoundError:
        raise ClipError(f"missing file {source.path}", source.path) from None
    except (ValueError, OSError) as error:
        raise ClipError(f"cannot read array {source.path}: {error}", source.path) from None
    if array.dtype.kind not in "biuf":
        raise ClipError(f"array {source.path} is not numeric (dtype {array.dtype})", source.path)
    return array.astype(np.float32)[None]
