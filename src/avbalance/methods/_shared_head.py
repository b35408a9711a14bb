"""Helpers for the methods built on the shared head (MLA, ReconBoost; METHODS §4.7)."""

from __future__ import annotations

from typing import Any

import torch

from ..models.model import MultimodalModel
from ..models.shared_head import SharedHead
from .distributed import all_reduce_sum

#: Fusions a shared-head method accepts: ``concat`` (the default) is replaced by the shared head.
SHARED_FUSIONS = ("concat", "shared")


def shared_head_spec(spec: dict[str, Any], method: str, **options: Any) -> dict[str, Any]:
    """The model spec with the shared head and ``options`` (which override the user's options)."""
    fusion = spec["fusion"]
    if fusion not in SHARED_FUSIONS:
        raise ValueError(f"method {method!r} trains one head shared by all modalities: use fusion concat or "
                         f"shared (both build the shared head), not {fusion!r}")
    current = dict(spec.get("fusion_options", {})) if fusion == "shared" else {}
    current.update(options)
    return {**spec, "fusion": "shared", "fusion_options": current}


def require_shared_head(model: MultimodalModel, method: str, combine: str) -> SharedHead:
    head = model.head
    if not isinstance(head, SharedHead) or head.combine != combine:
        raise ValueError(f"method {method!r} needs the shared head with combine={combine!r}; build the model "
                         f"through the method's adapt_model_spec")
    return head


def global_mean(rows: torch.Tensor) -> torch.Tensor:
    """Mean over the rows of ``rows`` on every rank together (a plain mean in one process)."""
    total = torch.cat([rows.sum(0), rows.new_tensor([rows.shape[0]])])
    total = all_reduce_sum(total)
    return total[:-1] / total[-1]
