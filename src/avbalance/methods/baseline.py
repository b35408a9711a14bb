"""``baseline``: joint training with cross-entropy on the fused logits (no balancing)."""

from .base import Method
from .registry import register_method


@register_method
class Baseline(Method):
    name = "baseline"

    def __init__(self) -> None:
        super().__init__()
