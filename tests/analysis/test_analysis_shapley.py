"""Shapley values, the imbalance degree and confusion matrices, against independent computations."""

import json
from itertools import product

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

from avbalance.analysis.confusion import confusion_matrices
from avbalance.analysis.features import SplitFeatures
from avbalance.analysis.shapley import coalitions, imbalance, modality_contributions, shapley_values
from avbalance.cli import main
from avbalance.errors import ConfigError


def random_split_features(head, count: int = 300, seed: int = 0) -> SplitFeatures:
    generator = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(count, d, generator=generator) for m, d in head.dims.items()}
    labels = torch.randint(0, head.num_classes, (count,), generator=generator)
    return SplitFeatures(features, labels)


def accuracy_without(head, split: SplitFeatures, removed: set, reference: dict) -> float:
    """Fused accuracy with the ``removed`` modalities' features replaced, computed by hand."""
    inputs = {m: reference[m].expand_as(f) if m in removed else f for m, f in split.features.items()}
    with torch.no_grad():
        predictions = head(inputs).logits.argmax(1)
    return float((predictions == split.labels).float().mean())


def test_two_modalities_match_the_closed_form():
    rng = np.random.default_rng(0)
    for _ in range(20):
        v_empty, v_a, v_v, v_av = rng.uniform(0, 1, 4)
        values = {frozenset(): v_empty, frozenset({"a"}): v_a, frozenset({"v"}): v_v, frozenset({"a", "v"}): v_av}
        phi = shapley_values(values, ["a", "v"])
        assert phi["a"] == pytest.approx(0.5 * ((v_a - v_empty) + (v_av - v_v)))
        assert phi["v"] == pytest.approx(0.5 * ((v_v - v_empty) + (v_av - v_a)))


def test_three_modalities_on_games_with_known_values():
    modalities = ["a", "b", "c"]
    # Unanimity game of {a, b}: worth 1 only when both are present; they split it, c gets nothing.
    unanimity = {s: float({"a", "b"} <= s) for s in coalitions(modalities)}
    assert shapley_values(unanimity, modalities) == pytest.approx({"a": 0.5, "b": 0.5, "c": 0.0})
    # Additive game: each modality's value is exactly what it adds.
    weights = {"a": 0.3, "b": 0.1, "c": -0.05}
    additive = {s: 0.2 + sum(weights[m] for m in s) for s in coalitions(modalities)}
    assert shapley_values(additive, modalities) == pytest.approx(weights)


@pytest.mark.parametrize("removal", ["zero", "mean"])
def test_model_values_follow_the_closed_form_and_add_up(tiny_model, removal):
    head = tiny_model.head
    split = random_split_features(head)
    train = random_split_features(head, seed=1)
    result = modality_contributions(head, split, removal, train_features=train)

    reference = {
        m: (torch.zeros(f.shape[1]) if removal == "zero" else train.features[m].mean(0))
        for m, f in split.features.items()
    }
    v = {
        name: accuracy_without(head, split, removed, reference)
        for name, removed in {
            "none": {"audio", "visual"},
            "audio": {"visual"},
            "visual": {"audio"},
            "audio+visual": set(),
        }.items()
    }
    assert result["coalition_accuracy"] == pytest.approx(v)
    assert result["shapley"]["audio"] == pytest.approx(
        0.5 * ((v["audio"] - v["none"]) + (v["audio+visual"] - v["visual"]))
    )
    assert result["shapley"]["visual"] == pytest.approx(
        0.5 * ((v["visual"] - v["none"]) + (v["audio+visual"] - v["audio"]))
    )
    assert sum(result["shapley"].values()) == pytest.approx(result["full"] - result["empty"])


