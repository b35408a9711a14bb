"""Helpers shared by the objective-level methods (MBSD, CML, MMPareto, G-Blending, LFM).

* the fusion heads whose per-modality logits depend on one modality only, and the check;
* saving and restoring train/eval modes and BatchNorm running statistics around extra forwards;
* cross-rank averaging of gradients a method computes itself (``torch.autograd.grad`` or the
  backward of a model copy, which DDP does not see);
* a fresh optimizer built like the training optimizer (same class and settings, empty state), the
  same on every rank;
* short training loops on the training split (weight estimation on a copy, unimodal pre-training)
  and loading pre-trained encoders from avbalance checkpoints.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .distributed import average_gradients, all_reduce_sum, is_distributed

#: Heads whose per-modality logits ``z_m`` are computed from modality m's features alone
#: (``W_m h_m + b_m``, ``W_m h_m + b / M`` or MMCosine's cosines), so that ``CE(z_m, y)`` is a
#: unimodal loss. ``film``/``gated`` give Shapley shares and ``film_sym``/``gated_sym`` split
#: cross-modulated streams: their per-modality logits involve the other modality too.
SPLIT_HEADS = ("sum", "concat", "cosine")


def require_split_head(method: str, fusion: str,
                       need: str = "per-modality logits computed from one modality only") -> None:
    if fusion not in SPLIT_HEADS:
        raise ValueError(f"method {method!r} needs {need}: use fusion sum, concat or cosine, not {fusion!r}")


def check_param(condition: bool, method: str, message: str) -> None:
    """Refuse a bad hyperparameter value with a one-line :class:`ConfigError`."""
    if not condition:
        raise ConfigError(f"method {method!r}: {message}")


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


# -- modes ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def model_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Run a block with every module in train (or eval) mode; restore each module's mode after."""
    modes = [(module, module.training) for module in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


@contextlib.contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block and put every buffer (BatchNorm running statistics, batch counters) back as it
    was: a train-mode extra forward then uses batch statistics without updating the running ones."""
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        yield model
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


# -- cross-rank averaging --------------------------------------------------------------------------
def average_across_ranks(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The mean of each tensor over all ranks, in one collective (no-op in one process)."""
    tensors = list(tensors)
    if not is_distributed() or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    flat = all_reduce_sum(flat) / world_size()
    return [chunk.view_as(t) for chunk, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def in_lockstep(batches: Iterable[dict], device: torch.device) -> Iterator[dict]:
    """Yield batches while every rank still has one (shards may differ by a batch): a loop with a
    collective per batch then never waits on a rank that has finished."""
    if not is_distributed():
        yield from batches
        return
    iterator = iter(batches)
    while True:
        batch = next(iterator, None)
        have = torch.tensor([0.0 if batch is None else 1.0], device=device)
        if float(all_reduce_sum(have)) < world_size():
            return
        yield batch


# -- a fresh optimizer like the training one -------------------------------------------------------
OptimizerRecipe = tuple[type, dict]
DEFAULT_RECIPE: OptimizerRecipe = (torch.optim.SGD, {"lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4})


def optimizer_recipe(optimizer: torch.optim.Optimizer | None) -> OptimizerRecipe:
    """The class and constructor settings of ``optimizer`` (its initial settings, not its state).

    Under DDP the recipe of rank 0 is broadcast, so every rank builds the same optimizer even where
    a rank was given none. Without an optimizer the package's default recipe is used (SGD, lr 1e-3,
    momentum 0.9, weight decay 1e-4)."""
    recipe = DEFAULT_RECIPE if optimizer is None else (type(optimizer), dict(optimizer.defaults))
    if is_distributed():
        box: list[Any] = [recipe]
        dist.broadcast_object_list(box, src=0)
        recipe = box[0]
    return recipe


def fresh_optimizer(recipe: OptimizerRecipe, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    cls, settings = recipe
    return cls(list(params), **settings)


# -- short training loops ---------------------------------------------------------------------------
def train_for(model: nn.Module, params: Sequence[nn.Parameter], data, epochs: int, recipe: OptimizerRecipe,
              loss_fn: Callable[[nn.Module, Mapping[str, torch.Tensor]], torch.Tensor],
              limit: int | None = None) -> None:
    """Train ``params`` of ``model`` (train mode) for ``epochs`` passes over the (shuffled) training
    split with a fresh optimizer; gradients are averaged over ranks by hand (``model`` is not
    wrapped by DDP). Other parameters get no gradient and are not updated."""
    optimizer = fresh_optimizer(recipe, params)
    with model_mode(model, True):
        for _ in range(epochs):
            for batch in in_lockstep(data.train_batches(limit=limit, shuffle=True), data.device):
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model, batch).backward()
                average_gradients(params)
                optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for param in model.parameters():  # nothing of this stage leaks into the next training step
        param.grad = None


def unimodal_loss(modality: str) -> Callable[[nn.Module, Mapping[str, torch.Tensor]], torch.Tensor]:
    def loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(model(batch).unimodal_logits[modality], batch["label"])
    return loss


def pretrain_unimodal(model, data, epochs: int, recipe: OptimizerRecipe, limit: int | None = None) -> None:
    """Automatic unimodal pre-training: for each modality m in turn, encoder m and the head are
    trained for ``epochs`` epochs on ``CE(z_m, y)`` (needs a head from :data:`SPLIT_HEADS`)."""
    for modality in model.modalities:
        params = [p for p in (*model.encoders[modality].parameters(), *model.head.parameters()) if p.requires_grad]
        train_for(model, params, data, epochs, recipe, unimodal_loss(modality), limit)


def load_pretrained(model, paths: Sequence[str], method: str) -> list[str]:
    """Initialise ``model`` from avbalance checkpoints (``avbalance train`` runs, unimodal or not).

    A checkpoint with exactly the model's modalities and the same head loads entirely; otherwise
    each of its encoders whose modality the model has loads into that encoder (shapes must agree).
    Returns the modalities initialised. Raises :class:`ConfigError` with one line on a mismatch."""
    from ..models import load_model

    loaded: list[str] = []
    for path in paths:
        source = load_model(path)
        state = source.state_dict()
        if set(source.modalities) == set(model.modalities) and _same_shapes(model.state_dict(), state):
            model.load_state_dict(state)
            loaded.extend(model.modalities)
            continue
        common = [m for m in source.modalities if m in model.encoders]
        if not common:
            raise ConfigError(f"method {method!r}: {path} has modalities {', '.join(source.modalities)}, "
                              f"none of the model's ({', '.join(model.modalities)})")
        for modality in common:
            encoder_state = source.encoders[modality].state_dict()
            if not _same_shapes(model.encoders[modality].state_dict(), encoder_state):
                raise ConfigError(f"method {method!r}: the {modality} encoder in {path} has another shape "
                                  f"than the model's (check model.width / model.layers)")
            model.encoders[modality].load_state_dict(encoder_state)
            loaded.append(modality)
    return loaded


def _same_shapes(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> bool:
    return set(expected) == set(state) and all(tuple(expected[k].shape) == tuple(state[k].shape) for k in expected)


def initialise_from(model, data, optimizer, method: str, pretrained: Sequence[str], pretrain_epochs: int,
                    limit: int | None = None) -> None:
    """The pre-trained parts of a method: load ``pretrained`` checkpoints, or else (with
    ``pretrain_epochs`` > 0) run the automatic unimodal pre-training stage on the training split."""
    if pretrained:
        load_pretrained(model, pretrained, method)
        return
    if pretrain_epochs > 0:
        if data is None:
            warnings.warn(f"{method}: no training data given to setup(); unimodal pre-training skipped", UserWarning)
            return
        pretrain_unimodal(model, data, pretrain_epochs, optimizer_recipe(optimizer), limit)
