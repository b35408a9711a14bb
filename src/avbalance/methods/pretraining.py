"""Training stages a method runs outside the ordinary training step: a fresh optimizer built like
the training one, short training loops on the training split (weight estimation on a model copy,
unimodal pre-training) and initialisation from pre-trained avbalance checkpoints.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .distributed import average_gradients, in_lockstep, is_distributed
from .modes import model_mode

OptimizerRecipe = tuple[type, dict]
#: Used when no training optimizer is known: the package's default recipe.
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


def train_for(
    model: nn.Module,
    params: Sequence[nn.Parameter],
    data,
    epochs: int,
    recipe: OptimizerRecipe,
    loss_fn: Callable[[nn.Module, Mapping[str, torch.Tensor]], torch.Tensor],
    limit: int | None = None,
) -> None:
    """Train ``params`` of ``model`` (train mode) for ``epochs`` passes over the (shuffled) training
    split with a fresh optimizer; gradients are averaged over ranks by hand (``model`` is not
    wrapped by DDP). Other parameters get no gradient and are not updated."""
    optimizer_class, settings = recipe
    optimizer = optimizer_class(list(params), **settings)
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
    trained for ``epochs`` epochs on ``CE(z_m, y)`` (needs a head from :data:`~.heads.SPLIT_HEADS`)."""
    for modality in model.modalities:
        params = [p for p in (*model.encoders[modality].parameters(), *model.head.parameters()) if p.requires_grad]
        train_for(model, params, data, epochs, recipe, unimodal_loss(modality), limit)


def load_pretrained(model, paths: Sequence[str], method: str) -> list[str]:
    """Initialise ``model`` from avbalance checkpoints (``avbalance train`` runs, unimodal or not).

    A checkpoint with exactly the model's modalities and the same head loads entirely; otherwise
    each of its encoders whose modality the model has loads into that encoder (shapes must agree).
    Returns the modalities initialised. Raises :class:`ConfigError` with one line on a mismatch."""
    from ..models import load_model
    from ..models.checkpoint import state_mismatches

    loaded: list[str] = []
    for path in paths:
        source = load_model(path)
        state = source.state_dict()
        if set(source.modalities) == set(model.modalities) and not state_mismatches(model.state_dict(), state):
            model.load_state_dict(state)
            loaded.extend(model.modalities)
            continue
        common = [m for m in source.modalities if m in model.encoders]
        if not common:
            raise ConfigError(
                f"method {method!r}: {path} has modalities {', '.join(source.modalities)}, "
                f"none of the model's ({', '.join(model.modalities)})"
            )
        for modality in common:
            encoder_state = source.encoders[modality].state_dict()
            if state_mismatches(model.encoders[modality].state_dict(), encoder_state):
                raise ConfigError(
                    f"method {method!r}: the {modality} encoder in {path} has another shape "
                    f"than the model's (check model.width / model.layers)"
                )
            model.encoders[modality].load_state_dict(encoder_state)
            loaded.append(modality)
    return loaded


def initialise_from(
    model, data, optimizer, method: str, pretrained: Sequence[str], pretrain_epochs: int, limit: int | None = None
) -> None:
    """The pre-trained parts of a method: load ``pretrained`` checkpoints, or else (with
    ``pretrain_epochs`` > 0) run the automatic unimodal pre-training stage on the training split."""
    if pretrained:
        load_pretrained(model, pretrained, method)
        return
    if pretrain_epochs > 0:
        if data is None:
            warnings.warn(
                f"{method}: no training data given to setup(); unimodal pre-training skipped", UserWarning, stacklevel=3
            )
            return
        pretrain_unimodal(model, data, pretrain_epochs, optimizer_recipe(optimizer), limit)
