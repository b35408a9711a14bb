"""Run configuration: typed sections with defaults, YAML files, ``key=value`` overrides.

Defaults follow the official OGM-GE recipe (SGD lr 1e-3, momentum 0.9, weight decay 1e-4,
StepLR(70, 0.1)). Unknown keys and values of the wrong type are rejected with a one-line error
before any work starts.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import ConfigError
from ..models.build import ENGINE_KEYS
from .optim import OPTIMIZERS, SCHEDULERS, check_registered

#: The largest count a setting takes (a batch size beyond it cannot be indexed).
MAX_COUNT = 2**31 - 1


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


MAX_AUTO_WORKERS = 8


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def auto_workers(cores: int | None = None) -> int:
    """``data.num_workers=auto``: every core but the one training runs on, at most 8; none on a
    single core, where a worker process would only compete with training."""
    cores = usable_cores() if cores is None else cores
    return max(0, min(cores - 1, MAX_AUTO_WORKERS))


class DataConfig(Section):
    dataset: str = "synthetic"
    root: str | None = None  # the prepared cache (``--data``); unused by ``synthetic``
    options: dict[str, Any] = Field(default_factory=dict)  # dataset-specific options
    modalities: list[str] | None = None  # train on this subset only (default: all of the dataset's)
    val_fraction: float = Field(0.1, gt=0, lt=1)  # carved from train when the dataset has no val split
    batch_size: int = Field(64, ge=1, le=MAX_COUNT)
    eval_batch_size: int | None = Field(None, ge=1, le=MAX_COUNT)
    # DataLoader worker processes; "auto": one per core but one (at most 8), none on a single core
    num_workers: int | Literal["auto"] = "auto"

    @field_validator("num_workers")
    @classmethod
    def non_negative_workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError("Input should be greater than or equal to 0, or 'auto'")
        return value

    def loader_workers(self, deterministic: bool = False) -> int:
        """``num_workers`` as a count (``auto`` resolved on this machine). A deterministic run reads in
        the main process under ``auto``: its bit-identical resume is proven without worker processes."""
        if self.num_workers == "auto":
            return 0 if deterministic else auto_workers()
        return self.num_workers


@dataclass(frozen=True)
class EncoderSettings:
    """What the engine does with one modality's encoder: load ``weights`` (a file), ``freeze`` it
    (no gradients, eval mode) and train it with ``lr_scale`` times the learning rate."""

    weights: str | None = None
    freeze: bool = False
    lr_scale: float = 1.0


def check_engine_keys(modality: str, settings: Mapping[str, Any]) -> None:
    """``weights`` a path, ``freeze`` a boolean, ``lr_scale`` a finite number > 0 (one-line errors)."""
    key = f"model.encoders.{modality}"
    weights, freeze, scale = (settings.get(name) for name in ENGINE_KEYS)
    if "weights" in settings and not (isinstance(weights, str) and weights):
        raise ConfigError(f"{key}.weights: must be the path of a weights file, got {weights!r}")
    if "freeze" in settings and not isinstance(freeze, bool):
        raise ConfigError(f"{key}.freeze: must be true or false, got {freeze!r}")
    number = isinstance(scale, (int, float)) and not isinstance(scale, bool)
    if "lr_scale" in settings and not (number and 0 < scale < float("inf")):
        raise ConfigError(
            f"{key}.lr_scale: must be a finite number > 0 (the encoder's learning-rate factor), got {scale!r}"
        )


class ModelConfig(Section):
    fusion: str = "concat"
    fusion_options: dict[str, Any] = Field(default_factory=dict)
    width: int | None = Field(None, ge=1)  # ResNet base width (64 = ResNet-18); default: dataset's advice
    layers: list[int] | None = Field(None, min_length=1)  # blocks per stage ([2, 2, 2, 2] = ResNet-18)
    # per modality: name (alias kind), the encoder's options, and weights / freeze / lr_scale
    encoders: dict[str, dict[str, Any]] = Field(default_factory=dict)
    pretrained: dict[str, str] = Field(default_factory=dict)  # alias of encoders.<m>.weights

    @field_validator("encoders")
    @classmethod
    def engine_keys(cls, encoders: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for modality, settings in encoders.items():
            check_engine_keys(modality, settings)
        return encoders

    @model_validator(mode="after")
    def one_weights_file(self) -> ModelConfig:
        twice = [m for m in self.pretrained if "weights" in self.encoders.get(m, {})]
        if twice:
            raise ConfigError(
                f"model.pretrained.{twice[0]} and model.encoders.{twice[0]}.weights both name weights; keep one"
            )
        return self

    def encoder_settings(self) -> dict[str, EncoderSettings]:
        """The engine's settings of every modality named in ``encoders`` or ``pretrained``."""
        settings = {}
        for modality in dict.fromkeys([*self.encoders, *self.pretrained]):
            given = self.encoders.get(modality, {})
            weights = given.get("weights", self.pretrained.get(modality))
            settings[modality] = EncoderSettings(weights, given.get("freeze", False), float(given.get("lr_scale", 1)))
        return settings


