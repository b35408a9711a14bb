"""A method's own random generator, for draws that must agree on every DDP rank."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


class DeviceGenerator:
    """Seeded with ``seed`` (the same on every rank), created on the device of its first use, and
    saved / restored with the method's state so that a resumed run draws what it would have drawn."""

    def __init__(self, seed: int):
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._saved_state: torch.Tensor | None = None

    def on(self, device: torch.device | str) -> torch.Generator:
        if self._generator is None or self._generator.device != torch.device(device):
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed)
            if self._saved_state is not None:
                self._generator.set_state(self._saved_state)
                self._saved_state = None
        return self._generator

    def state(self) -> torch.Tensor | None:
        return self._generator.get_state() if self._generator is not None else self._saved_state

    def load(self, state: torch.Tensor | None) -> None:
        self._generator, self._saved_state = None, state


class DrawsOnDevice:
    """Mixin for a :class:`~avbalance.methods.base.Method` drawing on the device of its tensors:
    one :class:`DeviceGenerator` seeded with ``draw_seed``, re-seeded by ``reset_generators`` and
    kept in the method's state as ``"generator"``. Call ``reset_generators()`` in ``__init__``."""

    draw_seed: int

    def reset_generators(self) -> None:
        self.device_generator = DeviceGenerator(self.draw_seed)

    def generator(self, device: torch.device) -> torch.Generator:
        return self.device_generator.on(device)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()  # type: ignore[misc]
        if self.device_generator.state() is not None:
            state["generator"] = self.device_generator.state()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)  # type: ignore[misc]
        if "generator" in state:
            self.device_generator.load(state["generator"])
