"""Pretrained encoder weights from files users give (never downloaded), loaded safely.

Accepted files: ``.safetensors``; PyTorch files read with ``weights_only=True`` (a torchvision
ResNet-18 state dict, an avbalance checkpoint -- e.g. a unimodal run's ``best.ckpt`` -- or an official
OGM-GE checkpoint). The encoder's keys are found by stripping the usual prefixes (``module.``,
``model.encoders.<m>.``, ``encoders.<m>.``, ``<m>_net.``); a classifier (``fc.*``) is ignored. A stem
with another number of input channels (ImageNet RGB for a 1-channel spectrogram encoder) is adapted
by averaging over the input channels, and said so. Any other mismatch is refused with a per-tensor
report.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .checkpoint import read_checkpoint, state_mismatches

IGNORED_PREFIXES = ("fc.",)


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise CheckpointError(f"{path}: no such weights file")
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            detail = str(error).splitlines()[0][:120]
            raise CheckpointError(f"{path}: not a readable safetensors file ({detail})") from None
    checkpoint = read_checkpoint(path)
    for key in ("state_dict", "model"):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def encoder_state(weights: dict[str, torch.Tensor], modality: str) -> dict[str, torch.Tensor]:
    """The entries of ``weights`` that belong to ``modality``'s encoder, prefixes removed."""
    weights = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in weights.items()}
    for prefix in (f"model.encoders.{modality}.", f"encoders.{modality}.", f"{modality}_net."):
        selected = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        if selected:
            return selected
    return {k: v for k, v in weights.items() if not k.startswith(IGNORED_PREFIXES)}


def load_pretrained_encoder(encoder: nn.Module, path: str | os.PathLike, modality: str) -> list[str]:
    """Load ``path`` into ``encoder``; returns notes on adaptations. Raises a one-line
    :class:`CheckpointError` naming every mismatching tensor (up to three) otherwise."""
    state = encoder_state(read_weights(path), modality)
    expected = encoder.state_dict()
    notes = []
    stem = "conv1.weight"
    if (
        stem in state
        and stem in expected
        and state[stem].shape[1] != expected[stem].shape[1]
        and state[stem].shape[0] == expected[stem].shape[0]
    ):
        given, channels = state[stem].shape[1], expected[stem].shape[1]
        state[stem] = state[stem].mean(dim=1, keepdim=True).repeat(1, channels, 1, 1)
        notes.append(f"{modality}: conv1 adapted from {given} averaged input channels")
    problems = state_mismatches(expected, state)
    if problems:
        raise CheckpointError(f"{path}: pretrained weights do not fit the {modality} encoder: " + ", ".join(problems))
    encoder.load_state_dict(state)
    return notes
