"""What methods require of the fusion head: per-modality logits of one modality each (the split
heads), or the head shared by all modalities (MLA, ReconBoost; METHODS §4.7)."""

from __future__ import annotations

from typing import Any

from ..models.model import MultimodalModel
from ..models.shared_head import SharedHead

#: Heads whose per-modality logits ``z_m`` are computed from modality m's features alone
#: (``W_m h_m + b_m``, ``W_m h_m + b / M`` or MMCosine's cosines), so that ``CE(z_m, y)`` is a
#: unimodal loss. ``film``/``gated`` give Shapley shares and ``film_sym``/``gated_sym`` split
#: cross-modulated streams: their per-modality logits involve the other modality too.
SPLIT_HEADS = ("sum", "concat", "cosine")

#: Fusions a shared-head method accepts: ``concat`` (the default) is replaced by the shared head.
SHARED_FUSIONS = ("concat", "shared")


def require_split_head(
    method: str, fusion: str, need: str = "per-modality logits computed from one modality only"
) -> None:
    if fusion not in SPLIT_HEADS:
        raise ValueError(f"method {method!r} needs {need}: use fusion sum, concat or cosine, not {fusion!r}")


def shared_head_spec(spec: dict[str, Any], method: str, **options: Any) -> dict[str, Any]:
    """The model spec with the shared head and ``options`` (which override the user's options)."""
    fusion = spec["fusion"]
    if fusion not in SHARED_FUSIONS:
        raise ValueError(
            f"method {method!r} trains one head shared by all modalities: use fusion concat or "
            f"shared (both build the shared head), not {fusion!r}"
        )
    current = dict(spec.get("fusion_options", {})) if fusion == "shared" else {}
    current.update(options)
    return {**spec, "fusion": "shared", "fusion_options": current}


def require_shared_head(model: MultimodalModel, method: str, combine: str) -> SharedHead:
    head = model.head
    if not isinstance(head, SharedHead) or head.combine != combine:
        raise ValueError(
            f"method {method!r} needs the shared head with combine={combine!r}; build the model "
            f"through the method's adapt_model_spec"
        )
    return head


class NeedsSplitHead:
    """Mixin for a :class:`~avbalance.methods.base.Method` whose losses need a head from
    :data:`SPLIT_HEADS` (``split_head_need`` says why): checked on the model spec and on the model."""

    name: str
    split_head_need: str = "per-modality logits computed from one modality only"

    def adapt_model_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        require_split_head(self.name, spec["fusion"], self.split_head_need)
        return super().adapt_model_spec(spec)  # type: ignore[misc]

    def setup(self, model: MultimodalModel, optimizer=None, data=None) -> None:
        super().setup(model, optimizer, data)  # type: ignore[misc]
        require_split_head(self.name, model.head.name, self.split_head_need)
