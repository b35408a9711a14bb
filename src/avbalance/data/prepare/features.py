"""Audio feature recipes.

* ``ogm``: the official OGM-GE recipe -- 22.05 kHz, tiled to 3 s, clipped to [-1, 1], STFT with
  n_fft 512 and hop 353, ``log(|STFT| + 1e-7)``: 257 x 188 for 3 s.
* ``vggsound``: the VGGSound recipe of the same code base -- 16 kHz, n_fft 256, hop 128, log
  magnitude: 129 x 1251 for a 10 s clip (the loader takes a 5 s window, 626 frames).
* ``fbank``: a Kaldi-style log-mel filterbank -- 25 ms frames every 10 ms without padding at the
  edges, per-frame DC removal, pre-emphasis 0.97, Hann window, 512-point power spectrum, HTK mel
  scale from 20 Hz, natural log floored at float32 epsilon: ``mel_bins`` x (1 + (N - 400) // 160)
  at 16 kHz. Filters too narrow to hold an FFT bin give the floor value, as in torchaudio's
  ``compliance.kaldi.fbank``.

Every recipe first tiles or cuts the waveform to ``seconds`` so all clips share one feature shape.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import asdict, dataclass

import librosa
import numpy as np
import scipy.signal

RECIPE_DEFAULTS = {
    "ogm": dict(sample_rate=22050, seconds=3.0, n_fft=512, hop=353),
    "vggsound": dict(sample_rate=16000, seconds=10.0, n_fft=256, hop=128),
    "fbank": dict(sample_rate=16000, seconds=3.0, mel_bins=128),
}
FBANK_WINDOW_SECONDS = 0.025
FBANK_SHIFT_SECONDS = 0.010
FBANK_LOW_HZ = 20.0
PREEMPHASIS = 0.97
LOG_FLOOR = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class AudioRecipe:
    name: str
    sample_rate: int
    seconds: float
    n_fft: int = 512
    hop: int = 353
    mel_bins: int = 128

    @property
    def samples(self) -> int:
        return int(round(self.sample_rate * self.seconds))

    @property
    def hop_seconds(self) -> float:
        """Time between two feature columns."""
        if self.name == "fbank":
            return FBANK_SHIFT_SECONDS
        return self.hop / self.sample_rate

    def features(self, wave: np.ndarray) -> np.ndarray:
        """``(F, T)`` float32 features of a mono waveform at ``sample_rate``."""
        wave = fit_length(wave, self.samples)
        if self.name == "fbank":
            return kaldi_fbank(wave, self.sample_rate, self.mel_bins)
        return log_stft(wave, self.n_fft, self.hop)

    def shape(self) -> tuple[int, int]:
        return self.features(np.zeros(self.samples, dtype=np.float32)).shape

    def to_dict(self) -> dict:
        return asdict(self)


def make_recipe(
    name: str, sample_rate: int | None = None, seconds: float | None = None, mel_bins: int | None = None
) -> AudioRecipe:
    values = {"name": name, **RECIPE_DEFAULTS[name]}
    if sample_rate:
        values["sample_rate"] = sample_rate
    if seconds:
        values["seconds"] = seconds
    if mel_bins:
        values["mel_bins"] = mel_bins
    return AudioRecipe(**values)


def fit_length(wave: np.ndarray, samples: int) -> np.ndarray:
    """Tile a short waveform (as the official recipes do) and cut it to exactly ``samples``."""
    if len(wave) == 0:
        return np.zeros(samples, dtype=np.float32)
    repeats = -(-samples // len(wave))
    return np.tile(wave, repeats)[:samples].astype(np.float32, copy=False)


def log_stft(wave: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    wave = np.clip(wave, -1.0, 1.0)
    spectrogram = librosa.stft(wave, n_fft=n_fft, hop_length=hop)
    return np.log(np.abs(spectrogram) + 1e-7).astype(np.float32)


def kaldi_fbank(wave: np.ndarray, sample_rate: int, mel_bins: int) -> np.ndarray:
    window = int(round(FBANK_WINDOW_SECONDS * sample_rate))
    shift = int(round(FBANK_SHIFT_SECONDS * sample_rate))
    if len(wave) < window:
        wave = np.pad(wave, (0, window - len(wave)))
    frames = librosa.util.frame(wave.astype(np.float64), frame_length=window, hop_length=shift, axis=0).copy()
    frames -= frames.mean(axis=1, keepdims=True)
    frames[:, 1:] -= PREEMPHASIS * frames[:, :-1].copy()
    frames[:, 0] *= 1.0 - PREEMPHASIS
    n_fft = 1 << (window - 1).bit_length()  # next power of two, as Kaldi does
    power = np.abs(np.fft.rfft(frames * _hann(window), n=n_fft, axis=1)) ** 2
    energies = power @ _mel_filters(sample_rate, n_fft, mel_bins).T
    return np.log(np.maximum(energies, LOG_FLOOR)).T.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _hann(length: int) -> np.ndarray:
    # Kaldi's "hanning" window is the symmetric Hann window.
    return scipy.signal.get_window("hann", length, fftbins=False)


@functools.lru_cache(maxsize=8)
def _mel_filters(sample_rate: int, n_fft: int, mel_bins: int) -> np.ndarray:
    with warnings.catch_warnings():
        # Many bins at a low rate leave some filters without an FFT bin: they give the log floor.
        warnings.simplefilter("ignore", UserWarning)
        return librosa.filters.mel(
            sr=sample_rate, n_fft=n_fft, n_mels=mel_bins, fmin=FBANK_LOW_HZ, fmax=sample_rate / 2, htk=True, norm=None
        )
