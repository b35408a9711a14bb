"""Greedy: MMTM blocks between encoder stages, conditional learning speeds, curation switching."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avb_testing import tiny_batch, tiny_spec
from avbalance.methods import get_method
from avbalance.models import build_model
from avbalance.models.mmtm import MMTM, MMTMModel

torch.set_num_threads(1)


def greedy_model(**params):
    method = get_method("greedy", **params)
    torch.manual_seed(0)
    spec = tiny_spec()
    spec["encoders"]["audio"]["layers"] = spec["encoders"]["visual"]["layers"] = [1, 1, 1]
    model = build_model(method.adapt_model_spec(spec))
    method.setup(model)
    return method, model


def test_mmtm_gates_match_the_formula():
    block = MMTM({"audio": 3, "visual": 5}, ratio=4)
    generator = torch.Generator().manual_seed(0)
    u = {"audio": torch.randn(4, 3, generator=generator), "visual": torch.randn(4, 5, generator=generator)}
    gates = block.eval()(u)
    assert block.fc_squeeze.out_features == int(2 * 8 / 4)
    w, b = block.fc_squeeze.weight.detach().double().numpy(), block.fc_squeeze.bias.detach().double().numpy()
    e = np.maximum(np.concatenate([u["audio"].numpy(), u["visual"].numpy()], 1) @ w.T + b, 0)
    for m in u:
        layer = block.fc_excite[m]
        weight, bias = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
        expected = 1 / (1 + np.exp(-(e @ weight.T + bias)))
        assert np.allclose(gates[m].detach().numpy(), expected, atol=1e-6)


def test_model_gates_after_the_chosen_stages_and_keeps_encoders_separate():
    _, model = greedy_model()
    assert list(model.mmtm) == ["layer2", "layer3"]  # official: every stage but the first
    batch = tiny_batch()
    encoders = model.encoders
    model.eval()  # running BN statistics: frames can be encoded one at a time
    # Independent forward: stage by stage, frames handled one by one for the clip.
    sound = encoders["audio"]
    audio = sound.maxpool(sound.relu(sound.bn1(sound.conv1(batch["audio"]))))
    frames = [batch["visual"][:, :, t] for t in range(batch["visual"].shape[2])]
    visual = encoders["visual"]
    frames = [visual.maxpool(visual.relu(visual.bn1(visual.conv1(f)))) for f in frames]
    for stage in (1, 2, 3):
        audio = getattr(encoders["audio"], f"layer{stage}")(audio)
        frames = [getattr(visual, f"layer{stage}")(f) for f in frames]
        if stage > 1:
            block = model.mmtm[f"layer{stage}"]
            squeeze = torch.cat([audio.mean(dim=(2, 3)), torch.stack([f.mean(dim=(2, 3)) for f in frames]).mean(0)], 1)
            e = F.relu(block.fc_squeeze(squeeze))
            audio = audio * torch.sigmoid(block.fc_excite["audio"](e))[:, :, None, None]
            gate = torch.sigmoid(block.fc_excite["visual"](e))[:, :, None, None]
            frames = [f * gate for f in frames]
    with torch.no_grad():
        features = model.encode(batch)
    assert torch.allclose(features["audio"], audio.mean(dim=(2, 3)).detach(), atol=1e-5)
    pooled = torch.stack([f.mean(dim=(2, 3)) for f in frames]).mean(0).detach()
    assert torch.allclose(features["visual"], pooled, atol=1e-5)
    assert not any(name.startswith("mmtm") for name, _ in model.encoders.named_parameters())


def test_curation_replaces_the_caring_modality_gate_by_its_running_mean():
    block = MMTM({"audio": 3, "visual": 2})
    u = {"audio": torch.randn(5, 3), "visual": torch.randn(5, 2)}
    block.update_running({"audio": torch.tensor([0.1, 0.2, 0.3]), "visual": torch.tensor([0.5, 0.5])})
    block.update_running({"audio": torch.tensor([0.3, 0.4, 0.5]), "visual": torch.tensor([0.7, 0.9])})
    assert torch.allclose(block.running("audio"), torch.tensor([0.2, 0.3, 0.4]))  # cumulative mean
    block.care.fill_(0)
    normal = block.eval()(u)
    cured = block.train()(u)
    assert torch.allclose(cured["audio"], torch.tensor([0.2, 0.3, 0.4]).expand(5, 3))
    assert torch.allclose(cured["visual"], normal["visual"])
    assert not torch.allclose(normal["audio"], cured["audio"])  # evaluation always gates normally
    sums, count = block.take_gate_sums()
    assert count.item() == 5 and block.take_gate_sums() is None


class OfficialCallback:
    """The official Bias_Mitigation_Strong callback, driven by parameter names as the official code."""

    def __init__(self, model, epsilon, window, modalities=("audio", "visual")):
        self.model, self.epsilon, self.window, self.modalities = model, epsilon, window, modalities
        self.m_bypass, self.m_main = [0.0, 0.0], [0.0, 0.0]
        self.curation_mode, self.caring, self.curation_step = False, 0, 0

    def compute_bdr(self):
        wn_b, gn_b, wn_m, gn_m = [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]
        for name, p in self.model.named_parameters():
            wn = float((p.detach() ** 2).sum())
            gn = float((p.grad**2).sum()) if p.grad is not None else 0.0
            if name.startswith("mmtm"):
                owners = [i for i, m in enumerate(self.modalities) if f"fc_excite.{m}." in name] or [0, 1]
                for i in owners:
                    wn_b[i] += wn
                    gn_b[i] += gn
            else:
                for i, m in enumerate(self.modalities):
                    if name.startswith(f"encoders.{m}."):
                        wn_m[i] += wn
                        gn_m[i] += gn
        for i in range(2):
            self.m_bypass[i] += gn_b[i] / wn_b[i]
            self.m_main[i] += gn_m[i] / wn_m[i]
        bdr = [math.log10(self.m_bypass[i] / self.m_main[i]) for i in range(2)]
        return bdr[0] - bdr[1]

    def on_backward_end(self):
        if not self.curation_mode:
            self.d_bdr = self.compute_bdr()
            if abs(self.d_bdr) > self.epsilon:
                self.curation_mode, self.curation_step = True, 0
                self.caring = 0 if self.d_bdr > 0 else 1
        else:
            self.curation_step += 1
            if self.curation_step == self.window:
                self.curation_mode = False


def test_speeds_and_switching_follow_the_official_callback():
    method, model = greedy_model(threshold=0.05, window=3, starting_epoch=0)
    model.double()  # float64: the speeds agree with the official sums to 1e-6
    reference = OfficialCallback(model, 0.05, 3)
    generator = torch.Generator().manual_seed(5)
    seen_modes = set()
    for step in range(25):
        for name, p in model.named_parameters():
            favoured = "fc_excite.audio" if step < 12 else "fc_excite.visual"  # bypass speeds swap
            scale = (3.0 if step < 12 else 30.0) if favoured in name else 1.0
            p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale * 0.01
        method.after_backward(model)
        reference.on_backward_end()
        assert bool(method.curating) == reference.curation_mode, step
        if reference.curation_mode:
            assert int(method.caring) == reference.caring, step
            assert all(int(b.care) == reference.caring for b in model.blocks())
        else:
            assert all(int(b.care) == -1 for b in model.blocks())
            assert method.logs()["d_bdr"].item() == pytest.approx(reference.d_bdr, rel=0, abs=1e-6)
        seen_modes.add((reference.curation_mode, reference.caring))
    assert {(True, 0), (True, 1), (False, 0), (False, 1)} & seen_modes >= {(True, 0), (True, 1)}


def test_no_curation_before_the_starting_epoch():
    method, model = greedy_model(threshold=0.0, starting_epoch=2)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    method.on_epoch_start(1)
    method.after_backward(model)
    assert not bool(method.curating) and all(int(b.care) == -1 for b in model.blocks())
    method.on_epoch_start(2)
    method.after_backward(model)
    assert bool(method.curating)


def test_losses_and_running_means_from_training_forwards():
    method, model = greedy_model()
    batch = tiny_batch()
    output = model(batch)
    unimodal = sum(F.cross_entropy(z, batch["label"]) for z in output.unimodal_logits.values())
    assert method.loss(output, batch).item() == pytest.approx(unimodal.item(), abs=1e-6)
    fused = get_method("greedy", loss_on="fused").loss(output, batch)
    assert fused.item() == pytest.approx(F.cross_entropy(output.logits, batch["label"]).item(), abs=1e-6)
    block = model.blocks()[0]
    expected = {m: v.clone() / 6 for m, v in block._gate_sums.items()}
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    method.after_backward(model, output, batch)
    for m in model.modalities:
        assert torch.allclose(block.running(m), expected[m], atol=1e-6)
    assert int(block.gate_steps) == 1


def test_refuses_encoders_without_stages_and_other_variants():
    spec = get_method("greedy").adapt_model_spec(tiny_spec())
    spec["encoders"]["audio"] = {"kind": "mlp", "in_channels": 16}
    with pytest.raises(ValueError, match="MMTM blocks need ResNet encoders"):
        build_model(spec)
    assert isinstance(build_model(get_method("greedy").adapt_model_spec(tiny_spec("film"))), MMTMModel)
