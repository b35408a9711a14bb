"""The built-in synthetic dataset: deterministic, and the imbalance phenomenon is real on it."""

import json

import torch

from avbalance.data import build_dataset
from avbalance.demo import run_demo


def test_same_seed_same_data_and_knobs_apply():
    first = build_dataset("synthetic", seed=3, train_size=50, test_size=20, num_classes=4, frames=3)
    second = build_dataset("synthetic", seed=3, train_size=50, test_size=20, num_classes=4, frames=3)
    assert torch.equal(first.train.tensors["visual"], second.train.tensors["visual"])
    assert torch.equal(first.test.labels, second.test.labels)
    other = build_dataset("synthetic", seed=4, train_size=50, test_size=20, num_classes=4, frames=3)
    assert not torch.equal(first.train.tensors["audio"], other.train.tensors["audio"])
    sample = first.train[0]
    assert sample["audio"].shape == (1, 32, 32) and sample["visual"].shape == (3, 3, 32, 32)
    assert first.info.num_classes == 4 and int(first.train.labels.max()) < 4
    assert len(first.train) == 50 and len(first.test) == 20 and first.val is None


def test_audio_dropout_removes_the_audio_signal():
    quiet = build_dataset("synthetic", train_size=400, audio_dropout=1.0, audio_strength=5.0)
    loud = build_dataset("synthetic", train_size=400, audio_dropout=0.0, audio_strength=5.0)
    assert quiet.train.tensors["audio"].std() < 1.1 < loud.train.tensors["audio"].std()


def test_visual_branch_of_the_joint_model_lags_the_visual_only_model(tmp_path):
    """The default recipe shows the imbalance: visual-in-joint >= 5 points below visual-only."""
    results = run_demo(tmp_path, runs=["baseline", "visual_only"], report=lambda *_: None)
    gap = results["visual_only"]["visual"] - results["baseline"]["visual"]
    assert gap >= 0.05, results
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == results
    assert (tmp_path / "val_accuracy.png").stat().st_size > 10_000


def test_optional_third_modality():
    splits = build_dataset("synthetic", train_size=30, test_size=10, flow_strength=0.3, frames=3)
    assert splits.info.modalities == ("audio", "visual", "flow")
    assert splits.train[0]["flow"].shape == (2, 3, 32, 32)
    assert "flow" not in build_dataset("synthetic", train_size=30, test_size=10).info.input_shapes
