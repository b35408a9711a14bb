"""A small VoxCeleb-layout set generated at test time, prepared, and a model trained on it (once per
test process).

Each utterance's audio is a quiet tone at its speaker's frequency buried under loud nuisance
(random-gain noise and a tone drawn from a pool shared by all speakers); its video is uniformly
coloured, the colour a mix of the speaker's colour and a random one. Utterances of one speaker are
thus alike only in the speaker cue, which training learns to pick out and random weights do not.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))  # the media writers of the data tests

from fixture_media import write_video, write_wav  # noqa: E402

from avbalance.cli import main  # noqa: E402

SPEAKERS = ["id10001", "id10002", "id10003", "id10004"]
RATE = 16000
SECONDS = 1.0
NUISANCE_TONES = [450.0, 950.0, 1450.0, 1950.0]
SPEAKER_COLOURS = [(1.0, 0.2, 0.2), (0.2, 1.0, 0.2), (0.2, 0.2, 1.0), (1.0, 1.0, 0.2)]
TRAIN = [
    "--epochs",
    "5",
    "--batch-size",
    "8",
    "--optimizer",
    "adam",
    "--lr",
    "0.005",
    "--set",
    "model.width=8",
    "--set",
    "model.layers=[1,1,1]",
    "--set",
    "trainer.progress_bar=false",
    "--set",
    "trainer.accelerator=cpu",
    "--set",
    "optim.scheduler=none",
]


def utterance_audio(speaker: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(RATE * SECONDS)) / RATE
    cue = 0.3 * np.sin(2 * np.pi * (700.0 + 500.0 * speaker) * t)
    nuisance = 0.1 * np.sin(2 * np.pi * rng.choice(NUISANCE_TONES) * t)
    noise = rng.uniform(0.02, 0.2) * rng.standard_normal(len(t))
    return (cue + nuisance + noise).astype(np.float32)


def utterance_colour(speaker: int, rng: np.random.Generator) -> tuple[float, float, float]:
    mixed = 0.3 * np.array(SPEAKER_COLOURS[speaker]) + 0.7 * rng.uniform(0.1, 1.0, size=3)
    return tuple(float(c) for c in mixed)


def make_speakers(root: Path, videos: list[str], utterances: int, seed: int) -> Path:
    """``mp4/<speaker>/<video>/<utt>.mp4`` for every speaker, video and utterance number."""
    rng = np.random.default_rng(seed)
    for index, speaker in enumerate(SPEAKERS):
        for video in videos:
            for utt in range(1, utterances + 1):
                write_video(
                    root / "mp4" / speaker / video / f"{utt:05d}.mp4",
                    seconds=SECONDS,
                    fps=4,
                    size=(32, 32),
                    audio=utterance_audio(index, rng),
                    colour=utterance_colour(index, rng),
                )
    return root


def prepare(raw: Path, cache: Path, *options: str) -> Path:
    assert (
        main(
            [
                "prepare",
                "voxceleb",
                "--root",
                str(raw),
                "--out",
                str(cache),
                "--workers",
                "1",
                "--fps",
                "4",
                "--size",
                "16",
                "--seconds",
                str(SECONDS),
                "--mel-bins",
                "40",
                *options,
            ]
        )
        == 0
    )
    return cache


@dataclass
class VoxSetup:
    train_cache: Path
    eval_cache: Path
    trained: Path  # run folder
    untrained: Path  # run folder of a model that did not learn (learning rate ~0)


@pytest.fixture(scope="session")
def vox(tmp_path_factory) -> VoxSetup:
    root = tmp_path_factory.mktemp("vox")
    # Identities are trained on some videos and verified on utterances of other videos, prepared as an
    # evaluation set (every utterance in the test split).
    train_cache = prepare(
        make_speakers(root / "raw_train", ["aaaa", "bbbb", "cccc"], 4, seed=0),
        root / "train",
        "--test-fraction",
        "0.34",
    )
    eval_cache = prepare(make_speakers(root / "raw_eval", ["xxxx", "yyyy"], 3, seed=1), root / "eval", "--eval-set")
    common = ["--dataset", "voxceleb", "--data", str(train_cache), "--method", "mmcosine", "--fusion", "cosine"]
    assert main(["train", *common, *TRAIN, "--out", str(root / "trained")]) == 0
    assert main(["train", *common, *TRAIN, "--lr", "1e-12", "--epochs", "1", "--out", str(root / "untrained")]) == 0
    return VoxSetup(train_cache, eval_cache, root / "trained", root / "untrained")


def make_audio_manifest(root: Path, column: str, seed: int) -> Path:
    """A manifest of wav-only utterances of every speaker, the audio in CSV column ``column``."""
    rng = np.random.default_rng(seed)
    lines = [f"id,label,split,{column}"]
    for index, speaker in enumerate(SPEAKERS):
        for utt in range(1, 4):
            path = write_wav(root / "wav" / speaker / f"{utt:05d}.wav", utterance_audio(index, rng), RATE)
            lines.append(f"{speaker}/zzzz/{utt:05d},{speaker},test,{path.relative_to(root)}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def prepare_audio_manifest(raw: Path, cache: Path) -> Path:
    assert (
        main(
            [
                "prepare",
                "manifest",
                "--root",
                str(raw),
                "--out",
                str(cache),
                "--workers",
                "1",
                "--audio",
                "fbank",
                "--sample-rate",
                str(RATE),
                "--seconds",
                str(SECONDS),
                "--mel-bins",
                "40",
            ]
        )
        == 0
    )
    return cache


@pytest.fixture(scope="session")
def audio_only_cache(tmp_path_factory) -> Path:
    """The speakers' audio alone, as modality ``audio``."""
    root = tmp_path_factory.mktemp("audio_only")
    return prepare_audio_manifest(make_audio_manifest(root / "raw", "audio", seed=2), root / "cache")


@pytest.fixture(scope="session")
def speech_cache(tmp_path_factory) -> Path:
    """The speakers' audio under another modality name (``speech``), which no model here encodes."""
    root = tmp_path_factory.mktemp("speech")
    return prepare_audio_manifest(make_audio_manifest(root / "raw", "speech:audio", seed=3), root / "cache")
