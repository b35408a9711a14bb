"""Modality encoders: each maps one modality's input to a feature vector ``(B, D)``.

The ResNet encoders follow the official OGM-GE backbone layer for layer (torchvision ResNet-18
parameter names and shapes: ``conv1, bn1, layer1..layer4``, no ``fc``), so official checkpoints load
by renaming the ``audio_net.`` / ``visual_net.`` prefixes. ``width`` and ``layers`` give small
variants for CPU work and tests (``width=64, layers=(2, 2, 2, 2)`` is ResNet-18).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1

from ..errors import ConfigError
from ..registry import Registry

#: Encoders by kind: ``builder(in_channels, **options)`` returns a module mapping one modality's
#: input to ``(B, out_dim)`` features and exposing ``out_dim``. Every module of
#: :mod:`avbalance.models` is imported on the first look-up, so an encoder in its own file that
#: registers itself is found.
ENCODERS: Registry[Callable[..., nn.Module]] = Registry("encoder", package="avbalance.models")

#: Sizes every encoder spec carries from the model-wide settings (``model.width``,
#: ``model.layers``); an encoder without such an option ignores them.
MODEL_WIDE_OPTIONS = ("width", "layers")


@ENCODERS.register("resnet")
class ResNetEncoder(nn.Module):
    """A BasicBlock ResNet trunk for 2-D inputs ``(B, C, H, W)`` -> features ``(B, D)``.

    ``D = width * 2 ** (len(layers) - 1)`` (512 for ResNet-18).
    """

    #: Per-sample input dimensions, checked against the data's shape when a model spec is made.
    input_ndim = 3
    input_layout = "(C, H, W)"

    def __init__(self, in_channels: int = 1, width: int = 64, layers: Sequence[int] = (2, 2, 2, 2)):
        super().__init__()
        if not layers:
            raise ValueError("a ResNet encoder needs at least one stage (layers=[...])")
        if width < 1:
            raise ValueError(f"width must be at least 1, got {width}")
        if any(blocks < 1 for blocks in layers):
            raise ValueError(f"every entry of layers must be at least 1, got {list(layers)}")
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = width
        for stage, blocks in enumerate(layers):
            planes = width * 2**stage
            stride = 1 if stage == 0 else 2
            setattr(self, f"layer{stage + 1}", self._make_stage(channels, planes, blocks, stride))
            channels = planes
        self.num_stages = len(layers)
        self.out_dim = channels
        self._init_weights()

    @staticmethod
    def _make_stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or inplanes != planes:
            downsample = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
        stage = [BasicBlock(inplanes, planes, stride, downsample)]
        stage += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self) -> None:
        # The official OGM-GE scripts' effective initialisation: Kaiming convs, BN weight 1 / bias 0.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1, bn1, then max-pool before ReLU. The official (torchvision) order is ReLU then
        max-pool; the two commute, because ReLU is monotone (the max of the ReLUs is the ReLU of the
        max), and give the same values and gradients bit for bit, while ReLU and its backward work
        on a quarter of the elements."""
        return self.relu(self.maxpool(self.bn1(self.conv1(x))))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(-2, -1))


def fold_frames(clips: torch.Tensor) -> torch.Tensor:
    """Clips ``(B, C, T, H, W)`` as frames ``(B * T, C, H, W)``, each clip's frames in a row."""
    batch, channels, frames, height, width = clips.shape
    return clips.transpose(1, 2).reshape(batch * frames, channels, height, width)


@ENCODERS.register("clip")
class ClipEncoder(ResNetEncoder):
    """Clips ``(B, C, T, H, W)`` -> ``(B, D)``: frames are folded into the batch, encoded by one 2-D
    ResNet, and average-pooled over time and space (the official OGM-GE visual path)."""

    input_ndim = 4
    input_layout = "(C, T, H, W)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, frames = x.shape[:3]
        maps = self.feature_map(fold_frames(x))  # (B*T, D, h, w)
        return maps.view(batch, frames, *maps.shape[1:]).mean(dim=(1, 3, 4))


@ENCODERS.register("mlp")
class MLPEncoder(nn.Module):
    """Feature vectors ``(B, D_in)`` -> ``(B, D)`` through a small MLP (``D = out_dim``, by default
    the hidden width)."""

    input_ndim = 1
    input_layout = "(D,)"

    def __init__(self, in_channels: int, hidden: int = 256, out_dim: int | None = None, depth: int = 2):
        super().__init__()
        out_dim = out_dim or hidden
        layers: list[nn.Module] = []
        features = in_channels
        for _ in range(depth - 1):
            layers += [nn.Linear(features, hidden), nn.ReLU(inplace=True)]
            features = hidden
        layers.append(nn.Linear(features, out_dim))
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


#: The default encoder of each input kind (``DatasetInfo.input_kinds``) that has one whatever its shape.
KIND_DEFAULTS = {"text": "transformer", "sequence": "gru"}
#: The default encoder by the number of per-sample dimensions, for every other input.
NDIM_DEFAULTS = {1: "mlp", 2: "gru", 3: "resnet", 4: "clip"}


def encoder_kind(input_shape: Sequence[int], kind: str | None = None, variable_length: bool = False) -> str:
    """The default encoder for a per-sample input shape and input kind: ``text`` -> ``transformer``,
    ``sequence`` or ``(T, F)`` -> ``gru``, a variable-length ``frame_stack`` -> ``framestack``, else
    ``(D,)`` -> ``mlp``, ``(C, H, W)`` -> ``resnet``, ``(C, T, H, W)`` -> ``clip``. No default: a
    one-line ConfigError."""
    if kind in KIND_DEFAULTS:
        return KIND_DEFAULTS[kind]
    if variable_length and len(input_shape) == 4:  # a frame stack of varying length
        return "framestack"
    if len(input_shape) not in NDIM_DEFAULTS:
        raise ConfigError(f"no default encoder for inputs of per-sample shape {tuple(input_shape)}")
    return NDIM_DEFAULTS[len(input_shape)]


def build_encoder(kind: str, in_channels: int, **options: Any) -> nn.Module:
    """Build the encoder ``kind`` (see :data:`ENCODERS`) for inputs with ``in_channels`` channels
    (features, for ``mlp``); model-wide sizes the encoder does not take are left out."""
    accepted = ENCODERS.defaults(kind, skip=1)
    options = {key: value for key, value in options.items() if key in accepted or key not in MODEL_WIDE_OPTIONS}
    return ENCODERS.build(kind, in_channels, **options)
