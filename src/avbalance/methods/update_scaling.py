"""Where a modulation coefficient acts: on a modality's gradients or on its parameter update.

OGM, OGM-GE and AGM slow a modality by a coefficient ``k_m``. Multiplying the gradient by ``k_m``
(``modulate_via="grad"``, the papers' rule) works with SGD, but an adaptive optimizer (Adam, AdamW,
RMSprop, ...) divides each gradient by a running estimate of its own magnitude and so cancels a
constant scale almost entirely. ``modulate_via="lr"`` scales the *update* the optimizer makes
instead: around every ``optimizer.step()`` the modality's selected parameters are snapshotted and
then set to ``p_before + k_m * (p_after - p_before)``: for AdamW, exactly the step with that
modality's learning rate (and decoupled weight decay) times ``k_m``. The optimizer's state is never
touched, so a resumed run continues bit-identically and DDP replicas (which share ``k_m``) stay
identical. ``"auto"`` (the default) picks ``grad`` for SGD and ``lr`` for adaptive optimizers.

The snapshot is taken in a step pre-hook, the update rescaled in a step post-hook. Lightning's
automatic optimisation calls ``optimizer.step(closure)`` and runs the forward, backward and
``after_backward`` *inside* that call, so the pre-hook cannot know the step's coefficients yet: it
snapshots every registered tensor while the method is active, and the post-hook applies whatever
coefficients ``after_backward`` set for the step (none: the update is left as it is).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from torch.utils.hooks import RemovableHandle

from ..errors import ConfigError

ModulateVia = Literal["grad", "lr", "auto"]

# Optimizers that normalise each gradient by a running estimate of its magnitude.
ADAPTIVE_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.SparseAdam,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
    torch.optim.Adadelta,
)


def is_adaptive(optimizer: torch.optim.Optimizer) -> bool:
    """True for Adam-like optimizers: a known adaptive class, a class name containing ``Adam``, or
    ``exp_avg_sq`` in the state of any parameter (a second-moment estimate)."""
    if isinstance(optimizer, ADAPTIVE_OPTIMIZERS) or "adam" in type(optimizer).__name__.lower():
        return True
    return any("exp_avg_sq" in state for state in optimizer.state.values())


def resolve_modulate_via(choice: ModulateVia, optimizer: torch.optim.Optimizer | None) -> Literal["grad", "lr"]:
    """``auto``: ``lr`` for an adaptive optimizer, ``grad`` otherwise (SGD, or no optimizer given)."""
    if choice != "auto":
        return choice
    return "lr" if optimizer is not None and is_adaptive(optimizer) else "grad"


def auto_choice_note(method: str, optimizer: torch.optim.Optimizer) -> str:
    return (
        f"method {method!r}: modulate_via='auto' scales each modality's parameter update ('lr') under "
        f"{type(optimizer).__name__}, whose second-moment normalisation would cancel a gradient scale; "
        f"set modulate_via='grad' for the papers' gradient scaling"
    )


class UpdateScaler:
    """Rescales the update ``optimizer.step()`` makes to groups of parameters, one coefficient per group.

    ``attach(optimizer, groups, active)`` registers the hooks (replacing any earlier ones, so a method
    set up twice scales once); ``scale_next_step(coefficients)`` gives the coefficients of the coming
    step, by group name; ``active()`` says whether snapshots are needed at all (e.g. inside the
    modulation window)."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []
        self._groups: dict[str, list[torch.nn.Parameter]] = {}
        self._active: Callable[[], bool] = lambda: True
        self._before: dict[str, list[torch.Tensor]] | None = None
        self._coefficients: dict[str, torch.Tensor] | None = None

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(
        self,
        optimizer: torch.optim.Optimizer,
        groups: Mapping[str, Sequence[torch.nn.Parameter]],
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        self.detach()
        self._groups = {name: list(params) for name, params in groups.items()}
        self._active = active
        self._handles = [
            optimizer.register_step_pre_hook(self._snapshot),
            optimizer.register_step_post_hook(self._rescale),
        ]

    def detach(self) -> None:
        """Remove the hooks; the optimizer steps as if the scaler had never been attached."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._before = self._coefficients = None

    def scale_next_step(self, coefficients: Mapping[str, torch.Tensor] | None) -> None:
        """The coefficient of each group for the coming step (0-d tensors); None: leave it unscaled."""
        self._coefficients = None if coefficients is None else dict(coefficients)

    @torch.no_grad()
    def _snapshot(self, optimizer, args, kwargs) -> None:
        self._before = None
        if self._active():
            self._before = {name: [p.detach().clone() for p in params] for name, params in self._groups.items()}

    @torch.no_grad()
    def _rescale(self, optimizer, args, kwargs) -> None:
        before, coefficients = self._before, self._coefficients
        self._before = self._coefficients = None
        if before is None or coefficients is None:
            return
        for name, coefficient in coefficients.items():
            for parameter, previous in zip(self._groups[name], before[name]):
                # lerp is exact at k = 1 (the update is kept bit for bit) and at k = 0
                parameter.copy_(previous.lerp_(parameter, coefficient.to(previous.dtype)))


class ModulationTarget:
    """Mixin for a :class:`~avbalance.methods.base.Method` with the ``modulate_via`` hyperparameter:
    ``setup`` calls :meth:`choose_target` (before ``Method.setup``, whose Adam warning it replaces)
    and then :meth:`attach_updates`; the step applies coefficients through :meth:`scales_updates`."""

    name: str
    modulate_via: ModulateVia
    _warned_optimizer: bool

    def init_target(self, modulate_via: ModulateVia) -> None:
        if modulate_via not in ("grad", "lr", "auto"):
            raise ConfigError(f"method {self.name!r}: modulate_via must be grad, lr or auto, got {modulate_via!r}")
        self.modulate_via = modulate_via
        self.update_scaler = UpdateScaler()
        self._target: Literal["grad", "lr"] | None = None  # resolved by setup

    def choose_target(self, optimizer: torch.optim.Optimizer | None) -> Literal["grad", "lr"]:
        """Resolve ``modulate_via`` for ``optimizer``; say once what ``auto`` chose for an adaptive one."""
        target = resolve_modulate_via(self.modulate_via, optimizer)
        if target == "lr" and optimizer is None:
            raise ConfigError(
                f"method {self.name!r}: modulate_via='lr' scales the optimizer's updates; call setup(model, optimizer)"
            )
        if target == "lr" and self.modulate_via == "auto" and not self._warned_optimizer:
            warnings.warn(auto_choice_note(self.name, optimizer), UserWarning, stacklevel=3)
        if target == "lr":
            self._warned_optimizer = True  # the update is scaled: nothing for Adam to cancel
        self._target = target
        return target

    def attach_updates(
        self,
        optimizer: torch.optim.Optimizer | None,
        groups: Mapping[str, Sequence[torch.nn.Parameter]],
        active: Callable[[], bool],
    ) -> None:
        """Hook the update scaler onto ``optimizer`` when the target is ``lr``; remove it otherwise."""
        if self._target == "lr":
            self.update_scaler.attach(optimizer, groups, active)
        else:
            self.update_scaler.detach()

    @property
    def scales_updates(self) -> bool:
        """True when coefficients go to the parameter updates (``lr``), False for gradients."""
        target = self._target or resolve_modulate_via(self.modulate_via, None)
        if target == "lr" and not self.update_scaler.attached:
            raise RuntimeError(
                f"method {self.name!r} with modulate_via='lr' scales the optimizer's updates: "
                f"call setup(model, optimizer) first"
            )
        return target == "lr"
