"""``reconboost``: ReconBoost, boosting-style modality alternation (Hua et al., ICML 2024), METHODS §7.17.

Each modality is a weak learner ``f_m = head(enc_m(x_m))`` with one head shared by all modalities
(the official MLP ``d -> 256 -> C``) and the ensemble is ``F = beta * sum_m f_m`` with a learnable
boost rate ``beta``. Training runs in *stages*; stage ``s`` picks modality ``m = order[s mod M]``
and has two phases, counted in epochs:

1. ``stage_epochs`` epochs of the modality update: only encoder m and the head learn, with
   ``L = mean_i -(w1 - w2 q_i) log p_i / C`` where ``p_i = softmax(f_m)_i[y_i]`` and
   ``q_i = softmax(F_-m)_i[y_i]`` is the probability the rest of the ensemble (``beta * sum`` of the
   modalities already trained, under no-grad; ``q = 1`` before any) gives the label: samples the
   ensemble already gets right weigh less. From the second stage on, the reconcilement term
   ``alpha * MSE(softmax(f_m), softmax(f_prev))`` ties the learner to the previous modality's
   predictions (``reconcile``: ``gradient`` lets it act on ``f_m``; ``detached``, as the official
   code, detaches both sides so it only shifts the logged loss);
2. ``correct_epochs`` epochs of global rectification: ``CE(beta * sum_m f_m, y)`` over the
   modalities trained so far, updating every encoder, the head and ``beta``.

With ``reset_optimizer`` the optimizer's state (momentum, Adam moments) is cleared at the start of
every phase, as the official code creates a fresh SGD optimizer for each phase. The schedule is a
pure function of the epoch (:func:`reconboost_schedule`), so a resumed run continues it exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F

from ..models.model import MultimodalModel
from .base import Method, StepContext
from .heads import require_shared_head, shared_head_spec
from .registry import register_method


class Phase(NamedTuple):
    stage: int
    modality: str
    phase: Literal["modality", "ensemble"]
    trained: tuple[str, ...]  # modalities trained in an earlier stage (the ensemble a modality update sees)


def reconboost_schedule(epoch: int, modalities: Sequence[str], stage_epochs: int, correct_epochs: int) -> Phase:
    """Stage, modality and phase of an epoch: stage ``s`` spans ``stage_epochs + correct_epochs``
    epochs, picks ``modalities[s % M]``, and starts with its modality-update phase."""
    cycle = stage_epochs + correct_epochs
    stage, within = divmod(epoch, cycle)
    count = len(modalities)
    trained = tuple(m for m in modalities if any(modalities[j % count] == m for j in range(stage)))
    return Phase(stage, modalities[stage % count], "modality" if within < stage_epochs else "ensemble", trained)


def boosting_loss(
    logits: torch.Tensor, ensemble_label_prob: torch.Tensor, labels: torch.Tensor, weight1: float, weight2: float
) -> torch.Tensor:
    """``mean_i -(w1 - w2 q_i) log softmax(logits)_i[y_i] / C`` (the official one-hot form)."""
    log_p = F.log_softmax(logits, dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
    return (-(weight1 - weight2 * ensemble_label_prob) * log_p / logits.shape[1]).mean()


@register_method
class ReconBoost(Method):
    name = "reconboost"
    min_modalities = 2
    overrides_step = True

    def __init__(self, alpha: float = 0.5, weight1: float = 5.0, weight2: float = 1.0, stage_epochs: int = 4,
                 correct_epochs: int = 4, boost_rate: float = 1.0, head_hidden: int | None = 256,
                 reconcile: Literal["gradient", "detached", "none"] = "gradient",
                 reset_optimizer: bool = True) -> None:  # fmt: skip
        super().__init__()
        if stage_epochs < 1 or correct_epochs < 0:
            raise ValueError("stage_epochs must be >= 1 and correct_epochs >= 0")
        self.alpha, self.weight1, self.weight2 = alpha, weight1, weight2
        self.stage_epochs, self.correct_epochs = stage_epochs, correct_epochs
        self.boost_rate, self.head_hidden = boost_rate, head_hidden
        self.reconcile, self.reset_optimizer = reconcile, reset_optimizer
        self._phase_started: tuple[int, str] | None = None

    def adapt_model_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        return shared_head_spec(spec, self.name, combine="boost", boost_rate=self.boost_rate, hidden=self.head_hidden)

    def setup(self, model: MultimodalModel, optimizer=None, data=None) -> None:
        super().setup(model, optimizer, data)
        require_shared_head(model, self.name, "boost")

    def schedule(self, modalities: Sequence[str], epoch: int | None = None) -> Phase:
        return reconboost_schedule(
            self.epoch if epoch is None else epoch, tuple(modalities), self.stage_epochs, self.correct_epochs
        )

    def _learner(self, model: MultimodalModel, batch: Mapping[str, torch.Tensor], modality: str) -> torch.Tensor:
        return model.head.classify(model.encode_modality(modality, batch))

    def training_step(
        self, model: MultimodalModel, batch: Mapping[str, torch.Tensor], step: StepContext
    ) -> torch.Tensor:
        phase = self.schedule(model.modalities, step.epoch)
        if self.reset_optimizer and self._phase_started != (phase.stage, phase.phase):
            for parameter in model.parameters():
                step.optimizer.state.pop(parameter, None)
        self._phase_started = (phase.stage, phase.phase)
        labels, head = batch["label"], model.head
        index = model.modalities.index(phase.modality)
        self._logs["stage"] = torch.tensor(float(phase.stage), device=labels.device)
        self._logs["modality_index"] = torch.tensor(float(index), device=labels.device)
        step.zero_grad()
        if phase.phase == "modality":
            loss = self._modality_loss(model, batch, phase, labels)
        else:
            members = set(phase.trained) | {phase.modality}
            logits = head.boost_rate * torch.stack(
                [self._learner(model, batch, m) for m in model.modalities if m in members]
            ).sum(0)
            loss = F.cross_entropy(logits, labels)
            self._logs["loss/ensemble"] = loss.detach()
        step.backward(loss)
        step.step()
        step.zero_grad()
        self._logs["boost_rate"] = head.boost_rate.detach().clone()
        return loss.detach()

    def _modality_loss(
        self, model: MultimodalModel, batch: Mapping[str, torch.Tensor], phase: Phase, labels: torch.Tensor
    ) -> torch.Tensor:
        others = [m for m in phase.trained if m != phase.modality]
        with torch.no_grad():
            if others:
                ensemble = model.head.boost_rate * torch.stack([self._learner(model, batch, m) for m in others]).sum(0)
                label_prob = F.softmax(ensemble, dim=1).gather(1, labels.view(-1, 1)).squeeze(1)
            else:  # nothing trained yet: the official code's one-column constant gives q = 1
                label_prob = torch.ones(labels.shape, device=labels.device)
        logits = self._learner(model, batch, phase.modality)
        loss = boosting_loss(logits, label_prob, labels, self.weight1, self.weight2)
        self._logs["loss/boost"] = loss.detach()
        if phase.stage > 0 and self.reconcile != "none" and self.alpha > 0:
            modalities = model.modalities
            previous = modalities[(modalities.index(phase.modality) - 1) % len(modalities)]
            with torch.no_grad():
                target = F.softmax(self._learner(model, batch, previous), dim=1)
            probabilities = F.softmax(logits, dim=1)
            if self.reconcile == "detached":
                probabilities = probabilities.detach()
            reconcile = F.mse_loss(probabilities, target)
            self._logs["loss/reconcile"] = reconcile.detach()
            loss = loss + self.alpha * reconcile
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "phase_started": list(self._phase_started or ())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        started = state.get("phase_started") or None
        self._phase_started = (int(started[0]), str(started[1])) if started else None

    def __repr__(self) -> str:
        return (
            f"ReconBoost(alpha={self.alpha}, stage_epochs={self.stage_epochs}, "
            f"correct_epochs={self.correct_epochs}, reconcile={self.reconcile!r})"
        )
