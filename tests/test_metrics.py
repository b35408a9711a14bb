"""Metrics against scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, f1_score

from avbalance.metrics import MultimodalMetrics


def test_fused_and_per_modality_metrics_match_sklearn():
    generator = torch.Generator().manual_seed(0)
    classes = 4
    labels = torch.randint(0, classes, (50,), generator=generator)
    logits = torch.randn(50, classes, generator=generator) + 2 * torch.nn.functional.one_hot(labels, classes)
    audio = torch.randn(50, classes, generator=generator)
    metrics = MultimodalMetrics(classes, ["audio"])
    for part in range(0, 50, 16):  # several batches
        metrics.update(logits[part : part + 16], {"audio": audio[part : part + 16]}, labels[part : part + 16])
    results = metrics.compute()
    y = labels.numpy()
    for suffix, z in (("", logits), ("_audio", audio)):
        probabilities = z.softmax(1).numpy()
        predictions = probabilities.argmax(1)
        assert results["acc" + suffix] == pytest.approx(accuracy_score(y, predictions), abs=1e-6)
        assert results["f1_macro" + suffix] == pytest.approx(f1_score(y, predictions, average="macro"), abs=1e-6)
        one_hot = np.eye(classes)[y]
        assert results["map" + suffix] == pytest.approx(
            average_precision_score(one_hot, probabilities, average="macro"), abs=1e-5
        )
    metrics.reset()
    metrics.update(logits[:5], {"audio": audio[:5]}, labels[:5])
    assert metrics.compute()["acc"] == pytest.approx(accuracy_score(y[:5], logits[:5].argmax(1).numpy()))