@pytest.mark.parametrize("removal", ["zero", "mean"])
def test_an_ignored_modality_contributes_nothing(tiny_model, removal):
    head = tiny_model.head
    with torch.no_grad():
        head.weight_blocks()["visual"].zero_()  # the fused logits no longer depend on visual features
    split = random_split_features(head)
    with torch.no_grad():  # labels the model gets right from audio alone
        split.labels = head(split.features).logits.argmax(1)
    result = modality_contributions(head, split, removal, train_features=random_split_features(head, seed=1))
    assert result["shapley"]["visual"] == 0.0
    assert result["shapley"]["audio"] == pytest.approx(1.0 - result["empty"])
    assert result["share"] == pytest.approx({"audio": 1.0, "visual": 0.0})
    assert result["imbalance_degree"] == pytest.approx(1.0)


def test_imbalance_degree_definition():
    two = imbalance({"a": 0.3, "v": 0.1}, gain=0.4)
    assert two["share"] == pytest.approx({"a": 0.75, "v": 0.25})
    assert two["imbalance_degree"] == pytest.approx(0.5)  # |0.3 - 0.1| / 0.4
    assert two["imbalance_gap"] == pytest.approx(0.2)
    three = imbalance({"a": 0.3, "b": 0.1, "c": 0.0}, gain=0.4)
    assert three["imbalance_degree"] == pytest.approx((0.5 + 0.75 + 0.25) / 3)
    assert three["imbalance_gap"] == pytest.approx((0.2 + 0.3 + 0.1) / 3)
    assert imbalance({"a": 0.0, "v": 0.0}, gain=0.0)["imbalance_degree"] is None  # no gain to share
    assert imbalance({"v": 0.2}, gain=0.2)["imbalance_degree"] is None  # one modality: no pairs


def test_unknown_removal_rule(tiny_model):
    with pytest.raises(ConfigError, match="unknown removal rule 'noise'; choose one of: zero, mean"):
        modality_contributions(tiny_model.head, random_split_features(tiny_model.head), "noise")


def test_confusion_matrices_match_scikit_learn():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (200,), generator=generator)
    labels[labels == 3] = 2  # class 3 absent: its per-class accuracy is undefined
    logits = {"fused": torch.randn(200, 4, generator=generator), "audio": torch.randn(200, 4, generator=generator)}
    result = confusion_matrices(logits, labels, 4, ["a", "b", "c", "d"])
    assert result["class_names"] == ["a", "b", "c", "d"]
    for name, output_logits in logits.items():
        expected = confusion_matrix(labels.numpy(), output_logits.argmax(1).numpy(), labels=range(4))
        assert result["outputs"][name]["matrix"] == expected.tolist()
        recall = [expected[k, k] / expected[k].sum() if expected[k].sum() else None for k in range(4)]
        assert result["outputs"][name]["per_class_acc"][:3] == pytest.approx(recall[:3])
        assert result["outputs"][name]["per_class_acc"][3] is None


@pytest.mark.parametrize("removal", ["zero", "mean"])
def test_test_command_prints_and_writes_the_analysis(ogm_ge_run, tmp_path, capsys, removal):
    code = main(
        ["test", "--ckpt", str(ogm_ge_run / "checkpoints" / "best.ckpt"), "--out", str(tmp_path), "--removal", removal]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "modality contribution" in printed and "imbalance degree" in printed and "per-class accuracy" in printed

    written = json.loads((tmp_path / "metrics.json").read_text())
    metrics, shapley, confusion = written["test"], written["shapley"], written["confusion"]
    assert shapley["removal"] == removal
    assert shapley["full"] == pytest.approx(metrics["acc"], abs=1e-6)  # same checkpoint, same split
    assert sum(shapley["shapley"].values()) == pytest.approx(shapley["full"] - shapley["empty"])
    for output, key in (("fused", "acc"), ("audio", "acc_audio"), ("visual", "acc_visual")):
        matrix = np.array(confusion["outputs"][output]["matrix"])
        assert matrix.sum() == 400
        assert np.trace(matrix) / matrix.sum() == pytest.approx(metrics[key], abs=1e-6)
    assert len(confusion["class_names"]) == 8


def test_coalitions_cover_every_subset_once():
    subsets = coalitions(["a", "b", "c"])
    assert len(subsets) == 8 and len(set(subsets)) == 8
    assert {frozenset(m for m, keep in zip("abc", mask) if keep) for mask in product([0, 1], repeat=3)} == set(subsets)
