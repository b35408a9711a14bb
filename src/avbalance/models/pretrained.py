"""Pretrained encoder weights from files users give (never downloaded), loaded safely, and frozen
encoders.

Accepted files (``model.encoders.<m>.weights``, alias ``model.pretrained.<m>``): ``.safetensors``;
PyTorch files read with ``weights_only=True`` (a torchvision or timm state dict, a Hugging Face
``state_dict()``, an avbalance checkpoint -- e.g. a unimodal run's ``best.ckpt`` -- or an official
OGM-GE checkpoint). The encoder's keys are found by stripping the usual prefixes (``module.``,
``model.encoders.<m>.``, ``encoders.<m>.``, ``<m>_net.``); a classifier (``fc``, ``head``, ``heads``,
``classifier``) the encoder lacks is ignored. A file saved from a bare library backbone loads into
the wrapper's ``backbone`` (:mod:`.external`). A stem with another number of input channels
(ImageNet RGB for a 1-channel spectrogram encoder) is adapted by averaging over the input channels,
and said so. Any other mismatch is refused with a per-tensor report.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .checkpoint import read_checkpoint, state_mismatches

#: Classifier layers of a whole-network file: dropped unless the encoder has them.
CLASSIFIER_PREFIXES = ("fc.", "head.", "heads.", "classifier.")


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
    return weights


def weights_target(encoder: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """The module ``state`` is for: a library backbone's wrapper holds it as ``backbone``, and a file
    saved from the bare backbone has no ``backbone.`` prefix."""
    backbone = getattr(encoder, "backbone", None)
    if isinstance(backbone, nn.Module) and not any(key.startswith("backbone.") for key in state):
        return backbone
    return encoder


def adapt_stem(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], modality: str) -> list[str]:
    """Average the first convolution over its input channels when only their number differs."""
    stem = next((key for key, value in expected.items() if value.dim() >= 3), None)
    if stem is None or stem not in state:
        return []
    given, wanted = state[stem].shape, expected[stem].shape
    if given[1] == wanted[1] or given[:1] + given[2:] != wanted[:1] + wanted[2:]:
        return []
    state[stem] = state[stem].mean(dim=1, keepdim=True).expand(wanted).clone()
    return [f"{modality}: {stem.removesuffix('.weight')} adapted from {given[1]} averaged input channels"]


def load_pretrained_encoder(encoder: nn.Module, path: str | os.PathLike, modality: str) -> list[str]:
    """Load ``path`` into ``encoder``; returns notes on adaptations. Raises a one-line
    :class:`CheckpointError` naming every mismatching tensor (up to three) otherwise."""
    state = encoder_state(read_weights(path), modality)
    target = weights_target(encoder, state)
    expected = target.state_dict()
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(CLASSIFIER_PREFIXES)}
    notes = adapt_stem(state, expected, modality)
    problems = state_mismatches(expected, state)
    if problems:
        raise CheckpointError(f"{path}: pretrained weights do not fit the {modality} encoder: " + ", ".join(problems))
    target.load_state_dict(state)
    return notes


def keep_in_eval_mode(module: nn.Module, inputs: tuple) -> None:
    """Forward pre-hook of every module of a frozen encoder: whatever ``train()`` calls came before,
    it runs in eval mode, so BatchNorm statistics and dropout stay still."""
    if module.training:
        module.eval()


def freeze_encoder(encoder: nn.Module) -> None:
    """No gradients for ``encoder`` (the optimizer leaves it out) and eval mode in every forward:
    its state dict stays bit for bit as loaded. Every submodule gets the hook, since a model may run
    an encoder's parts without its ``forward`` (MMTM runs the ResNet stages one by one)."""
    encoder.requires_grad_(False)
    for module in encoder.modules():
        module.register_forward_pre_hook(keep_in_eval_mode)
    encoder.eval()
