"""MMCosine: cosine head built by the method, loss = CE on scaled summed cosines."""

import pytest
import torch
import torch.nn.functional as F

from avb_testing import tiny_batch, tiny_spec
from avbalance.errors import ConfigError
from avbalance.methods import get_method
from avbalance.methods.mmcosine import label_nce
from avbalance.models import build_model


@pytest.mark.parametrize(
    "fusion, head",
    [("concat", "CosineFusion"), ("film_sym", "SymmetricFiLMFusion"), ("gated_sym", "SymmetricGatedFusion")],
)
def test_loss_is_cross_entropy_of_scaled_cosines(fusion, head):
    method = get_method("mmcosine", scaling=12.0)
    torch.manual_seed(0)
    model = build_model(method.adapt_model_spec(tiny_spec(fusion)))
    assert type(model.head).__name__ == head
    method.setup(model)
    batch = tiny_batch()
    output = model(batch)
    streams = model.head.streams(output.features)
    blocks = model.head.weight_blocks()
    expected_logits = sum(12.0 * F.normalize(streams[m]) @ F.normalize(blocks[m]).t() for m in streams)
    torch.testing.assert_close(output.logits, expected_logits)
    torch.testing.assert_close(method.loss(output, batch), F.cross_entropy(expected_logits, batch["label"]))


def test_concat_logits_loss_and_gradients_match_the_official_training_step():
    """``train_epoch`` of the official main_CD.py: normalise the features and the head's column blocks
    (the first ``d_audio`` columns for audio, the rest for visual), scale, add; CE on the sum."""
    method = get_method("mmcosine", scaling=10.0)
    torch.manual_seed(0)
    model = build_model(method.adapt_model_spec(tiny_spec())).double()
    method.setup(model)
    batch = {k: v.double() if v.is_floating_point() else v for k, v in tiny_batch(batch_size=8).items()}
    output = model(batch)
    a, v = output.features["audio"], output.features["visual"]
    weight = model.head.fc_out.weight
    split = a.shape[1]
    out_a = torch.mm(F.normalize(a, dim=1), F.normalize(torch.transpose(weight[:, :split], 0, 1), dim=0)) * 10.0
    out_v = torch.mm(F.normalize(v, dim=1), F.normalize(torch.transpose(weight[:, split:], 0, 1), dim=0)) * 10.0
    official = F.cross_entropy(out_a + out_v, batch["label"])
    ours = method.loss(output, batch)
    torch.testing.assert_close(output.unimodal_logits["audio"], out_a, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours, official, rtol=0, atol=1e-6)
    params = [p for p in model.parameters() if p.requires_grad and p is not model.head.fc_out.bias]
    ours_grads = torch.autograd.grad(ours, params, retain_graph=True)
    official_grads = torch.autograd.grad(official, params)
    for mine, theirs in zip(ours_grads, official_grads):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)


def test_bias_gets_no_gradient():
    method = get_method("mmcosine")
    model = build_model(method.adapt_model_spec(tiny_spec()))
    batch = tiny_batch()
    method.loss(model(batch), batch).backward()
    assert model.head.fc_out.bias.grad is None
    assert model.head.fc_out.weight.grad.abs().sum() > 0


def official_nce(f1, f2, targets, temperature=0.1):
    """NCELoss.forward of the official code (main_CD.py), one row at a time: cosine from the squared
    distance of the normalised features, positives by label, negatives with log(1 - p)."""
    f1, f2 = F.normalize(f1, dim=1), F.normalize(f2, dim=1)
    rows = []
    for i in range(len(f1)):
        cos = torch.stack([1 - 0.5 * (f1[i] - f2[j]).pow(2).sum() for j in range(len(f2))])
        p = torch.softmax(cos / temperature, dim=0)
        same = [j for j in range(len(f2)) if targets[j] == targets[i]]
        other = [j for j in range(len(f2)) if targets[j] != targets[i]]
        positive = sum(-torch.log(p[j] + 1e-10) for j in same) / len(same)
        negative = sum(-torch.log(1 - p[j] + 1e-10) for j in other) / len(other)
        rows.append(positive + negative)
    return torch.stack(rows).mean()


@pytest.mark.parametrize("seed", range(3))
def test_nce_term_and_its_gradients_match_the_official_formula(seed):
    generator = torch.Generator().manual_seed(seed)
    audio = torch.randn(10, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    visual = torch.randn(10, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (10,), generator=generator)
    labels[:2] = torch.tensor([0, 1])  # at least one negative in every row
    ours = label_nce(audio, visual, labels, 0.1)
    expected = official_nce(audio, visual, labels)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    ours_grads = torch.autograd.grad(ours, (audio, visual))
    expected_grads = torch.autograd.grad(expected, (audio, visual))
    for mine, theirs in zip(ours_grads, expected_grads):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)


def test_nce_term_is_weighted_by_lam_and_finite_for_one_label():
    method = get_method("mmcosine", lam=0.5)
    torch.manual_seed(0)
    model = build_model(method.adapt_model_spec(tiny_spec()))
    batch = tiny_batch(batch_size=8)
    output = model(batch)
    nce = official_nce(output.features["audio"], output.features["visual"], batch["label"])
    expected = F.cross_entropy(output.logits, batch["label"]) + 0.5 * nce
    torch.testing.assert_close(method.loss(output, batch), expected, rtol=0, atol=1e-5)
    one_label = torch.zeros(4, dtype=torch.long)
    features = torch.randn(4, 5), torch.randn(4, 5)
    probabilities = torch.softmax(F.normalize(features[0]) @ F.normalize(features[1]).t() / 0.1, dim=1)
    torch.testing.assert_close(label_nce(*features, one_label, 0.1), -torch.log(probabilities + 1e-10).mean(1).mean())


def test_nce_term_refuses_features_of_different_sizes():
    with pytest.raises(ValueError, match="features of equal size, got 4 and 5"):
        label_nce(torch.randn(3, 4), torch.randn(3, 5), torch.tensor([0, 1, 0]), 0.1)
    spec = tiny_spec()
    spec["encoders"]["audio"]["width"] = 8  # audio features twice the visual size
    method = get_method("mmcosine", lam=0.5)
    model = build_model(method.adapt_model_spec(spec))
    with pytest.raises(ValueError, match="features of equal size, got 8, 16"):
        method.setup(model)
    get_method("mmcosine").setup(model)  # without the NCE term any sizes are fine
    with pytest.raises(ConfigError, match="lam must be >= 0"):
        get_method("mmcosine", lam=-1.0)


def test_refuses_heads_without_blocks_and_models_without_cosine_head():
    with pytest.raises(ValueError, match="needs a head split in per-modality blocks"):
        get_method("mmcosine").adapt_model_spec(tiny_spec("sum"))
    with pytest.raises(ValueError, match="needs a cosine head"):
        get_method("mmcosine").setup(build_model(tiny_spec("concat")))
