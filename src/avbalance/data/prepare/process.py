"""Turn one clip into the arrays stored in the cache.

Stored per modality (one row = one item along the first axis of the modality's array):

* audio features: one ``(F, T)`` float16 row per clip; with ``waveform`` also ``<name>_wave``:
  the resampled mono waveform as int16 samples (a variable number of rows per clip);
* frames (video, image folder, in-memory image): ``(size, size, C)`` uint8 rows, one per frame;
* flow: ``(size, size, 2)`` uint8 rows (u, v), one per frame;
* arrays: the ``.npy`` content as one float32 row;
* sequences: a ``(T, F)`` ``.npy`` as ``T`` float32 rows of ``(F,)``, one per time step;
* frame stacks: a ``(T, H, W)`` or ``(T, H, W, C)`` uint8 ``.npy`` as ``T`` frames ``(H, W, C)``
  (grey: ``C`` = 1), stored like the frames of a video but at their own size;
* text: the UTF-8 bytes of the text as uint8 rows, one per byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .audio import NoAudioTrack, audio_from_frames, check_audio, read_audio
from .plan import (
    ARRAY,
    AUDIO,
    FLOW,
    FOLDER,
    FRAME_STACK,
    IMAGE,
    SEQUENCE,
    TEXT,
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
    read_video_with_audio,
)

# Which kind of stored array each source kind produces (saved in the cache metadata).
STORED_KIND = {
    AUDIO: "feature",
    VIDEO: "frames",
    FOLDER: "frames",
    IMAGE: "frames",
    FLOW: "flow",
    ARRAY: "array",
    SEQUENCE: "sequence",
    FRAME_STACK: "frames",
    TEXT: "text",
}
FRAME_CHANNELS = (1, 3)  # grey or RGB: what the frame loader and the image encoders take
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
    tracks: dict[str, list | None] = {}  # audio frames decoded with a video, by file
    for name, source in sorted(task.sources.items(), key=lambda item: item[1].kind != VIDEO):
        if source.kind == AUDIO:
            _add_audio(result, name, source, task, settings, tracks)
        elif source.kind == VIDEO:
            result.arrays[name], video_times = _video_frames(source, task, settings, tracks)
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
            result.arrays[name] = _read_npy(source).astype(np.float32)[None]
        elif source.kind in READERS:
            result.arrays[name] = READERS[source.kind](source)
        else:
            raise ValueError(f"unknown source kind {source.kind!r}")
        result.kinds.setdefault(name, STORED_KIND[source.kind])
        _check_finite(name, result.arrays[name], source)
    return result


def _check_finite(name: str, array: np.ndarray, source: Source) -> None:
    """A NaN or infinite value in a prepared feature would poison training: report the clip."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ClipError(f"{name} has NaN or infinite values after preparation ({source.path})", source.path)


def _video_frames(source: Source, task: ClipTask, settings: PrepareSettings, tracks: dict) -> tuple:
    """A video's frames and their times; when an audio source reads the same file, its audio frames
    come from the same opening of the container, into ``tracks``."""
    arguments = (source.path, settings.fps, settings.size, task.start, task.end, settings.crop)
    if not any(other.kind == AUDIO and other.path == source.path for other in task.sources.values()):
        return read_video_frames(*arguments)
    frames, times, tracks[source.path] = read_video_with_audio(*arguments)
    return frames, times


def _add_audio(
    result: ClipResult, name: str, source: Source, task: ClipTask, settings: PrepareSettings, tracks: dict
) -> None:
    recipe = settings.audio
    try:
        if source.path in tracks:  # decoded with the video of the same file
            wave = audio_from_frames(tracks[source.path], source.path, recipe.sample_rate, task.start, task.end)
        else:
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
    return array


def _read_sequence(source: Source) -> np.ndarray:
    """A ``(T, F)`` array with at least one time step, as float32."""
    array = _read_npy(source)
    if array.ndim != 2:
        raise ClipError(f"sequence {source.path} has shape {array.shape}; a sequence is (T, F)", source.path)
    if len(array) == 0:
        raise ClipError(f"sequence {source.path} is empty (shape {array.shape}, T = 0)", source.path)
    return array.astype(np.float32)


def _read_frame_stack(source: Source) -> np.ndarray:
    """A ``(T, H, W)`` or ``(T, H, W, C)`` uint8 array with at least one frame, as ``(T, H, W, C)``."""
    array = _read_npy(source)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in FRAME_CHANNELS:
        raise ClipError(
            f"frame stack {source.path} has shape {array.shape}; frames are (T, H, W) or (T, H, W, C) with C 1 or 3",
            source.path,
        )
    if array.dtype != np.uint8:
        raise ClipError(
            f"frame stack {source.path} has dtype {array.dtype}; frames are uint8 images (0-255): "
            "save it with .astype(numpy.uint8), or give (T, F) features as a sequence",
            source.path,
        )
    if len(array) == 0:
        raise ClipError(f"frame stack {source.path} is empty (shape {array.shape[:-1]}, T = 0)", source.path)
    return np.ascontiguousarray(array)


def _read_text(source: Source) -> np.ndarray:
    """The UTF-8 bytes of the text (the listing's string, or the file's content)."""
    if source.text is not None:
        text = source.text
    else:
        try:
            text = Path(source.path).read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise ClipError(f"missing file {source.path}", source.path) from None
        except UnicodeDecodeError as error:
            problem = f"text {source.path} is not UTF-8 ({error.reason} at byte {error.start})"
            raise ClipError(problem, source.path) from None
        except OSError as error:
            raise ClipError(f"cannot read text {source.path}: {error.strerror}", source.path) from None
    if not text.strip():
        raise ClipError(f"empty text ({source.describe()})", source.path)
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


READERS = {SEQUENCE: _read_sequence, FRAME_STACK: _read_frame_stack, TEXT: _read_text}
