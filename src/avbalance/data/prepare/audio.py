"""Audio decoding: soundfile for plain audio files, PyAV for everything else (the audio track of
any container FFmpeg reads), both mixed to mono float32 and resampled with soxr (via librosa)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import av
import librosa
import numpy as np
import soundfile

from .plan import ClipError

SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".aif", ".aiff"}
SILENCE_PEAK = 1e-4  # a peak below this (about -80 dBFS) counts as silence


class NoAudioTrack(ClipError):
    """The container has no audio stream."""


def read_audio(path: str | Path, sample_rate: int, start: float | None = None, end: float | None = None) -> np.ndarray:
    """Mono float32 samples of ``path`` at ``sample_rate``, optionally only [start, end) seconds."""
    path = Path(path)
    if not path.is_file():
        raise ClipError(f"missing file {path}", path)
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        wave, rate = _read_with_soundfile(path)
    else:
        wave, rate = _read_with_pyav(path)
    return cut_and_resample(wave, rate, sample_rate, start, end)


def cut_and_resample(
    wave: np.ndarray, rate: int, sample_rate: int, start: float | None = None, end: float | None = None
) -> np.ndarray:
    """Decoded mono samples at ``rate``: [start, end) seconds of them, resampled to ``sample_rate``."""
    if start is not None or end is not None:
        first = int(round((start or 0.0) * rate))
        last = len(wave) if end is None else int(round(end * rate))
        wave = wave[first:last]
    if rate != sample_rate and len(wave):
        wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq")
    return np.ascontiguousarray(wave, dtype=np.float32)


def check_audio(wave: np.ndarray, sample_rate: int, min_seconds: float, path: str | Path) -> None:
    seconds = len(wave) / sample_rate
    if seconds < min_seconds:
        raise ClipError(f"audio too short: {seconds:.3f} s < {min_seconds} s in {path}", path)
    if not np.isfinite(wave).all():
        raise ClipError(f"audio has NaN or infinite samples in {path}", path)
    if np.abs(wave).max() < SILENCE_PEAK:
        raise ClipError(f"silent audio in {path}", path)


def _read_with_soundfile(path: Path) -> tuple[np.ndarray, int]:
    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as error:
        raise ClipError(f"cannot decode {path}: {_one_line(error)}", path) from None
    return data.mean(axis=1), rate


def _read_with_pyav(path: Path) -> tuple[np.ndarray, int]:
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise NoAudioTrack(f"no audio track in {path}", path)
            return mono_samples(container.decode(container.streams.audio[0]), path)
    except av.FFmpegError as error:
        raise ClipError(f"cannot decode {path}: {_one_line(error)}", path) from None


def audio_from_frames(
    frames: list[av.AudioFrame] | None,
    path: str | Path,
    sample_rate: int,
    start: float | None = None,
    end: float | None = None,
) -> np.ndarray:
    """What :func:`read_audio` gives for ``path``, from its audio frames decoded already (None: the
    container has no audio track), e.g. by :func:`avbalance.data.prepare.video.read_video_with_audio`."""
    if frames is None:
        raise NoAudioTrack(f"no audio track in {path}", path)
    wave, rate = mono_samples(frames, path)
    return cut_and_resample(wave, rate, sample_rate, start, end)


def mono_samples(frames: Iterable[av.AudioFrame], path: str | Path) -> tuple[np.ndarray, int]:
    """Decoded audio frames mixed to mono float32 samples, and their rate."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=None)
    chunks = []
    rate = None
    for frame in frames:
        for out in resampler.resample(frame):
            chunks.append(out.to_ndarray().reshape(-1))
            rate = out.sample_rate
    for out in resampler.resample(None):
        chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        raise ClipError(f"audio too short: no audio samples in {path}", path)
    return np.concatenate(chunks), rate


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