class MethodConfig(Section):
    name: str = "baseline"
    params: dict[str, Any] = Field(default_factory=dict)


class OptimConfig(Section):
    name: str = "sgd"  # a name in engine.optim.OPTIMIZERS
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    scheduler: str = "step"  # a name in engine.optim.SCHEDULERS
    step_size: int = Field(70, ge=1)
    gamma: float = Field(0.1, gt=0)

    @field_validator("name")
    @classmethod
    def registered_optimizer(cls, name: str) -> str:
        return check_registered(OPTIMIZERS, name)

    @field_validator("scheduler")
    @classmethod
    def registered_scheduler(cls, name: str) -> str:
        return check_registered(SCHEDULERS, name)

    @field_validator("lr", "momentum", "weight_decay", "gamma")
    @classmethod
    def finite(cls, value: float) -> float:  # NaN already fails the bounds; infinity passes them
        if value == float("inf"):
            raise ValueError("Input should be a finite number")
        return value


class TrainerConfig(Section):
    epochs: int = Field(100, ge=1, le=MAX_COUNT)
    seed: int = Field(0, ge=0, le=2**32 - 1)  # the range NumPy seeds take
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    precision: str = "32-true"
    sync_batchnorm: bool = False  # synchronise BatchNorm statistics across DDP ranks
    deterministic: bool = False
    accumulate_grad_batches: int = Field(1, ge=1)
    gradient_clip_val: float | None = Field(None, ge=0)
    log_every_n_steps: int = Field(10, ge=1)
    checkpoint_every_n_steps: int | None = Field(None, ge=1)  # also refresh last.ckpt every N steps
    nonfinite: Literal["skip", "stop", "off"] = "skip"  # what a NaN/Inf gradient does to the step
    progress_bar: bool = True
    channels_last: bool = True  # 2-D convolutions in channels-last memory format (faster on CPU and CUDA)
    compile: bool = False  # torch.compile the model (CUDA only; ignored with a warning elsewhere)
    keep_cpu_memory: bool = True  # reuse freed CPU memory between steps (glibc malloc; see engine/cpu_memory.py)
    # model selection: the validation metric that picks the best checkpoint (and early stopping)
    monitor: str = "val/acc"
    monitor_mode: Literal["max", "min"] = "max"
    early_stopping_patience: int | None = Field(None, ge=1)  # epochs without improvement; None: off
    loggers: list[Literal["tensorboard", "csv", "wandb"]] = Field(default_factory=lambda: ["tensorboard", "csv"])


class RunConfig(Section):
    out: str = "runs/train"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)


def _deep_merge(base: dict, update: Mapping) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict) and key not in ("params", "options"):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.01"`` -> (["optim", "lr"], 0.01); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. optim.lr=0.01)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def set_path(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(path)}: {part!r} is not a section")
    node[path[-1]] = value


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML keeps the last one
    silently, so a second ``lr:`` would override the first without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: a folder, not a config file; give a YAML file")
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        content = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; save the config as UTF-8") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(error, 'problem', error)})") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections, found {type(content).__name__}")
    return content


def validate(tree: Mapping, source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except pydantic.ValidationError as error:
        problem = error.errors()[0]
        key = ".".join(str(p) for p in problem["loc"])
        if problem["type"] == "extra_forbidden":
            raise ConfigError(f"{source}: unknown key {key!r}") from None
        message = problem["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's own message
        raise ConfigError(f"{source}: {key}: {message} (got {problem.get('input')!r})") from None


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, base: Mapping | None = None
) -> RunConfig:
    """Defaults <- ``base`` <- YAML file ``path`` <- ``overrides`` (``key=value``), validated."""
    tree: dict = RunConfig().model_dump()
    if base:
        tree = _deep_merge(tree, base)
    source = "config"
    if path is not None:
        tree = _deep_merge(tree, read_yaml(path))
        source = str(path)
    for override in overrides or []:
        keys, value = parse_override(override)
        set_path(tree, keys, value)
    return validate(tree, source)


def config_text(config: RunConfig) -> str:
    """The YAML text of ``config`` (as ``config.yaml`` of a run folder)."""
    return yaml.safe_dump(config.model_dump(), sort_keys=False)
