"""Encoders from other libraries and from users' own code, chosen by a prefixed name in
``model.encoders.<m>.name``:

* ``timm:<architecture>`` -- ``timm.create_model(architecture, pretrained=False, num_classes=0,
  in_chans=<the data's channels>, **options)``: pooled features, ``out_dim = num_features``;
* ``torchvision:<name>`` -- ``torchvision.models.get_model(name, weights=None, **options)`` with its
  first convolution adapted to the data's channels and its classifier's last linear layer removed;
* ``hf:<local folder>`` -- ``transformers.AutoModel.from_pretrained(folder, local_files_only=True)``,
  padded inputs masked by ``<m>_lengths`` and the last hidden states pooled (``pool``: mean or cls);
* ``python:<module>:<callable>`` -- ``callable(input_shape, **options)`` from a module on
  ``sys.path`` or a ``.py`` file, returning an ``nn.Module`` with an int ``out_dim``.

Nothing is downloaded: no pretrained flag is ever set and Hugging Face folders are read with
``local_files_only=True``; weights come from ``model.encoders.<m>.weights`` (:mod:`.pretrained`).
Image backbones take ``(B, C, H, W)`` inputs; a clip ``(B, C, T, H, W)`` is folded over time into
the batch and its frames' features averaged, as :class:`~avbalance.models.encoders.ClipEncoder`
does. The names resolve through :data:`~avbalance.models.encoders.ENCODERS`, so a checkpoint's
spec (``kind`` = the full name) rebuilds the model.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torchvision
from torch import nn

from ..errors import ConfigError
from .encoders import ENCODERS, MODEL_WIDE_OPTIONS, fold_frames

NAME_FORMS = "timm:<architecture>, torchvision:<name>, hf:<model folder> or python:<module>:<callable>"


class EncoderError(ConfigError):
    """A problem with an encoder's name or options. ``encoder`` is the full name, ``option`` the
    setting concerned: ``"name"``, an option's key, or None for the options as a whole."""

    def __init__(self, encoder: str, message: str, option: str | None = "name"):
        super().__init__(f"encoder {encoder!r}: {message}")
        self.encoder, self.option = encoder, option

    def at(self, modality: str) -> ConfigError:
        """The same message, led by the config key it concerns (``model.encoders.<m>.<option>``)."""
        key = f"model.encoders.{modality}" + (f".{self.option}" if self.option else "")
        return ConfigError(f"{key}: {self}")


# -- wrappers --------------------------------------------------------------------------------------


class ImageBackbone(nn.Module):
    """A backbone mapping ``(B, C, H, W)`` images to pooled ``(B, out_dim)`` features; a clip
    ``(B, C, T, H, W)`` is folded over time into the batch and the frames' features averaged, unless
    the backbone convolves over time itself (``folds_time=False``: torchvision's video models)."""

    def __init__(self, backbone: nn.Module, out_dim: int, folds_time: bool = True):
        super().__init__()
        self.backbone, self.out_dim, self.folds_time = backbone, int(out_dim), folds_time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or not self.folds_time:
            return self.backbone(x).flatten(1)
        batch, _, frames = x.shape[:3]
        return self.backbone(fold_frames(x)).reshape(batch, frames, -1).mean(dim=1)


