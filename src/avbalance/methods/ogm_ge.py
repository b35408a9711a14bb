"""``ogm_ge``: OGM with Generalization Enhancement (Peng et al., CVPR 2022), METHODS.md §7.2.

Inside the window, every selected gradient tensor becomes ``k_m * g + eps`` with
``eps ~ N(0, sigma^2)`` i.i.d. per element and ``sigma = std(g) + 1e-8`` -- the unbiased standard
deviation over the elements of the *unmodulated* gradient, one scalar per tensor, added to every
modality's tensors including the one with ``k = 1``: exactly as the official code draws it, but
without its per-tensor ``.item()`` host synchronisation.

The noise comes from the method's own generator, seeded with ``seed`` when given and otherwise
from the run seed (``Method.draw_seed``): the same on every DDP rank, so all replicas add the same
noise and stay identical, and different for runs with different seeds.

torch draws on one core (~100 ms per step for the official-size ResNet-18 pair). With
``noise_streams=N > 1`` each modality's tensors are cut into N consecutive parts of about equal
size, each drawn from its own generator (the first seeded as above, the others with seeds spawned
from it), so that on CPU the parts are drawn at once, one thread per core torch may use: the same
distribution, other numbers than one stream, and the same numbers on any number of cores. Only the
draws run on those threads, in waves of at most ``NOISE_WAVE_ELEMENTS`` numbers; the standard
deviations, scaling and additions stay on torch's intra-op threads.

With ``modulate_via="lr"`` the coefficient scales the parameter update and the noise stays on the
gradient: ``g <- g + eps`` (the same ``sigma``).
"""

from __future__ import annotations

import collections
import functools
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .ogm import OGM, TensorSelection
from .randomness import DrawsOnDevice, run_at_once
from .registry import check_param, register_method
from .update_scaling import ModulateVia


@register_method
class OGMGE(DrawsOnDevice, OGM):
    name = "ogm_ge"
    add_noise = True

    def __init__(self, alpha: float = 0.1, modulation_starts: int = 0, modulation_ends: int = 50,
                 modulate: TensorSelection = "auto", seed: int | None = None,
                 modulate_via: ModulateVia = "auto", noise_streams: int = 1) -> None:  # fmt: skip
        super().__init__(alpha, modulation_starts, modulation_ends, modulate, modulate_via)
        check_param(noise_streams >= 1, self.name, f"noise_streams must be >= 1, got {noise_streams}")
        self.seed, self.draw_streams = seed, noise_streams
        self.reset_generators()
        self._noise_buffer: torch.Tensor | None = None  # reused from step to step

    def modulate_gradients(self, grads: list[torch.Tensor], coefficient: torch.Tensor) -> None:
        self._add_noise(grads, coefficient)

    def perturb_gradients(self, grads: list[torch.Tensor]) -> None:
        self._add_noise(grads, None)

    def _add_noise(self, grads: list[torch.Tensor], coefficient: torch.Tensor | None) -> None:
        """``g <- coefficient * g + eps`` on every tensor (``g + eps`` without a coefficient)."""
        parts = split_in_order(grads, self.draw_streams, torch.Tensor.numel)
        for wave in in_waves(parts, NOISE_WAVE_ELEMENTS):
            noises = self._draw(wave)
            # one tensor at a time, so that it stays in cache from its std to its update; these run
            # on torch's own intra-op threads (an op with intra-op work on the drawing threads
            # would start a second thread team per drawing thread, and the teams leave cores idle)
            for grad, noise in zip(itertools.chain(*wave), itertools.chain(*noises)):
                std = gradient_std(grad)  # of the unmodulated gradient
                if coefficient is not None:
                    grad.mul_(coefficient)
                grad.addcmul_(noise, std)

    def _draw(self, wave: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
        """The noise of every tensor of ``wave`` (one list of tensors per stream), each stream drawing
        its own on a thread of its own."""
        like = next(itertools.chain(*wave))
        buffer = self._buffer(sum(grad.numel() for grad in itertools.chain(*wave)), like)
        noises, offset = [], 0
        for part in wave:
            noises.append([])
            for grad in part:
                # drawn contiguous (torch's vectorised draw; a strided one is ~5x slower) in the
                # kernel's logical order, so the numbers do not depend on its memory layout
                noises[-1].append(buffer[offset : offset + grad.numel()].view(grad.shape))
                offset += grad.numel()
        jobs = [functools.partial(self._draw_stream, stream, part) for stream, part in enumerate(noises) if part]
        run_at_once(jobs, like.device)
        return noises

    def _draw_stream(self, stream: int, noises: list[torch.Tensor]) -> None:
        generator = self.generator(noises[0].device, stream)
        for noise in noises:
            noise.normal_(generator=generator)

    def _buffer(self, size: int, like: torch.Tensor) -> torch.Tensor:
        """A flat buffer of at least ``size`` elements on ``like``'s device and dtype, reused between steps."""
        buffer = self._noise_buffer
        if buffer is None or buffer.numel() < size or buffer.device != like.device or buffer.dtype != like.dtype:
            buffer = self._noise_buffer = torch.empty(size, device=like.device, dtype=like.dtype)
        return buffer


#: Noise drawn before it is added, per wave: 8 M elements (32 MiB of float32), or more where one
#: stream's next tensor alone is larger. Bounds the buffer for large encoders.
NOISE_WAVE_ELEMENTS = 1 << 23


def in_waves(parts: list[list[torch.Tensor]], limit: int) -> Iterator[list[list[torch.Tensor]]]:
    """Each part's tensors in order, dealt out in waves: a wave takes from every part its next
    tensors while they hold at most ``limit / len(parts)`` elements (at least one tensor from each
    part that has any left), so that every stream draws in every wave."""
    queues = [collections.deque(part) for part in parts]
    share = max(1, limit // max(1, len(parts)))
    while any(queues):
        wave = []
        for queue in queues:
            taken, size = [], 0
            while queue and (not taken or size + queue[0].numel() <= share):
                size += queue[0].numel()
                taken.append(queue.popleft())
            wave.append(taken)
        yield wave


def split_in_order(items: list, parts: int, size: Callable[[Any], int]) -> list[list]:
    """``items`` cut into ``parts`` consecutive runs of about equal total ``size`` (some may be empty):
    each cut falls where the running total comes closest to its share (the later cut on a tie, so
    that a single item goes to the first part)."""
    totals = list(itertools.accumulate(size(item) for item in items))
    cuts = [0]
    for part in range(1, parts):
        share = totals[-1] * part / parts if totals else 0
        cut = min(range(cuts[-1], len(items) + 1), key=lambda i: (abs((totals[i - 1] if i else 0) - share), -i))
        cuts.append(cut)
    cuts.append(len(items))
    return [items[start:end] for start, end in itertools.pairwise(cuts)]


def gradient_std(grad: torch.Tensor) -> torch.Tensor:
    """``sigma = std(g) + 1e-8`` (0 + 1e-8 for a one-element tensor), a 0-d tensor on ``g``'s device."""
    return torch.nan_to_num(grad.std(), nan=0.0) + 1e-8
