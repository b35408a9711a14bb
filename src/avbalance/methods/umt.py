"""``umt``: Uni-Modal Teacher (Du et al., ICML 2023), METHODS.md §7.7.

Each modality has a frozen unimodal teacher encoder, trained on that modality alone. The
multimodal model's encoders are distilled towards the teachers' pooled features while the fused
head learns the task::

    L = CE(z, y) + scaling * sum_m MSE(h_m^teacher, h_m)

(the MSE averaged over the batch and the feature dimension; the teachers run in eval mode under
no-grad). Teachers come from ``teachers={modality: checkpoint}`` (the encoder of modality m of an
avbalance checkpoint, e.g. ``avbalance train --modalities audio``), and otherwise from an automatic
unimodal pre-training stage in ``setup``: for ``pretrain_epochs`` epochs on the training split, a
copy of the model's (freshly initialised) encoder m with its own linear classifier is trained on
``CE`` with the run's optimizer settings. Under DDP the pre-training gradients and the teachers'
BatchNorm statistics are averaged over ranks, so every rank has the same teachers.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.model import ModelOutput, MultimodalModel, run_encoder
from .base import EpochData, Method
from .distributed import average_buffers, average_gradients, in_lockstep
from .pretraining import optimizer_recipe
from .registry import register_method


def distillation_terms(
    features: Mapping[str, torch.Tensor], teacher_features: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``MSE(h_m^teacher, h_m)`` per modality (mean over batch and features)."""
    return {m: F.mse_loss(features[m], teacher_features[m].to(features[m].dtype)) for m in teacher_features}


def _teacher_encoder(path: str, modality: str) -> nn.Module:
    from ..models import load_model

    source = load_model(path)
    if modality not in source.encoders:
        raise ConfigError(
            f"method 'umt': teacher {path} has no {modality} encoder (its modalities: {', '.join(source.modalities)})"
        )
    return source.encoders[modality]


def _encoder_dim(spec: Mapping[str, Any]) -> int:
    from ..models import build_encoder

    return int(build_encoder(**spec).out_dim)


