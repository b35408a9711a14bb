"""Build a model from a plain, serialisable spec (stored in every checkpoint)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from torch import nn

from ..errors import ConfigError
from .encoders import ENCODERS, MODEL_WIDE_OPTIONS, build_encoder, encoder_kind
from .fusion import build_head
from .mmtm import MMTMModel
from .model import MultimodalModel

#: Model variants a spec can ask for with ``"variant": name`` (options in ``"variant_options"``):
#: a :class:`MultimodalModel` subclass built from the same encoders and head.
MODEL_VARIANTS: dict[str, type[MultimodalModel]] = {"mmtm": MMTMModel}

#: Per-modality settings of ``model.encoders.<m>`` that the engine handles (weights to load,
#: freezing, a learning-rate scale): never passed to the encoder.
ENGINE_KEYS = ("weights", "freeze", "lr_scale")


def model_spec(
    input_shapes: Mapping[str, tuple[int, ...]],
    num_classes: int,
    fusion: str = "concat",
    fusion_options: Mapping[str, Any] | None = None,
    width: int = 64,
    layers: list[int] | tuple[int, ...] = (2, 2, 2, 2),
    encoders: Mapping[str, Mapping[str, Any]] | None = None,
    input_kinds: Mapping[str, str] | None = None,
    variable_length: Collection[str] = (),
    vocab_sizes: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """A spec for :func:`build_model`: one encoder entry per modality (kind, input channels, width,
    layers), the fusion name and options and the class count. ``encoders[m]`` (``model.encoders.<m>``)
    names the encoder (``name``, or its alias ``kind``) and sets its options; without a name the
    default of :func:`encoder_kind` for the modality's shape and input kind is used. The modalities
    in ``variable_length`` are recorded so that :func:`build_model` refuses encoders without lengths."""
    unknown = [m for m in encoders or {} if m not in input_shapes]
    if unknown:
        raise ConfigError(
            f"model.encoders: no {unknown[0]!r} modality in this model (modalities: {', '.join(input_shapes)})"
        )
    specs = {
        m: encoder_spec(
            m,
            tuple(int(size) for size in shape),
            (encoders or {}).get(m, {}),
            model_wide={"width": width, "layers": list(layers)},
            input_kind=(input_kinds or {}).get(m),
            variable=m in variable_length,
            vocab_size=(vocab_sizes or {}).get(m),
        )
        for m, shape in input_shapes.items()
    }
    spec = {
        "encoders": specs,
        "fusion": fusion,
        "fusion_options": dict(fusion_options or {}),
        "num_classes": int(num_classes),
    }
    if variable_length:  # left out otherwise: specs of fixed-size data stay as they always were
        spec["variable_length"] = [m for m in input_shapes if m in variable_length]
    return spec


def encoder_spec(
    modality: str,
    shape: tuple[int, ...],
    settings: Mapping[str, Any],
    model_wide: Mapping[str, Any],
    input_kind: str | None = None,
    variable: bool = False,
    vocab_size: int | None = None,
) -> dict[str, Any]:
    """The encoder entry of one modality: ``kind`` (the encoder's name), ``in_channels``, the
    model-wide sizes the encoder uses, ``vocab_size`` when it takes one, then the user's options."""
    options = {key: value for key, value in settings.items() if key not in ENGINE_KEYS}
    name = chosen_encoder(modality, options, shape, input_kind, variable)
    builder = registered_builder(name)
    tokens = takes_tokens(name, vocab_size)
    check_input_shape(modality, name, builder, shape, tokens)
    spec: dict[str, Any] = {"kind": name, "in_channels": input_channels(shape, name, input_kind, vocab_size)}
    spec.update((key, model_wide[key]) for key in getattr(builder, "model_wide_options", MODEL_WIDE_OPTIONS))
    if tokens:
        spec["vocab_size"] = int(vocab_size)
    if builder is not None and "input_shape" in ENCODERS.defaults(name, skip=1):
        spec["input_shape"] = list(shape)
    spec.update(options)
    return spec


def chosen_encoder(
    modality: str, options: dict[str, Any], shape: tuple[int, ...], input_kind: str | None, variable: bool
) -> str:
    """The encoder named in ``options`` (``name``, or ``kind``: both taken out) or the default one."""
    names = {options.pop(key) for key in ("name", "kind") if key in options}
    if len(names) > 1:
        raise ConfigError(f"model.encoders.{modality}: name and kind name different encoders ({sorted(names)})")
    if names:
        return str(names.pop())
    try:
        return encoder_kind(shape, input_kind, variable)
    except ConfigError as error:
        raise ConfigError(f"model.encoders.{modality}.name: modality {modality!r}: {error}; name an encoder") from None


def input_channels(
    shape: Sequence[int], encoder: str, input_kind: str | None = None, vocab_size: int | None = None
) -> int:
    """The ``in_channels`` an encoder is built with for inputs of per-sample ``shape``: 1 for token
    ids it embeds, ``F`` of a ``(T, F)`` sequence (the encoders that read sequences), else the first axis."""
    if takes_tokens(encoder, vocab_size):
        return 1
    if input_kind == "sequence" or getattr(registered_builder(encoder), "input_ndim", None) == 2:
        return int(shape[-1])
    return int(shape[0])


def takes_tokens(encoder: str, vocab_size: int | None) -> bool:
    """Whether ``encoder`` embeds token ids itself: a vocabulary is given and it takes ``vocab_size``."""
    return (
        vocab_size is not None
        and registered_builder(encoder) is not None
        and ("vocab_size" in ENCODERS.defaults(encoder, skip=1))
    )


def registered_builder(name: str) -> Any:
    """The builder registered as ``name``, or None for a name the registry does not hold (then
    building it reports the unknown name)."""
    try:
        return ENCODERS.builder(name)
    except ConfigError:
        return None


def check_input_shape(modality: str, name: str, builder: Any, shape: tuple[int, ...], tokens: bool) -> None:
    """A one-line ConfigError when encoder ``name`` cannot take the modality's per-sample shape."""
    expected = 1 if tokens else getattr(builder, "input_ndim", None)
    if expected is None or len(shape) == expected:
        return
    layout = "(T,) token ids" if tokens else getattr(builder, "input_layout", f"{expected}-D")
    raise ConfigError(
        f"model.encoders.{modality}.name: encoder {name!r} takes per-sample inputs {layout}, "
        f"but modality {modality!r} has shape {shape}"
    )


def build_model(spec: Mapping[str, Any]) -> MultimodalModel:
    """The model of ``spec``; sizes too large for this machine's memory are a one-line ConfigError."""
    try:
        encoders = {m: build_encoder(**entry) for m, entry in spec["encoders"].items()}
        check_lengths_taken(encoders, spec)
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


def check_lengths_taken(encoders: Mapping[str, nn.Module], spec: Mapping[str, Any]) -> None:
    """A one-line ConfigError when a variable-length modality's encoder cannot take lengths."""
    for modality in spec.get("variable_length", []):
        if not getattr(encoders[modality], "takes_lengths", False):
            takers = [name for name in ENCODERS.names() if getattr(ENCODERS.builder(name), "takes_lengths", False)]
            raise ConfigError(
                f"model.encoders.{modality}.name: modality {modality!r} has variable length but encoder "
                f"{spec['encoders'][modality]['kind']!r} takes no lengths; choose one of: {', '.join(takers)}"
            )
