"""Official OGM-GE / MMCosine checkpoints convert and give the same logits."""

import os
import pickle

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from avbalance.cli import main
from avbalance.errors import CheckpointError
from avbalance.models import load_model
from avbalance.models.convert import convert_checkpoint


class OfficialResNet(nn.Module):
    """The official backbone's layout: torchvision ResNet-18 trunk, no pool or fc."""

    def __init__(self, modality: str):
        super().__init__()
        trunk = torchvision.models.resnet18()
        self.modality = modality
        self.conv1 = nn.Conv2d(1 if modality == "audio" else 3, 64, 7, 2, 3, bias=False)
        self.bn1, self.relu, self.maxpool = trunk.bn1, trunk.relu, trunk.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4

    def forward(self, x):
        if self.modality == "visual":
            (B, C, T, H, W) = x.size()
            x = x.permute(0, 2, 1, 3, 4).contiguous().view(B * T, C, H, W)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class Concat(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.fc_out = nn.Linear(1024, classes)

    def forward(self, x, y):
        return self.fc_out(torch.cat((x, y), 1))


class Sum(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.fc_x, self.fc_y = nn.Linear(512, classes), nn.Linear(512, classes)

    def forward(self, x, y):
        return self.fc_x(x) + self.fc_y(y)


class FiLM(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.fc, self.fc_out = nn.Linear(512, 1024), nn.Linear(512, classes)

    def forward(self, x, y):
        gamma, beta = torch.split(self.fc(x), 512, 1)
        return self.fc_out(gamma * y + beta)


class Gated(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.fc_x, self.fc_y, self.fc_out = nn.Linear(512, 512), nn.Linear(512, 512), nn.Linear(512, classes)

    def forward(self, x, y):
        return self.fc_out(torch.sigmoid(self.fc_x(x)) * self.fc_y(y))


class FiLMSym(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.fc_x, self.fc_y, self.fc_out = nn.Linear(512, 1024), nn.Linear(512, 1024), nn.Linear(1024, classes)

    def forward(self, x, y):
        gx, bx = torch.split(self.fc_x(x), 512, 1)
        gy, by = torch.split(self.fc_y(y), 512, 1)
        return self.fc_out(torch.cat((gy * x + by, gx * y + bx), 1))


class GatedSym(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.fc_x, self.fc_y, self.fc_out = nn.Linear(512, 512), nn.Linear(512, 512), nn.Linear(1024, classes)

    def forward(self, x, y):
        ox, oy = self.fc_x(x), self.fc_y(y)
        return self.fc_out(torch.cat((torch.sigmoid(oy) * ox, torch.sigmoid(ox) * oy), 1))


class OfficialAVClassifier(nn.Module):
    def __init__(self, fusion, classes=6):
        super().__init__()
        self.audio_net, self.visual_net = OfficialResNet("audio"), OfficialResNet("visual")
        self.fusion_module = fusion(classes)

    def forward(self, audio, visual):
        a, v = self.audio_net(audio), self.visual_net(visual)
        (_, C, H, W) = v.size()
        v = v.view(audio.size(0), -1, C, H, W).permute(0, 2, 1, 3, 4)
        a = torch.flatten(F.adaptive_avg_pool2d(a, 1), 1)
        v = torch.flatten(F.adaptive_avg_pool3d(v, 1), 1)
        return self.fusion_module(a, v)


FUSIONS = {"concat": Concat, "sum": Sum, "film": FiLM, "gated": Gated, "film_sym": FiLMSym, "gated_sym": GatedSym}


def _randomise_batchnorm(model):
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)


@pytest.mark.parametrize("name", list(FUSIONS))
def test_converted_checkpoint_gives_the_official_logits(tmp_path, name):
    torch.manual_seed(0)
    official = OfficialAVClassifier(FUSIONS[name]).eval()
    _randomise_batchnorm(official)
    wrapped = {"module." + k: v for k, v in official.state_dict().items()}  # saved from DataParallel
    source = tmp_path / "official.pth"
    torch.save({"saved_epoch": 3, "fusion": name, "model": wrapped, "acc": 0.5}, source)

    spec = convert_checkpoint(source, tmp_path / "converted.ckpt")
    assert spec["fusion"] == name and spec["num_classes"] == 6
    model = load_model(tmp_path / "converted.ckpt")
    audio, visual = torch.randn(2, 1, 64, 48), torch.randn(2, 3, 2, 64, 64)
    with torch.no_grad():
        expected = official(audio, visual)
        ours = model({"audio": audio, "visual": visual}).logits
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


def test_cli_converts_mmcosine_checkpoint_to_cosine_head(tmp_path, capsys):
    torch.manual_seed(0)
    official = OfficialAVClassifier(Concat, classes=4).eval()
    torch.save(official.state_dict(), tmp_path / "mmcosine.pth")
    assert (
        main(
            [
                "convert-checkpoint",
                str(tmp_path / "mmcosine.pth"),
                str(tmp_path / "out.ckpt"),
                "--fusion",
                "cosine",
                "--num-classes",
                "4",
            ]
        )
        == 0
    )
    model = load_model(tmp_path / "out.ckpt")
    audio, visual = torch.randn(2, 1, 64, 48), torch.randn(2, 3, 1, 64, 64)
    with torch.no_grad():
        a = torch.flatten(F.adaptive_avg_pool2d(official.audio_net(audio), 1), 1)
        v = official.visual_net(visual).mean(dim=(2, 3))
        w = official.fusion_module.fc_out.weight
        expected = 10 * (F.normalize(a) @ F.normalize(w[:, :512]).t() + F.normalize(v) @ F.normalize(w[:, 512:]).t())
        torch.testing.assert_close(model({"audio": audio, "visual": visual}).logits, expected, atol=1e-4, rtol=1e-4)


def test_wrong_class_count_is_reported(tmp_path, capsys):
    torch.save(OfficialAVClassifier(Concat, classes=4).state_dict(), tmp_path / "o.pth")
    assert main(["convert-checkpoint", str(tmp_path / "o.pth"), str(tmp_path / "x.ckpt"), "--num-classes", "6"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--num-classes 6 but the checkpoint's head has 4 classes" in err
    assert not (tmp_path / "x.ckpt").exists()


class _CreatesFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_checkpoint_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned.txt"
    with open(tmp_path / "evil.pth", "wb") as stream:
        pickle.dump({"model": _CreatesFile(str(marker))}, stream)
    with pytest.raises(CheckpointError, match="refused to load"):
        convert_checkpoint(tmp_path / "evil.pth", tmp_path / "out.ckpt")
    with pytest.raises(CheckpointError, match="refused to load"):
        load_model(tmp_path / "evil.pth")
    assert not marker.exists()
    assert not os.path.exists(tmp_path / "out.ckpt")