class PretrainedTransformer(nn.Module):
    """A Hugging Face model: ``(B, T)`` token ids (or the model's own main input, e.g. a raw waveform
    for ``input_values`` models) with an attention mask from ``lengths``; the last hidden states are
    pooled by their masked mean (``pool="mean"``) or the first position (``pool="cls"``)."""

    takes_lengths = True

    def __init__(self, backbone: nn.Module, pool: str = "mean"):
        super().__init__()
        self.backbone, self.pool = backbone, pool
        self.out_dim = int(backbone.config.hidden_size)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.backbone.main_input_name == "input_values" and x.dim() == 3 and x.shape[-1] == 1:
            x = x.squeeze(-1)  # a waveform served as a (T, 1) sequence: the raw samples the model takes
        inputs = {self.backbone.main_input_name: x}
        if lengths is not None:
            inputs["attention_mask"] = valid_steps(lengths, x.shape[1]).long()
        hidden = self.backbone(**inputs).last_hidden_state  # (B, T_out, D)
        if self.pool == "cls":
            return hidden[:, 0]
        if lengths is None:
            return hidden.mean(dim=1)
        steps = hidden.shape[1]
        # Models that downsample (audio) give fewer output steps: the valid share is kept.
        valid = lengths if steps == x.shape[1] else torch.ceil(lengths * steps / x.shape[1]).long()
        mask = valid_steps(valid, steps).unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def valid_steps(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """``(B, steps)`` True where a step is within its sample's length."""
    return torch.arange(steps, device=lengths.device) < lengths.to(torch.long).unsqueeze(1)


# -- building ---------------------------------------------------------------------------------------


def import_extra(module: str, extra: str, encoder: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        message = f"needs {module}, which is not installed; install the extra: pip install 'avbalance[{extra}]'"
        raise EncoderError(encoder, message) from None


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def close_names(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    return f"; close names: {', '.join(close)}" if close else ""


def construct(encoder: str, make: Callable[[], nn.Module], options: dict[str, Any]) -> nn.Module:
    """``make()``, its refusals of the options turned into :class:`EncoderError` naming the option."""
    try:
        return make()
    except (TypeError, ValueError, AssertionError) as error:
        text = first_line(error)
        named = [key for key in options if f"'{key}'" in text]
        if isinstance(error, TypeError) and "unexpected keyword" in text and named:
            raise EncoderError(encoder, f"takes no option {named[0]!r} ({text})", option=named[0]) from None
        raise EncoderError(encoder, f"cannot be built with options {options} ({text})", option=None) from None


def timm_encoder(encoder: str, architecture: str, in_channels: int, options: dict[str, Any]) -> nn.Module:
    timm = import_extra("timm", "timm", encoder)
    if not timm.is_model(architecture):
        close = close_names(architecture, timm.list_models())
        raise EncoderError(encoder, f"unknown timm architecture {architecture!r}{close}")

    def make() -> nn.Module:
        return timm.create_model(architecture, pretrained=False, num_classes=0, in_chans=in_channels, **options)

    backbone = construct(encoder, make, options)
    return ImageBackbone(backbone, backbone.num_features)


CLASSIFIER_ATTRIBUTES = ("fc", "classifier", "heads", "head")


def first_convolution(model: nn.Module) -> tuple[str, nn.Module] | None:
    for path, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            return path, module
    return None


def adapt_first_convolution(model: nn.Module, in_channels: int) -> nn.Module | None:
    """Replace the first convolution by one taking ``in_channels`` inputs (same sizes otherwise)."""
    found = first_convolution(model)
    if found is None:
        return None
    path, conv = found
    if conv.in_channels == in_channels:
        return conv
    replacement = type(conv)(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    parent, _, attribute = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attribute, replacement)
    return replacement


def remove_classifier(encoder: str, model: nn.Module) -> int:
    """Replace the last linear layer of the model's classifier by ``Identity``; its input size."""
    for attribute in CLASSIFIER_ATTRIBUTES:
        classifier = getattr(model, attribute, None)
        if not isinstance(classifier, nn.Module):
            continue
        linears = [(path, m) for path, m in classifier.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            continue
        path, linear = linears[-1]
        parent, _, name = f"{attribute}.{path}".rstrip(".").rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, nn.Identity())
        return linear.in_features
    architecture = encoder.partition(":")[2]
    raise EncoderError(
        encoder,
        f"the classifier of torchvision architecture {architecture!r} cannot be found "
        "(no fc, classifier, heads or head ending in a Linear layer); wrap it with python:<module>:<callable>",
    )


def torchvision_encoder(encoder: str, architecture: str, in_channels: int, options: dict[str, Any]) -> nn.Module:
    names = torchvision.models.list_models()
    if architecture not in names:
        raise EncoderError(encoder, f"unknown torchvision model {architecture!r}{close_names(architecture, names)}")
    model = construct(encoder, lambda: torchvision.models.get_model(architecture, weights=None, **options), options)
    stem = adapt_first_convolution(model, in_channels)
    out_dim = remove_classifier(encoder, model)
    return ImageBackbone(model, out_dim, folds_time=not isinstance(stem, nn.Conv3d))


HF_POOLS = ("mean", "cls")


def hf_encoder(encoder: str, folder: str, options: dict[str, Any], vocab_size: int | None) -> nn.Module:
    pool = options.pop("pool", "mean")
    if options:
        key = next(iter(options))
        raise EncoderError(encoder, f"takes no option {key!r}; its options are: pool", option=key)
    if pool not in HF_POOLS:
        raise EncoderError(encoder, f"pool must be one of {', '.join(HF_POOLS)}, got {pool!r}", option="pool")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise EncoderError(encoder, f"{folder}: no such model folder")
    if not (path / "config.json").is_file():
        raise EncoderError(encoder, f"{folder}: not a Hugging Face model folder (no config.json)")
    transformers = import_extra("transformers", "hf", encoder)
    try:
        model = transformers.AutoModel.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise EncoderError(encoder, f"{folder}: cannot load the model ({first_line(error)})") from None
    known = getattr(model.config, "vocab_size", None)
    if vocab_size is not None and known is not None and vocab_size > known:
        raise EncoderError(
            encoder,
            f"the data has {vocab_size} token ids but the model's vocabulary has {known}; "
            f"tokenize the text with this model's tokenizer",
        )
    return PretrainedTransformer(model, pool)


def import_user_module(encoder: str, module: str) -> ModuleType:
    """A dotted module on ``sys.path`` or a ``.py`` file; any failure is one line."""
    try:
        if not module.endswith(".py"):
            return importlib.import_module(module)
        path = Path(module).expanduser().resolve()
        if not path.is_file():
            raise EncoderError(encoder, f"{module}: no such Python file")
        unique = hashlib.sha1(str(path).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(f"avbalance_user_{path.stem}_{unique}", path)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = loaded  # pickling and dataclasses look modules up by name
        spec.loader.exec_module(loaded)
        return loaded
    except EncoderError:
        raise
    except Exception as error:  # the user's module may fail in any way on import
        raise EncoderError(encoder, f"cannot import {module!r} ({type(error).__name__}: {first_line(error)})") from None


def accepts(function: Callable[..., Any], keyword: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return keyword in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def python_encoder(
    encoder: str, target: str, input_shape: tuple[int, ...], options: dict[str, Any], vocab_size: int | None
) -> nn.Module:
    module_name, _, attribute = target.rpartition(":")
    if not module_name or not attribute:
        raise EncoderError(encoder, "give python:<module>:<callable> (a dotted module or a .py file, then a name)")
    module = import_user_module(encoder, module_name)
    builder = getattr(module, attribute, None)
    if builder is None:
        raise EncoderError(encoder, f"module {module_name!r} has no attribute {attribute!r}")
    if not callable(builder):
        raise EncoderError(encoder, f"{attribute!r} of {module_name!r} is a {type(builder).__name__}, not callable")
    extra = {"vocab_size": vocab_size} if vocab_size is not None and accepts(builder, "vocab_size") else {}
    result = construct(encoder, lambda: builder(tuple(input_shape), **options, **extra), options)
    if not isinstance(result, nn.Module):
        raise EncoderError(encoder, f"{attribute}(...) returned a {type(result).__name__}, not a torch.nn.Module")
    out_dim = getattr(result, "out_dim", None)
    if isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1:
        raise EncoderError(
            encoder, f"the module {attribute}(...) returned has no positive int out_dim (got {out_dim!r})"
        )
    return result


SOURCES = ("timm", "torchvision", "hf", "python")


def check_input_shape(encoder: str, backbone: nn.Module, shape: tuple[int, ...]) -> None:
    """One zero sample through ``backbone`` (eval mode, no gradients: nothing changes), so that an
    input it cannot take (a ViT's fixed image size) is a one-line error now, not a traceback later."""
    training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            backbone(torch.zeros(1, *shape))
    except (RuntimeError, AssertionError, ValueError) as error:
        raise EncoderError(
            encoder,
            f"cannot take inputs of per-sample shape {shape} ({first_line(error)}); set its size options "
            f"(e.g. img_size for a ViT)",
            option=None,
        ) from None
    finally:
        backbone.train(training)


def build_external_encoder(
    encoder: str,
    in_channels: int,
    input_shape: Sequence[int] | None = None,
    vocab_size: int | None = None,
    **options: Any,
) -> nn.Module:
    """The encoder of a prefixed name (see the module docstring) for inputs of ``in_channels``
    channels and per-sample shape ``input_shape``; ``vocab_size`` for text."""
    source, _, target = encoder.partition(":")
    shape = tuple(int(size) for size in input_shape) if input_shape is not None else (int(in_channels),)
    if source in ("timm", "torchvision"):
        build = timm_encoder if source == "timm" else torchvision_encoder
        backbone = build(encoder, target, int(in_channels), options)
        if input_shape is not None:
            check_input_shape(encoder, backbone, shape)
        return backbone
    if source == "hf":
        return hf_encoder(encoder, target, options, vocab_size)
    return python_encoder(encoder, target, shape, options, vocab_size)


def resolve_external(name: str) -> Callable[..., nn.Module] | None:
    """The builder of a prefixed encoder name; None for a name without a prefix."""
    source, separator, target = name.partition(":")
    if not separator:
        return None
    if source not in SOURCES:
        raise EncoderError(name, f"unknown encoder source {source!r}; use {NAME_FORMS}")
    if not target:
        raise EncoderError(name, f"nothing after {source + ':'!r}; use {NAME_FORMS}")
    return functools.partial(build_external_encoder, name)


def is_external(name: str) -> bool:
    return ":" in name


#: Keys of ``model.encoders.<m>`` that are not options of the encoder itself (or are filled in by
#: the engine, and set by the user only for encoders that take them).
NOT_OPTIONS = ("name", "kind", "weights", "freeze", "lr_scale", *MODEL_WIDE_OPTIONS)
FILLED_IN = ("input_shape", "vocab_size")


def check_encoder_options(settings: Mapping[str, Mapping[str, Any]], spec: Mapping[str, Any]) -> None:
    """Before anything is built: every key of ``model.encoders.<m>`` is an option that the
    registered encoder of modality m takes (a one-line error naming ``model.encoders.<m>.<key>``).
    Library and user encoders take any keyword; they report a refused option when built."""
    for modality, given in settings.items():
        name = spec["encoders"][modality]["kind"]
        if is_external(name):
            continue
        try:
            builder = ENCODERS.builder(name)
        except ConfigError as error:
            raise ConfigError(f"model.encoders.{modality}.name: {error}") from None
        if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(builder).parameters.values()):
            continue
        accepted = ENCODERS.defaults(name, skip=1)
        unknown = [key for key in given if key not in accepted and key not in NOT_OPTIONS]
        if unknown:
            options = [key for key in accepted if key not in FILLED_IN]
            valid = f"its options are: {', '.join(options)}" if options else "it takes no options"
            raise ConfigError(
                f"model.encoders.{modality}.{unknown[0]}: encoder {name!r} has no option {unknown[0]!r}; {valid}"
            )


def modality_of(error: EncoderError, spec: Mapping[str, Any]) -> str | None:
    """The modality whose encoder ``error`` is about, in a model spec."""
    return next((m for m, encoder in spec["encoders"].items() if encoder.get("kind") == error.encoder), None)


ENCODERS.set_resolver(resolve_external, hint=f"(or {NAME_FORMS})")
