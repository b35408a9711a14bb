"""``synthetic``: a procedurally generated audio-visual dataset that shows modality imbalance.

Every class ``c`` owns a smooth random *audio pattern* (a ``1 x F x T`` "spectrogram") and a smooth
random *visual pattern* (a ``3 x H x W`` image). A sample of class ``c`` is

* audio  = ``audio_strength``  * pattern_a[c] + N(0, 1) noise, except that for a fraction
  ``audio_dropout`` of the samples the audio carries no class pattern at all (pure noise);
* visual = ``frames`` frames, each ``visual_strength`` * pattern_v[c] shifted by a random offset of
  up to ``max_shift`` pixels + N(0, 1) noise drawn independently per frame;
* flow (only with ``flow_strength`` > 0) = a third modality built like visual with 2 channels
  (``2 x frames x H x W``) and its own class patterns, for methods with more than two modalities.

With the defaults audio is the "easy" modality: a high signal-to-noise pattern at a fixed place,
learned within a few steps. Visual is weaker and spatially jittered, so it needs more training, but
it is the only source of information for the ``audio_dropout`` samples. Trained jointly, the fast
audio branch drives the training loss down and starves the visual branch: the visual branch of
the joint model ends well below a visual-only model trained with the same recipe -- the imbalance
that balancing methods address. Everything is drawn from one seeded generator, so the dataset is
identical on every machine and is built in well under a second.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ..base import DatasetInfo, DatasetSplits, TensorDictDataset
from ..declaration import DatasetDeclaration
from ..registry import register_dataset


def _smooth_patterns(count: int, channels: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Unit-RMS smooth random maps: coarse Gaussian noise upsampled bilinearly."""
    coarse = torch.randn(count, channels, max(2, height // 8), max(2, width // 8), generator=generator)
    maps = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    maps = maps - maps.mean(dim=(1, 2, 3), keepdim=True)
    return maps / maps.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()


def _shifted(patterns: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Roll each pattern by its own random (dy, dx) in [-max_shift, max_shift]."""
    if max_shift == 0:
        return patterns
    out = torch.empty_like(patterns)
    shifts = torch.randint(-max_shift, max_shift + 1, (len(patterns), 2), generator=generator)
    # Group by shift so the loop runs over at most (2*max_shift+1)^2 distinct shifts, not samples.
    keys = (shifts[:, 0] + max_shift) * (2 * max_shift + 1) + (shifts[:, 1] + max_shift)
    for key in keys.unique():
        rows = (keys == key).nonzero().squeeze(1)
        dy, dx = shifts[rows[0]].tolist()
        out[rows] = torch.roll(patterns[rows], shifts=(dy, dx), dims=(-2, -1))
    return out


def make_split(
    count: int,
    audio_patterns: torch.Tensor,
    visual_patterns: torch.Tensor,
    *,
    frames: int,
    audio_strength: float,
    visual_strength: float,
    audio_dropout: float,
    max_shift: int,
    generator: torch.Generator,
    flow_patterns: torch.Tensor | None = None,
    flow_strength: float = 0.0,
) -> TensorDictDataset:
    num_classes = len(audio_patterns)
    labels = torch.randint(0, num_classes, (count,), generator=generator)
    audio_has_signal = (torch.rand(count, generator=generator) >= audio_dropout).float().view(-1, 1, 1, 1)
    audio = audio_strength * audio_has_signal * audio_patterns[labels]
    audio = audio + torch.randn(audio.shape, generator=generator)

    tensors = {"audio": audio, "visual": _clips(visual_patterns[labels], visual_strength, frames, max_shift, generator)}
    if flow_patterns is not None:
        tensors["flow"] = _clips(flow_patterns[labels], flow_strength, frames, max_shift, generator)
    return TensorDictDataset(tensors, labels)


def _clips(
    patterns: torch.Tensor, strength: float, frames: int, max_shift: int, generator: torch.Generator
) -> torch.Tensor:
    """``frames`` jittered, noisy copies of each pattern, stacked as ``(N, C, T, H, W)``."""
    clips = []
    for _ in range(frames):
        frame = strength * _shifted(patterns, max_shift, generator)
        clips.append(frame + torch.randn(frame.shape, generator=generator))
    return torch.stack(clips, dim=2)


def check_sizes(positive: dict[str, int], non_negative: dict[str, int]) -> None:
    """Counts and sizes a tensor is made of: a negative one would fail deep inside torch."""
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    for name, value in non_negative.items():
        if value < 0:
            raise ValueError(f"{name} must be at least 0, got {value}")


def build_synthetic(
    root: str | None = None,
    num_classes: int = 8,
    train_size: int = 2400,
    val_size: int = 0,
    test_size: int = 800,
    freq_bins: int = 32,
    time_steps: int = 32,
    image_size: int = 32,
    frames: int = 2,
    audio_strength: float = 0.6,
    visual_strength: float = 0.1,
    audio_dropout: float = 0.35,
    max_shift: int = 4,
    flow_strength: float = 0.0,
    seed: int = 0,
) -> DatasetSplits:
    """Build the synthetic dataset (``root`` is ignored: nothing is read from disk).

    ``val_size`` > 0 draws a separate validation split; with 0 the data module carves the
    validation split out of ``train`` (``data.val_fraction``).
    """
    if root is not None:  # a --data given by mistake would otherwise be silently ignored
        raise ConfigError(f"{root}: dataset 'synthetic' reads no data folder; drop --data (data.root)")
    check_sizes(
        {
            "num_classes": num_classes,
            "train_size": train_size,
            "freq_bins": freq_bins,
            "time_steps": time_steps,
            "image_size": image_size,
            "frames": frames,
        },
        {"val_size": val_size, "test_size": test_size, "max_shift": max_shift},
    )
    if not 0 <= audio_dropout <= 1:
        raise ValueError(f"audio_dropout must be between 0 and 1, got {audio_dropout}")
    generator = torch.Generator().manual_seed(seed)
    audio_patterns = _smooth_patterns(num_classes, 1, freq_bins, time_steps, generator)
    visual_patterns = _smooth_patterns(num_classes, 3, image_size, image_size, generator)
    flow_patterns = _smooth_patterns(num_classes, 2, image_size, image_size, generator) if flow_strength > 0 else None
    options = dict(
        frames=frames,
        audio_strength=audio_strength,
        visual_strength=visual_strength,
        audio_dropout=audio_dropout,
        max_shift=max_shift,
        generator=generator,
        flow_patterns=flow_patterns,
        flow_strength=flow_strength,
    )
    train = make_split(train_size, audio_patterns, visual_patterns, **options)
    test = make_split(test_size, audio_patterns, visual_patterns, **options)
    val = make_split(val_size, audio_patterns, visual_patterns, **options) if val_size > 0 else None
    info = synthetic_info(num_classes, freq_bins, time_steps, image_size, frames, with_flow=flow_strength > 0)
    return DatasetSplits(info=info, train=train, val=val, test=test)


def synthetic_info(
    num_classes: int, freq_bins: int, time_steps: int, image_size: int, frames: int, with_flow: bool
) -> DatasetInfo:
    shapes = {"audio": (1, freq_bins, time_steps), "visual": (3, frames, image_size, image_size)}
    if with_flow:
        shapes["flow"] = (2, frames, image_size, image_size)
    classes = [f"class_{c}" for c in range(num_classes)]
    return DatasetInfo("synthetic", num_classes, shapes, classes, recommended_encoder={"width": 8, "layers": [1, 1, 1]})


@register_dataset
class Synthetic(DatasetDeclaration):
    """procedurally generated audio-visual classes: a strong audio and a weak, jittered visual modality

    Generated in memory from a seed: nothing to prepare."""

    load = staticmethod(build_synthetic)