@register_method
class UMT(Method):
    name = "umt"
    min_modalities = 2

    def __init__(self, scaling: float = 10.0, teachers: dict[str, str] | None = None, pretrain_epochs: int = 5) -> None:
        super().__init__()
        if scaling < 0:
            raise ConfigError(f"method 'umt': scaling must be >= 0, got {scaling}")
        if pretrain_epochs < 0:
            raise ConfigError(f"method 'umt': pretrain_epochs must be >= 0, got {pretrain_epochs}")
        self.scaling, self.pretrain_epochs = scaling, pretrain_epochs
        self.teacher_paths = dict(teachers or {})
        for modality, path in self.teacher_paths.items():
            if not Path(path).is_file():
                raise ConfigError(f"method 'umt': teacher checkpoint for {modality} not found: {path}")
        self.teachers: dict[str, nn.Module] = {}
        self._pretrained_states: dict[str, dict[str, torch.Tensor]] | None = None  # restored on resume

    # -- set-up ------------------------------------------------------------------------------------
    def adapt_model_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Check the teacher checkpoints against the model before any work (one-line errors)."""
        from ..models.checkpoint import read_checkpoint

        unknown = [m for m in self.teacher_paths if m not in spec["encoders"]]
        if unknown:
            raise ValueError(
                f"method 'umt': a teacher is given for {unknown[0]!r}, which the model does not have "
                f"(its modalities: {', '.join(spec['encoders'])})"
            )
        for modality, path in self.teacher_paths.items():
            teacher_spec = read_checkpoint(path).get("avbalance", {}).get("model_spec")
            if teacher_spec is None:
                raise ValueError(f"method 'umt': teacher {path} is not an avbalance checkpoint (no model spec)")
            if modality not in teacher_spec.get("encoders", {}):
                raise ValueError(
                    f"method 'umt': teacher {path} has no {modality} encoder "
                    f"(its modalities: {', '.join(teacher_spec.get('encoders', {}))})"
                )
            have, want = _encoder_dim(teacher_spec["encoders"][modality]), _encoder_dim(spec["encoders"][modality])
            if have != want:
                raise ValueError(
                    f"method 'umt': the {modality} teacher in {path} gives {have}-d features, the "
                    f"model's encoder {want}-d (match model.width / model.layers)"
                )
        return spec

    def setup(self, model: MultimodalModel, optimizer=None, data: EpochData | None = None) -> None:
        super().setup(model, optimizer, data)
        device = next(model.parameters()).device
        missing = [m for m in model.modalities if m not in self.teacher_paths]
        self.teachers = {}
        for modality, path in self.teacher_paths.items():
            teacher = _teacher_encoder(path, modality)
            if getattr(teacher, "out_dim", model.head.dims[modality]) != model.head.dims[modality]:
                raise ConfigError(
                    f"method 'umt': the {modality} teacher in {path} gives {teacher.out_dim}-d "
                    f"features, the model's encoder {model.head.dims[modality]}-d"
                )
            self.teachers[modality] = teacher
        if missing:
            if self._pretrained_states is not None and all(m in self._pretrained_states for m in missing):
                for m in missing:  # resumed: the teachers pre-trained at the start of the run
                    teacher = copy.deepcopy(model.encoders[m])
                    teacher.load_state_dict(self._pretrained_states[m])
                    self.teachers[m] = teacher
            else:
                if data is None or self.pretrain_epochs == 0:
                    raise ConfigError(
                        f"method 'umt' needs a teacher for {', '.join(missing)}: give "
                        f"teachers.<modality>=<checkpoint> or pre-train (pretrain_epochs > 0 and "
                        f"training data)"
                    )
                self.teachers.update(self.pretrain(model, missing, optimizer, data))
                self._pretrained_states = {
                    m: {k: v.detach().cpu().clone() for k, v in self.teachers[m].state_dict().items()} for m in missing
                }
        for teacher in self.teachers.values():
            teacher.to(device).eval()
            teacher.requires_grad_(False)

    def pretrain(
        self, model: MultimodalModel, modalities: list[str], optimizer, data: EpochData
    ) -> dict[str, nn.Module]:
        """Train a copy of each encoder with a linear classifier on its modality alone."""
        num_classes = model.head.num_classes
        encoders = {m: copy.deepcopy(model.encoders[m]).to(data.device) for m in modalities}
        classifiers = {}
        for m in modalities:
            linear = nn.Linear(model.head.dims[m], num_classes).to(data.device)
            nn.init.xavier_normal_(linear.weight)
            nn.init.zeros_(linear.bias)
            classifiers[m] = linear
        params = [p for m in modalities for p in (*encoders[m].parameters(), *classifiers[m].parameters())]
        for p in params:
            p.requires_grad_(True)
        cls, settings = optimizer_recipe(optimizer)
        teacher_optimizer = cls(params, **settings)
        for module in (*encoders.values(), *classifiers.values()):
            module.train()
        for _ in range(self.pretrain_epochs):
            for batch in in_lockstep(data.train_batches(shuffle=True), data.device):
                teacher_optimizer.zero_grad(set_to_none=True)
                loss = sum(
                    F.cross_entropy(classifiers[m](run_encoder(encoders[m], m, batch)), batch["label"])
                    for m in modalities
                )
                loss.backward()
                average_gradients(params)
                teacher_optimizer.step()
        for m in modalities:
            average_buffers(encoders[m])
        return encoders

    # -- the loss ----------------------------------------------------------------------------------
    def loss(self, output: ModelOutput, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not self.teachers:
            raise RuntimeError("method 'umt' has no teachers: call setup(model, optimizer, data) first")
        with torch.no_grad():
            teacher_features = {m: run_encoder(teacher, m, batch) for m, teacher in self.teachers.items()}
        terms = distillation_terms(output.features, teacher_features)
        for m, term in terms.items():
            self._logs[f"distill/{m}"] = term.detach()
        return F.cross_entropy(output.logits, batch["label"]) + self.scaling * sum(terms.values())

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        if self._pretrained_states is not None:
            state["pretrained_teachers"] = self._pretrained_states
        return state

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        if state.get("pretrained_teachers") is not None:
            self._pretrained_states = {m: dict(s) for m, s in state["pretrained_teachers"].items()}

    def __repr__(self) -> str:
        return f"UMT(scaling={self.scaling}, teachers={self.teacher_paths or 'pre-trained'})"
