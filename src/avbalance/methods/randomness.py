"""A method's own random generators, for draws that must agree on every DDP rank."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np
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
    ``draw_streams`` independent :class:`DeviceGenerator` streams, the first seeded with ``draw_seed``
    and the others with seeds spawned from it, re-seeded by ``reset_generators`` and kept in the
    method's state as ``"generator"`` (the first) and ``"generator_streams"`` (the others). Call
    ``reset_generators()`` in ``__init__``."""

    draw_seed: int
    draw_streams = 1  # independent generators, for draws split into parts that may run at once

    def reset_generators(self) -> None:
        self.device_generators = [
            DeviceGenerator(stream_seed(self.draw_seed, stream)) for stream in range(self.draw_streams)
        ]

    def generator(self, device: torch.device, stream: int = 0) -> torch.Generator:
        return self.device_generators[stream].on(device)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()  # type: ignore[misc]
        first, *others = [generator.state() for generator in self.device_generators]
        if first is not None:
            state["generator"] = first
        if any(other is not None for other in others):
            state["generator_streams"] = others  # None for a stream not drawn from yet
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)  # type: ignore[misc]
        first, *others = self.device_generators
        if "generator" in state:
            first.load(state["generator"])
        for generator, saved in zip(others, state.get("generator_streams", ())):
            generator.load(saved)


def stream_seed(seed: int, stream: int) -> int:
    """The seed of a method's ``stream``-th generator: ``seed`` itself for the first (the numbers of
    a one-stream method do not change), for the others the 64-bit seed NumPy's ``SeedSequence``
    derives from ``(seed, stream)``, which mixes the pair so that the streams are unrelated."""
    if stream == 0:
        return seed
    return int(np.random.SeedSequence(seed, spawn_key=(stream,)).generate_state(1, dtype=np.uint64)[0])


def run_at_once(jobs: Sequence[Callable[[], None]], device: torch.device) -> None:
    """Run ``jobs`` (functions of independent tensors) on as many worker threads as torch may use
    cores (torch releases the GIL), when on CPU and torch may use several; in order otherwise, and
    on accelerators, whose kernels are already asynchronous. Every job has ended when it returns;
    a job's error is raised here."""
    threads = min(len(jobs), torch.get_num_threads())
    if device.type != "cpu" or threads < 2:
        for job in jobs:
            job()
        return
    pool = _workers(threads)
    futures = [pool.submit(job) for job in jobs]
    wait(futures)
    for future in futures:
        future.result()


@functools.cache
def _workers(count: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=count, thread_name_prefix="avbalance-draws")
