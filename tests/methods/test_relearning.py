"""ReLearning against independent computations: the official schedule and rule, purity, diagnosis,
soft re-initialisation."""

import copy

import numpy as np
import pytest
import torch

from avb_testing import ListData, tiny_batch
from avbalance.methods import get_method
from avbalance.methods.relearning import cluster_purity, purity


def brute_purity(labels, clusters):
    total = 0
    for c in set(clusters.tolist()):
        members = labels[clusters == c]
        total += max((members == k).sum() for k in set(members.tolist()))
    return total / len(labels)


@pytest.mark.parametrize("seed", range(5))
def test_purity_is_the_majority_count_per_cluster(seed):
    rng = np.random.default_rng(seed)
    labels, clusters = rng.integers(0, 4, 50), rng.integers(0, 6, 50)
    assert purity(labels, clusters) == pytest.approx(brute_purity(labels, clusters))


def test_separated_clusters_are_pure():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    features = np.eye(3)[labels] * 10 + rng.normal(0, 0.1, (60, 3))
    assert cluster_purity(features, labels, 3) == 1.0


def _batches(count, seed, size=8):
    out = []
    for i in range(count):
        batch = tiny_batch(batch_size=size, seed=seed + i)
        batch["index"] = torch.arange(i * size, (i + 1) * size)
        out.append(batch)
    return out


def test_diagnosis_and_soft_reinitialisation(tiny_model):
    train, val = _batches(3, 0), _batches(2, 100)
    method = get_method("relearning", move_lambda=2.0, reinit_epoch=2, reinit_num=1, seed=0)
    method.setup(tiny_model)
    initial = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    with torch.no_grad():  # "training" moves every parameter
        for p in tiny_model.parameters():
            p.add_(torch.randn_like(p))
    trained = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    buffers = {n: b.clone() for n, b in tiny_model.named_buffers()}

    from sklearn.cluster import KMeans
    from sklearn.preprocessing import MinMaxScaler

    def independent(batches):  # features of the whole split in eval mode, K-means purity per modality
        tiny_model.eval()
        with torch.no_grad():
            feats = [tiny_model.encode(b) for b in batches]
        tiny_model.train()
        labels = torch.cat([b["label"] for b in batches]).numpy()
        result = {}
        for m in ("audio", "visual"):
            x = MinMaxScaler(feature_range=(-1, 1)).fit_transform(torch.cat([f[m] for f in feats]).numpy())
            result[m] = brute_purity(labels, KMeans(n_clusters=5, random_state=0, n_init="auto").fit_predict(x))
        return result

    p_train, p_val = independent(train), independent(val)
    data = ListData(train, val)
    method.on_epoch_end(1, tiny_model, data)  # not due
    assert all(torch.equal(p, trained[n]) for n, p in tiny_model.named_parameters())
    method.on_epoch_end(2, tiny_model, data)
    for m in ("audio", "visual"):
        a = np.tanh(2.0 * abs(p_train[m] - p_val[m]))
        assert method.logs()[f"reinit/{m}"].item() == pytest.approx(a, abs=1e-6)
        assert method.logs()[f"purity_train/{m}"].item() == pytest.approx(p_train[m])
    for name, p in tiny_model.named_parameters():
        if name.startswith("encoders."):
            a = method.logs()[f"reinit/{name.split('.')[1]}"].item()
            torch.testing.assert_close(p, a * initial[name] + (1 - a) * trained[name], msg=name)
        else:
            assert torch.equal(p, trained[name]), name  # the head is not re-initialised
    for name, b in tiny_model.named_buffers():
        assert torch.equal(b, buffers[name]), name  # running statistics are kept
    assert tiny_model.training
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    method.on_epoch_end(4, tiny_model, data)  # reinit_num = 1: done
    assert all(torch.equal(p, before[n]) for n, p in tiny_model.named_parameters())


def official_purity_score(y_true, y_pred):
    """``purity_score`` of the official code (majority label of each cluster by histogram)."""
    y_true = y_true.copy()
    y_voted_labels = np.zeros(y_true.shape)
    labels = np.unique(y_true)
    for k in range(labels.shape[0]):
        y_true[y_true == labels[k]] = np.arange(labels.shape[0])[k]
    labels = np.unique(y_true)
    bins = np.concatenate((labels, [np.max(labels) + 1]), axis=0)
    for cluster in np.unique(y_pred):
        hist, _ = np.histogram(y_true[y_pred == cluster], bins=bins)
        y_voted_labels[y_pred == cluster] = np.argmax(hist)
    return float(np.mean(y_true == y_voted_labels))


