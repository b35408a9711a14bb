"""Linear probing: a trained encoder probes better than a random one; numbers match scikit-learn."""

import json

import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch.utils.data import default_collate

from avbalance.analysis.probe import probe_checkpoint, probe_model
from avbalance.analysis.runs import load_run, split_dataset
from avbalance.cli import main
from avbalance.models import build_model
from avbalance.models.checkpoint import read_checkpoint

SPLITS = ("train", "val", "test")


def model_spec_of(run):
    return read_checkpoint(run.checkpoint)["avbalance"]["model_spec"]


def encode_all(model, dataset):
    """Features of a whole split in one forward pass, independently of the probe's extraction."""
    batch = default_collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        features = model.eval().encode({m: batch[m] for m in model.modalities})
    return {m: f.numpy() for m, f in features.items()}, batch["label"].numpy()


@pytest.fixture(scope="module")
def trained(baseline_run):
    run = load_run(baseline_run)
    datasets = {split: split_dataset(run.datamodule, split) for split in SPLITS}
    return run, datasets


def test_trained_encoders_probe_better_than_random_ones(trained):
    run, datasets = trained
    trained_probe = probe_model(run.model, datasets)
    torch.manual_seed(0)
    random_model = build_model(model_spec_of(run))
    random_probe = probe_model(random_model, datasets)
    assert set(trained_probe) == {"audio", "visual", "concat"}
    # Four epochs train the audio encoder (the fast modality) well; the visual encoder barely moves
    # under joint training -- the imbalance itself -- so it is not compared here.
    for representation in ("audio", "concat"):
        assert trained_probe[representation]["test"] > random_probe[representation]["test"] + 0.05, representation


def test_probe_accuracy_matches_scikit_learn_directly(trained):
    run, datasets = trained
    result = probe_model(run.model, datasets)
    encoded = {split: encode_all(run.model, datasets[split]) for split in SPLITS}
    for modality in ("audio", "visual"):
        train_x, train_y = encoded["train"][0][modality], encoded["train"][1]
        scaler = StandardScaler().fit(train_x)
        classifier = LogisticRegression(max_iter=2000).fit(scaler.transform(train_x), train_y)
        for split in ("val", "test"):
            x, y = encoded[split][0][modality], encoded[split][1]
            expected = float((classifier.predict(scaler.transform(x)) == y).mean())
            # Batched and whole-split features may differ in the last float bits: allow one sample.
            assert result[modality][split] == pytest.approx(expected, abs=1.01 / len(y)), (modality, split)


def test_probe_command_writes_json(baseline_run, tmp_path, capsys):
    out = tmp_path / "probe.json"
    assert main(["probe", "--ckpt", str(baseline_run), "--out", str(out)]) == 0
    assert "linear probe accuracy" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["checkpoint"].endswith("best.ckpt")
    assert result["samples"] == {"train": 360, "val": 40, "test": 400}
    assert set(result["accuracy"]) == {"audio", "visual", "concat"}
    for scores in result["accuracy"].values():
        assert set(scores) == set(SPLITS) and all(0.0 <= v <= 1.0 for v in scores.values())


def test_unimodal_run_probes_its_only_encoder(visual_only_run):
    result = probe_checkpoint(visual_only_run / "checkpoints" / "best.ckpt")
    assert set(result["accuracy"]) == {"visual"}  # nothing to concatenate


def test_probe_of_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["probe", "--ckpt", str(tmp_path / "nope.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"avbalance: error: {tmp_path / 'nope.ckpt'}: no such checkpoint file"
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert main(["probe", "--ckpt", str(empty)]) == 2
    assert "no checkpoints/best.ckpt in this folder" in capsys.readouterr().err
