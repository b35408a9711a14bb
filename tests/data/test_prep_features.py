"""Audio decoding and the feature recipes: shapes, tiling, resampling, bad audio."""

from __future__ import annotations

import numpy as np
import pytest
from fixture_media import tone, write_corrupt, write_video, write_wav

from avbalance.data.prepare.audio import check_audio, read_audio
from avbalance.data.prepare.features import fit_length, make_recipe
from avbalance.data.prepare.plan import ClipError


def test_ogm_recipe_gives_257_by_188_for_3_s_at_22050():
    recipe = make_recipe("ogm")
    assert (recipe.sample_rate, recipe.seconds, recipe.n_fft, recipe.hop) == (22050, 3.0, 512, 353)
    features = recipe.features(tone(3.0, 22050, 440))
    assert features.shape == (257, 188)
    assert features.dtype == np.float32
    # log(|STFT| + 1e-7): the 440 Hz bin dominates every frame
    assert abs(int(np.argmax(features[:, 94])) - round(440 / (22050 / 512))) <= 1


def test_ogm_recipe_tiles_short_audio_to_3_s():
    recipe = make_recipe("ogm")
    assert recipe.features(tone(0.7, 22050)).shape == (257, 188)
    assert fit_length(np.array([1, 2, 3], dtype=np.float32), 7).tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert fit_length(np.arange(10, dtype=np.float32), 4).tolist() == [0, 1, 2, 3]


def test_vggsound_recipe_shapes():
    recipe = make_recipe("vggsound")
    assert (recipe.sample_rate, recipe.n_fft, recipe.hop) == (16000, 256, 128)
    assert recipe.features(tone(10.0, 16000)).shape == (129, 1251)
    assert make_recipe("vggsound", seconds=5.0).shape() == (129, 626)  # the 5 s training window


def test_fbank_recipe_has_128_bins_every_10_ms():
    recipe = make_recipe("fbank")
    assert recipe.hop_seconds == 0.010
    features = recipe.features(tone(3.0, 16000, 1000.0))
    assert features.shape == (128, 1 + (48000 - 400) // 160) == (128, 298)
    assert make_recipe("fbank", seconds=1.0).shape() == (128, 98)
    assert np.isfinite(features).all()
    # energy concentrates in the mel bins around 1 kHz
    mel = 1127 * np.log(1 + np.array([20.0, 1000.0, 8000.0]) / 700)
    expected_bin = (mel[1] - mel[0]) / (mel[2] - mel[0]) * 129 - 1
    assert abs(int(np.argmax(features.mean(axis=1))) - expected_bin) <= 2


def test_fbank_at_8_khz_with_40_bins():
    assert make_recipe("fbank", sample_rate=8000, seconds=1.0, mel_bins=40).shape() == (40, 98)


def test_read_audio_resamples_wav_and_mixes_to_mono(tmp_path):
    stereo = np.stack([tone(1.0, 44100, 500), tone(1.0, 44100, 500)], axis=1)
    path = write_wav(tmp_path / "a.wav", stereo, 44100)
    wave = read_audio(path, 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * 16000 / len(wave) - 500) < 5


@pytest.mark.parametrize("suffix", [".mp4", ".flv", ".mpg", ".avi"])
def test_read_audio_track_of_a_video(tmp_path, suffix):
    rate = 22050 if suffix == ".flv" else 16000
    path = write_video(tmp_path / f"v{suffix}", seconds=2.0, fps=25, audio=tone(2.0, rate, 700), audio_rate=rate)
    wave = read_audio(path, 16000)
    assert abs(len(wave) / 16000 - 2.0) < 0.15  # encoders add a little padding
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * 16000 / len(wave) - 700) < 10


def test_read_audio_segment(tmp_path):
    path = write_wav(tmp_path / "a.wav", tone(3.0, 16000), 16000)
    assert len(read_audio(path, 16000, start=0.5, end=1.25)) == 12000


def test_bad_audio_is_a_clip_error(tmp_path):
    with pytest.raises(ClipError, match="missing file"):
        read_audio(tmp_path / "none.wav", 16000)
    with pytest.raises(ClipError, match="cannot decode"):
        read_audio(write_corrupt(tmp_path / "bad.wav"), 16000)
    with pytest.raises(ClipError, match="cannot decode"):
        read_audio(write_corrupt(tmp_path / "bad.mp4"), 16000)
    with pytest.raises(ClipError, match="no audio track"):
        read_audio(write_video(tmp_path / "mute.mp4", seconds=1.0), 16000)
    with pytest.raises(ClipError, match="silent"):
        check_audio(np.zeros(16000, np.float32), 16000, 0.1, "x.wav")
    with pytest.raises(ClipError, match="too short"):
        check_audio(tone(0.05, 16000), 16000, 0.1, "x.wav")
    check_audio(tone(0.5, 16000), 16000, 0.1, "x.wav")
