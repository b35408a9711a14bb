"""Loading and saving model checkpoints safely (``torch.load(weights_only=True)``: never unpickles
arbitrary objects).

An avbalance checkpoint is a dict with ``avbalance.model_spec`` (see :func:`build_model`) and a
``state_dict`` whose model keys start with ``model.``: exactly what the training engine's
Lightning checkpoints contain, and what ``avbalance convert-checkpoint`` writes.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .build import build_model
from .model import MultimodalModel

MODEL_PREFIX = "model."


def unpickler_problem(error: pickle.UnpicklingError) -> str:
    """The line of torch's long ``weights_only`` message that names the problem."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or line.startswith("Unsupported")]
    return (named or lines or ["unsupported content"])[0]


def is_pickle(path: Path) -> bool:
    """Whether the file starts like a pickle of protocol 2 or later (its PROTO opcode)."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file without executing code from it; one-line errors on failure."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing a file
            warnings.simplefilter("ignore", UserWarning)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = unpickler_problem(error)
        if "GLOBAL" not in detail and not is_pickle(path):  # random bytes or a foreign format, not code
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({detail[:160]})") from None
        raise CheckpointError(
            f"{path}: refused to load: it contains objects that only arbitrary code could rebuild ({detail[:160]})"
        ) from None
    except Exception as error:  # torch.load fails on foreign files with many exception types
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({detail})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a checkpoint dict (found {type(checkpoint).__name__})")
    return checkpoint


def model_state(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k[len(MODEL_PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(MODEL_PREFIX)}


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> MultimodalModel:
    """A ready model (eval mode) from an avbalance checkpoint or a converted official checkpoint."""
    checkpoint = read_checkpoint(path)
    spec = checkpoint.get("avbalance", {}).get("model_spec")
    if spec is None or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{path}: not an avbalance checkpoint (no model spec); convert official checkpoints "
            f"with 'avbalance convert-checkpoint'"
        )
    model = build_model(spec)
    load_state(model, model_state(checkpoint), path)
    return model.to(map_location).eval()


def state_mismatches(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> list[str]:
    """What keeps ``state`` from loading where ``expected`` is: tensors with another shape, missing
    and unexpected keys, each as ``"N <problem> (e.g. keys)"``; empty when it fits."""
    misshapen = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if misshapen:
        problems.append(f"{len(misshapen)} with another shape: " + "; ".join(misshapen[:3]))
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    return problems


def load_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``load_state_dict`` with one-line, per-tensor reports of missing, unexpected or misshapen keys."""
    problems = state_mismatches(model.state_dict(), state)
    if problems:
        raise CheckpointError(f"{path}: does not match the model: " + ", ".join(problems))
    model.load_state_dict(state)


def save_model_checkpoint(
    spec: Mapping[str, Any], state: Mapping[str, torch.Tensor], path: str | os.PathLike, **extra: Any
) -> None:
    """Write an avbalance checkpoint atomically (temporary file in the same folder, then rename)."""
    checkpoint = {
        "avbalance": {"model_spec": dict(spec), **extra},
        "state_dict": {MODEL_PREFIX + k: v.detach().cpu() for k, v in state.items()},
    }
    atomic_torch_save(checkpoint, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