def official_reinit_weights(train_features, val_features, train_label, val_label, n_classes, move_lambda):
    """``reinit_score`` of GeWu-Lab/Diagnosing_Relearning_ECCV2024 code/ours.py: per modality the
    purity gap of K-means (``random_state=0``) on min-max scaled features, ``tanh(lambda * gap)``."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import MinMaxScaler

    weights = {}
    for m in train_features:
        purities = []
        for features, labels in ((train_features[m], train_label), (val_features[m], val_label)):
            result = MinMaxScaler(feature_range=(-1, 1)).fit_transform(features)
            y_pred = KMeans(n_clusters=n_classes, random_state=0, n_init="auto").fit_predict(result)
            purities.append(official_purity_score(np.array(labels), y_pred))
        weights[m] = float(np.tanh(move_lambda * abs(purities[0] - purities[1])))
    return weights


def test_default_schedule_and_reinitialisation_are_the_official_script(tiny_model):
    """Defaults (lambda 3, every 20 epochs, 3 times: code/script/ours.sh) against the official loop
    over 90 epochs with the same simulated training: strengths and parameters after every epoch."""
    train, val = _batches(3, 0), _batches(2, 100)
    method = get_method("relearning", seed=0)
    assert (method.move_lambda, method.reinit_epoch, method.reinit_num) == (3.0, 20, 3)
    method.setup(tiny_model)
    official = copy.deepcopy(tiny_model)
    checkpoint = {n: p.detach().clone() for n, p in official.named_parameters()}
    data, flag_reinit, applied = ListData(train, val), 0, []
    generator = torch.Generator().manual_seed(0)
    for epoch in range(90):
        if epoch % 10 == 0:  # "training": the same change to both copies
            with torch.no_grad():
                for p, q in zip(tiny_model.parameters(), official.parameters()):
                    step = 0.3 * torch.randn(p.shape, generator=generator)
                    p.add_(step)
                    q.add_(step)
        method.on_epoch_end(epoch, tiny_model, data)
        if (epoch % 20 == 0) & (epoch > 0):
            flag_reinit += 1
            if flag_reinit <= 3:
                features = [_features(official, batches) for batches in (train, val)]
                weights = official_reinit_weights(
                    features[0][0], features[1][0], features[0][1], features[1][1], 5, 3.0
                )
                with torch.no_grad():
                    for name, param in official.named_parameters():
                        if name.startswith("encoders."):
                            w = weights[name.split(".")[1]]
                            param.copy_(w * checkpoint[name] + (1 - w) * param)
                for m, w in weights.items():
                    assert method.logs()[f"reinit/{m}"].item() == pytest.approx(w, abs=1e-6)
                applied.append(epoch)
        for (name, p), q in zip(tiny_model.named_parameters(), official.parameters()):
            torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=f"epoch {epoch}: {name}")
    assert applied == [20, 40, 60] and method.reinits == 3


def _features(model, batches):
    """The official ``get_feature``: encoder features of a split in eval mode, and the labels."""
    model.eval()
    with torch.no_grad():
        feats = [model.encode(b) for b in batches]
    model.train()
    return (
        {m: torch.cat([f[m] for f in feats]).numpy() for m in ("audio", "visual")},
        torch.cat([b["label"] for b in batches]).numpy(),
    )


def test_schedule_and_resume(tiny_model):
    method = get_method("relearning", reinit_epoch=15, reinit_num=2)
    assert [e for e in range(50) if method.due(e)] == [15, 30, 45]
    method.reinits = 2
    assert not method.due(45)
    method.setup(tiny_model)
    restored = get_method("relearning")
    restored.load_state_dict(method.state_dict())
    assert restored.reinits == 2
    torch.testing.assert_close(restored.initial["audio"][0], method.initial["audio"][0])
    with torch.no_grad():
        tiny_model.encoders["audio"].conv1.weight.add_(1.0)
    restored.setup(tiny_model)  # a resumed run keeps the initial weights of the checkpoint
    torch.testing.assert_close(restored.initial["audio"][0], method.initial["audio"][0])
