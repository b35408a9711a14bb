"""``ogm_ge``: OGM with Generalization Enhancement (Peng et al., CVPR 2022), METHODS.md §7.2.

Inside the window, every selected gradient tensor becomes ``k_m * g + eps`` with
``eps ~ N(0, sigma^2)`` i.i.d. per element and ``sigma = std(g) + 1e-8`` -- the unbiased standard
deviation over the elements of the *unmodulated* gradient, one scalar per tensor, added to every
modality's tensors including the one with ``k = 1``: exactly as the official code draws it, but
without its per-tensor ``.item()`` host synchronisation.

The noise comes from the method's own generator, seeded with ``seed`` when given and otherwise
from the run seed (``Method.draw_seed``): the same on every DDP rank, so all replicas add the same
noise and stay identical, and different for runs with different seeds.

With ``modulate_via="lr"`` the coefficient scales the parameter update and the noise stays on the
gradient: ``g <- g + eps`` (the same ``sigma``).
"""

from __future__ import annotations

import torch

from .ogm import OGM, TensorSelection
from .randomness import DrawsOnDevice
from .registry import register_method
from .update_scaling import ModulateVia


@register_method
class OGMGE(DrawsOnDevice, OGM):
    name = "ogm_ge"
    add_noise = True

    def __init__(self, alpha: float = 0.1, modulation_starts: int = 0, modulation_ends: int = 50,
                 modulate: TensorSelection = "auto", seed: int | None = None,
                 modulate_via: ModulateVia = "auto") -> None:  # fmt: skip
        super().__init__(alpha, modulation_starts, modulation_ends, modulate, modulate_via)
        self.seed = seed
        self.reset_generators()
        self._noise_buffer: torch.Tensor | None = None  # reused: no fresh allocation every step

    def modulate_gradients(self, grads: list[torch.Tensor], coefficient: torch.Tensor) -> None:
        stds = gradient_stds(grads)  # before scaling
        super().modulate_gradients(grads, coefficient)
        self._add_noise(grads, stds)

    def perturb_gradients(self, grads: list[torch.Tensor]) -> None:
        self._add_noise(grads, gradient_stds(grads))

    def _add_noise(self, grads: list[torch.Tensor], stds: list[torch.Tensor]) -> None:
        generator = self.generator(grads[0].device)
        buffer = self._buffer_for(grads)
        for grad, std in zip(grads, stds):
            # drawn contiguous (torch's vectorised draw; a strided one is ~5x slower) in the kernel's
            # logical order, so the numbers do not depend on its memory layout (channels-last or not)
            noise = buffer[: grad.numel()].normal_(generator=generator).view(grad.shape)
            grad.addcmul_(noise, std)

    def _buffer_for(self, grads: list[torch.Tensor]) -> torch.Tensor:
        size = max(g.numel() for g in grads)
        buffer = self._noise_buffer
        if (
            buffer is None
            or buffer.numel() < size
            or buffer.device != grads[0].device
            or buffer.dtype != grads[0].dtype
        ):
            buffer = self._noise_buffer = torch.empty(size, device=grads[0].device, dtype=grads[0].dtype)
        return buffer


def gradient_stds(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """``sigma = std(g) + 1e-8`` of every tensor (0 for a one-element tensor)."""
    return [torch.nan_to_num(g.std(), nan=0.0) + 1e-8 for g in grads]
