"""The modulation window: the epochs in which a method acts (outside it, it trains like the baseline)."""

from __future__ import annotations


class ModulationWindow:
    """Mixin for a :class:`~avbalance.methods.base.Method` with ``modulation_starts`` and
    ``modulation_ends`` (epochs, inclusive; an end of None: until the last epoch)."""

    epoch: int
    modulation_starts: int
    modulation_ends: int | None

    def in_window(self) -> bool:
        ends = self.modulation_ends
        return self.modulation_starts <= self.epoch and (ends is None or self.epoch <= ends)
