"""Build a model from a plain, serialisable spec (stored in every checkpoint)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .encoders import build_encoder, encoder_kind
from .fusion import build_head
from .mmtm import MMTMModel
from .model import MultimodalModel

#: Model variants a spec can ask for with ``"variant": name`` (options in ``"variant_options"``):
#: a :class:`MultimodalModel` subclass built from the same encoders and head.
MODEL_VARIANTS: dict[str, type[MultimodalModel]] = {"mmtm": MMTMModel}


def model_spec(
    input_shapes: Mapping[str, tuple[int, ...]],
    num_classes: int,
    fusion: str = "concat",
    fusion_options: Mapping[str, Any] | None = None,
    width: int = 64,
    layers: list[int] | tuple[int, ...] = (2, 2, 2, 2),
    encoders: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A spec for :func:`build_model`: one encoder entry per modality (kind, input channels, width,
    layers), the fusion name and options and the class count. ``encoders[m]`` overrides defaults."""
    unknown = [m for m in encoders or {} if m not in input_shapes]
    if unknown:
        raise ConfigError(
            f"model.encoders: no {unknown[0]!r} modality in this model (modalities: {', '.join(input_shapes)})"
        )
    specs = {}
    for modality, shape in input_shapes.items():
        spec = {"kind": encoder_kind(shape), "in_channels": int(shape[0]), "width": width, "layers": list(layers)}
        spec.update((encoders or {}).get(modality, {}))
        specs[modality] = spec
    return {
        "encoders": specs,
        "fusion": fusion,
        "fusion_options": dict(fusion_options or {}),
        "num_classes": int(num_classes),
    }


def build_model(spec: Mapping[str, Any]) -> MultimodalModel:
    """The model of ``spec``; sizes too large for this machine's memory are a one-line ConfigError."""
    try:
        encoders = {m: build_encoder(**encoder_spec) for m, encoder_spec in spec["encoders"].items()}
        dims = {m: encoder.out_dim for m, encoder in encoders.items()}
        head = build_head(spec["fusion"], dims, spec["num_classes"], **spec.get("fusion_options", {}))
    except (MemoryError, RuntimeError) as error:
        if not isinstance(error, MemoryError) and "alloc" not in str(error):
            raise
        sizes = "; ".join(
            f"{m} encoder: width {e.get('width')}, layers {e.get('layers')}" for m, e in spec["encoders"].items()
        )
        raise ConfigError(f"the model is too large to allocate ({sizes}); use a smaller model.width") from None
    variant = spec.get("variant")
    if variant is None:
        return MultimodalModel(encoders, head)
    if variant not in MODEL_VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; choose one of: {', '.join(MODEL_VARIANTS)}")
    return MODEL_VARIANTS[variant](encoders, head, **spec.get("variant_options", {}))
