"""Convert official OGM-GE / MMCosine checkpoints into avbalance checkpoints.

Official models are ``AVClassifier``s with ``audio_net`` and ``visual_net`` ResNets and a
``fusion_module`` (possibly saved from ``nn.DataParallel``, hence a ``module.`` prefix), stored either
as a bare state dict or under the ``model`` key of a training checkpoint. The fusion is inferred
from the fusion module's parameter names and shapes:

* ``fc_out`` only -> ``concat`` (``cosine`` for MMCosine checkpoints: pass ``--fusion cosine``)
* ``fc_x, fc_y`` -> ``sum``                     * ``fc, fc_out`` -> ``film``
* ``fc_x, fc_y, fc_out`` -> ``gated`` (``fc_out`` input = hidden), ``gated_sym`` (= 2 x hidden)
  or ``film_sym`` (``fc_x`` outputs 2 x the other modality's size)

Which modality conditions (``film``) or gates (``gated``) is not stored in official checkpoints;
the official default (audio) is assumed unless ``condition`` / ``gate`` is given.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import CheckpointError
from .build import build_model
from .checkpoint import load_state, read_checkpoint, save_model_checkpoint

OFFICIAL_ENCODERS = {"audio_net": "audio", "visual_net": "visual"}
ENCODER_KIND = {"audio": "resnet", "visual": "clip"}


def _strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def _official_state(checkpoint: Mapping[str, Any], path) -> dict[str, torch.Tensor]:
    state = checkpoint.get("model", checkpoint.get("state_dict", checkpoint))
    if not isinstance(state, Mapping) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no model state dict found (expected a 'model' entry or a bare state dict)")
    state = _strip_prefix(state)
    if not any(k.startswith("fusion_module.") for k in state):
        raise CheckpointError(f"{path}: no 'fusion_module.*' parameters: not an official OGM-GE/MMCosine model")
    return state


def _encoder_spec(state: Mapping[str, torch.Tensor], prefix: str, kind: str) -> dict[str, Any]:
    stem = state[f"{prefix}.conv1.weight"]
    stages: dict[int, int] = {}
    for key in state:
        match = re.match(rf"{re.escape(prefix)}\.layer(\d+)\.(\d+)\.", key)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            stages[stage] = max(stages.get(stage, 0), block + 1)
    layers = [stages[s] for s in sorted(stages)]
    return {"kind": kind, "in_channels": int(stem.shape[1]), "width": int(stem.shape[0]), "layers": layers}


def infer_fusion(fusion_state: Mapping[str, torch.Tensor], dims: Mapping[str, int]) -> str:
    names = {k.split(".")[0] for k in fusion_state}
    first, second = dims["audio"], dims["visual"]

    def out_in(name: str) -> tuple[int, int]:
        return tuple(fusion_state[f"{name}.weight"].shape)

    if names == {"fc_out"}:
        return "concat"
    if names == {"fc_x", "fc_y"}:
        return "sum"
    if names == {"fc", "fc_out"}:
        return "film"
    if names == {"fc_x", "fc_y", "fc_out"}:
        (x_out, _), (y_out, _), (_, head_in) = out_in("fc_x"), out_in("fc_y"), out_in("fc_out")
        if x_out == 2 * second and y_out == 2 * first and head_in == first + second:
            return "film_sym"
        if head_in == x_out + y_out:
            return "gated_sym"
        if head_in == x_out == y_out:
            return "gated"
    raise CheckpointError(f"cannot infer the fusion from parameters {sorted(fusion_state)}; pass --fusion")


def _head_state(fusion: str, fusion_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if fusion == "sum":  # official fc_x / fc_y are audio's / visual's own linear layers
        rename = {"fc_x": "fc.audio", "fc_y": "fc.visual"}
        return {rename[k.split(".")[0]] + k[4:]: v for k, v in fusion_state.items()}
    return dict(fusion_state)


def convert_official(
    path: str | os.PathLike, fusion: str | None = None, num_classes: int | None = None, **fusion_options: Any
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Return ``(model_spec, state_dict)`` for an official checkpoint file."""
    state = _official_state(read_checkpoint(path), path)
    encoders = {}
    new_state: dict[str, torch.Tensor] = {}
    for prefix, modality in OFFICIAL_ENCODERS.items():
        if f"{prefix}.conv1.weight" not in state:
            raise CheckpointError(f"{path}: no '{prefix}.conv1.weight': not an official audio-visual ResNet model")
        encoders[modality] = _encoder_spec(state, prefix, ENCODER_KIND[modality])
        new_state.update(
            {f"encoders.{modality}." + k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
        )
    dims = {m: spec["width"] * 2 ** (len(spec["layers"]) - 1) for m, spec in encoders.items()}
    fusion_state = {k[len("fusion_module.") :]: v for k, v in state.items() if k.startswith("fusion_module.")}
    inferred = infer_fusion(fusion_state, dims)
    fusion = fusion or inferred
    if fusion == "cosine" and inferred != "concat" or fusion != "cosine" and fusion != inferred:
        raise CheckpointError(f"{path}: --fusion {fusion} does not match the checkpoint's {inferred} fusion parameters")
    head_state = _head_state(inferred, fusion_state)
    new_state.update({"head." + k: v for k, v in head_state.items()})
    out_key = "fc.audio.weight" if inferred == "sum" else "fc_out.weight"
    found_classes = int(head_state[out_key].shape[0])
    if num_classes is not None and num_classes != found_classes:
        raise CheckpointError(
            f"{path}: --num-classes {num_classes} but the checkpoint's head has {found_classes} classes"
        )
    if fusion == "gated" or fusion == "gated_sym":
        fusion_options.setdefault("hidden", int(fusion_state["fc_x.weight"].shape[0]))
    spec = {"encoders": encoders, "fusion": fusion, "fusion_options": fusion_options, "num_classes": found_classes}
    return spec, new_state


def convert_checkpoint(
    source: str | os.PathLike,
    target: str | os.PathLike,
    fusion: str | None = None,
    num_classes: int | None = None,
    **fusion_options: Any,
) -> dict[str, Any]:
    """Convert ``source`` (official) into the avbalance checkpoint ``target``; returns the model spec."""
    spec, state = convert_official(source, fusion, num_classes, **fusion_options)
    model = build_model(spec)
    load_state(model, state, source)  # fails here, with a per-tensor report, if anything does not fit
    save_model_checkpoint(spec, model.state_dict(), target, converted_from=str(source))
    return spec
