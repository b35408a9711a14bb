"""Robustness: fused accuracy when a modality is missing or corrupted (``avbalance test --robustness``).

**Missing modality.** Removed exactly as for the Shapley values (:mod:`.shapley`): the encoders run
once on the clean split and the modality's encoder feature is replaced by a reference feature
before the fusion head is evaluated again -- the zero vector (``removal="zero"``, default) or the
modality's mean feature over the training split (``"mean"``). ``missing[m]`` is therefore the
coalition accuracy ``v(all - {m})`` of the Shapley analysis on the same split.

**Corruption**, applied to one modality's *input* at a time (the other modalities stay clean), the
encoders rerun on the corrupted input:

* ``noise`` (every modality): additive Gaussian noise at a signal-to-noise ratio in dB relative to
  each sample's own power, ``sigma^2 = mean(x^2) / 10^(SNR/10)`` (levels 20, 10, 5, 0, -5 dB); on
  spectrograms, video frames and feature vectors alike;
* ``frame_drop`` (clips ``(C, T, H, W)``): each frame after the first is dropped with probability
  ``p`` (levels 0.25, 0.5, 0.75) and replaced by the last kept frame, as a player freezes on lost
  frames;
* ``blur`` (clips, and the 2-D inputs of a modality named ``visual``: images): a separable Gaussian
  blur over height and width with standard deviation ``sigma`` pixels (levels 0.5, 1, 2), kernel
  radius ``ceil(3 sigma)``, edges replicated.

Every draw comes from a generator seeded with ``seed`` and the position of the (modality,
corruption, level) in the evaluation, and batches are read in dataset order, so a result repeats
exactly. Results are fused accuracies in [0, 1]::

    {"split", "removal", "seed", "clean": acc, "missing": {m: acc},
     "noise": {m: {"20": acc, ...}}, "frame_drop": {m: {"0.25": acc, ...}}, "blur": {m: {"0.5": acc, ...}},
     "units": {...}}
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..data.collate import collate_samples
from ..models.model import MultimodalModel, lengths_of
from .features import SplitFeatures, extract_features
from .runs import LoadedRun, eval_batch_size, pick_device, run_folder_of, split_dataset
from .shapley import check_removal, coalition_accuracy, reference_features

ROBUSTNESS_FILE = "robustness.json"  # in a run folder: written by ``avbalance test --robustness``
NOISE_SNR_DB = (20.0, 10.0, 5.0, 0.0, -5.0)
FRAME_DROP_RATES = (0.25, 0.5, 0.75)
BLUR_SIGMAS = (0.5, 1.0, 2.0)
UNITS = {
    "noise": "SNR (dB) relative to each sample's power",
    "frame_drop": "probability of dropping a frame",
    "blur": "Gaussian blur sigma (pixels)",
}
CLIP_DIMS = 5  # a batch of clips: (N, C, T, H, W)
IMAGE_DIMS = 4  # a batch of 2-D inputs: (N, C, F, T) or images (N, C, H, W)


def add_noise(x: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    """``x + n`` with ``n ~ N(0, mean(x^2) / 10^(level/10))`` per sample, ``level`` the SNR in dB (a
    silent sample stays silent)."""
    power = x.pow(2).flatten(1).mean(dim=1)
    sigma = torch.sqrt(power / 10 ** (level / 10)).view(-1, *([1] * (x.dim() - 1)))
    return x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)


def drop_frames(clips: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    """Clips ``(N, C, T, H, W)`` whose frames, dropped with probability ``level``, repeat the last
    kept frame (the first is always kept)."""
    count, frames = clips.shape[0], clips.shape[2]
    kept = torch.rand(count, frames, generator=generator) >= level
    kept[:, 0] = True
    positions = torch.arange(frames).expand(count, frames)
    source = torch.where(kept, positions, torch.zeros_like(positions)).cummax(dim=1).values
    index = source.view(count, 1, frames, 1, 1).expand_as(clips)
    return clips.gather(2, index)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def blur(x: torch.Tensor, level: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian blur with standard deviation ``level`` pixels over the last two dimensions (height,
    width) of any batch, edges replicated (deterministic: ``generator`` is not used)."""
    kernel = gaussian_kernel(level).to(x.dtype)
    radius = len(kernel) // 2
    planes = x.reshape(-1, 1, *x.shape[-2:])
    planes = F.conv2d(F.pad(planes, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    planes = F.conv2d(F.pad(planes, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return planes.reshape(x.shape)


CORRUPTIONS: dict[str, tuple[Callable[..., torch.Tensor], Sequence[float]]] = {
    "noise": (add_noise, NOISE_SNR_DB),
    "frame_drop": (drop_frames, FRAME_DROP_RATES),
    "blur": (blur, BLUR_SIGMAS),
}


def corruptions_for(modality: str, sample_dims: int) -> list[str]:
    """The corruptions that apply to a modality with inputs of ``sample_dims`` dimensions per sample."""
    names = ["noise"]
    if sample_dims + 1 == CLIP_DIMS:
        names += ["frame_drop", "blur"]
    elif sample_dims + 1 == IMAGE_DIMS and modality == "visual":
        names.append("blur")
    return names


def level_key(level: float) -> str:
    return f"{level:g}"


@torch.no_grad()
def corrupted_accuracy(
    model: MultimodalModel,
    loader: DataLoader,
    modality: str,
    corrupt: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
) -> float:
    """Fused accuracy over ``loader`` with ``corrupt`` applied (on CPU) to ``modality``'s inputs."""
    correct = count = 0
    for batch in loader:
        inputs = {m: (corrupt(batch[m]) if m == modality else batch[m]).to(device) for m in model.modalities}
        inputs.update((key, lengths.to(device)) for key, lengths in lengths_of(batch, model.modalities).items())
        predictions = model(inputs).logits.argmax(dim=1).cpu()
        correct += int((predictions == batch["label"]).sum())
        count += len(batch["label"])
    return correct / max(count, 1)


def missing_accuracy(
    model: MultimodalModel, features: SplitFeatures, removal: str = "zero", train_features: SplitFeatures | None = None
) -> dict[str, float]:
    """``{m: fused accuracy with m removed}`` by the Shapley analysis's removal rule."""
    reference = reference_features(removal, features, train_features)
    everyone = frozenset(features.features)
    return {m: coalition_accuracy(model.head, features, everyone - {m}, reference) for m in features.features}


def corruption_curves(
    model: MultimodalModel, dataset: Dataset, batch_size: int, device: torch.device, seed: int = 0
) -> dict[str, dict[str, dict[str, float]]]:
    """``{corruption: {modality: {level: acc}}}`` for every corruption that applies to each modality."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_samples)
    sample = dataset[0]
    curves: dict[str, dict[str, dict[str, float]]] = {name: {} for name in CORRUPTIONS}
    ordinal = 0
    for modality in model.modalities:
        if not sample[modality].is_floating_point():  # token ids: no signal to add noise to
            continue
        for name in corruptions_for(modality, sample[modality].dim()):
            function, levels = CORRUPTIONS[name]
            for level in levels:
                generator = torch.Generator().manual_seed(seed * 1_000_003 + ordinal)
                ordinal += 1
                corrupt = partial(function, level=level, generator=generator)
                accuracy = corrupted_accuracy(model, loader, modality, corrupt, device)
                curves[name].setdefault(modality, {})[level_key(level)] = accuracy
    return {name: by_modality for name, by_modality in curves.items() if by_modality}


def robustness(
    model: MultimodalModel,
    dataset: Dataset,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    removal: str = "zero",
    train_dataset: Dataset | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Clean, missing-modality and corrupted fused accuracies of ``model`` on ``dataset`` (see the module
    docstring); ``train_dataset`` gives the mean features of the ``mean`` removal rule."""
    check_removal(removal)
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    features = extract_features(model, dataset, batch_size, device)
    train_features = extract_features(model, train_dataset, batch_size, device) if removal == "mean" else None
    everyone = frozenset(features.features)
    clean = coalition_accuracy(model.head, features, everyone, reference_features("zero", features))
    result = {
        "removal": removal,
        "seed": seed,
        "clean": clean,
        "missing": missing_accuracy(model, features, removal, train_features),
        **corruption_curves(model, dataset, batch_size, device, seed),
        "units": dict(UNITS),
    }
    model.train(was_training)
    return result


def robustness_run(
    run: LoadedRun, split: str = "test", removal: str = "zero", accelerator: str = "auto", seed: int = 0
) -> dict[str, Any]:
    """:func:`robustness` of a loaded run on one split."""
    dataset = split_dataset(run.datamodule, split)
    train = run.datamodule.train_set if removal == "mean" else None
    result = robustness(run.model, dataset, eval_batch_size(run.config), pick_device(accelerator), removal, train, seed)
    return {"split": split, **result}


def missing_modality_run(run: LoadedRun, split: str = "test", removal: str = "zero") -> dict[str, float]:
    """Only the missing-modality accuracies (one pass of the encoders): cheap enough after every run.
    Empty for a one-modality model (removing its input leaves nothing to compare)."""
    check_removal(removal)
    if len(run.model.modalities) < 2:
        return {}
    device, size = pick_device("auto"), eval_batch_size(run.config)
    features = extract_features(run.model, split_dataset(run.datamodule, split), size, device)
    train = extract_features(run.model, run.datamodule.train_set, size, device) if removal == "mean" else None
    return missing_accuracy(run.model, features, removal, train)


def save_robustness(result: dict[str, Any], checkpoint: Path) -> Path:
    """Write ``robustness.json`` into the run folder of ``checkpoint`` (read by ``avbalance report``)."""
    path = run_folder_of(checkpoint) / ROBUSTNESS_FILE
    path.write_text(json.dumps(result, indent=2))
    return path


def print_robustness(result: dict[str, Any]) -> None:
    """The clean, missing and corrupted accuracies as console tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"robustness on {result.get('split', '?')}: fused acc (clean {result['clean']:.4f})")
    table.add_column("modality")
    table.add_column(f"missing ({result['removal']})", justify="right")
    for modality, accuracy in result["missing"].items():
        table.add_row(modality, f"{accuracy:.4f}")
    console.print(table)
    for name in CORRUPTIONS:
        for modality, curve in result.get(name, {}).items():
            table = Table(title=f"{name} on {modality} ({UNITS[name]})")
            for level in curve:
                table.add_column(level, justify="right")
            table.add_row(*(f"{accuracy:.4f}" for accuracy in curve.values()))
            console.print(table)
