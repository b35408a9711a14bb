"""``relearning``: Diagnosing and Re-learning (Wei, Li, Feng, Hu, ECCV 2024), METHODS.md §7.16.

Training is plain cross-entropy. At the end of every ``reinit_epoch``-th epoch (not epoch 0), at
most ``reinit_num`` times, each encoder is *diagnosed*: its features of the whole training set and
of the whole validation set (eval mode, no gradients) are scaled to ``[-1, 1]`` per dimension and
clustered by K-means with ``K = C``; the gap between the two cluster purities
``g_m = |purity_train - purity_val|`` measures how much the encoder has over-fitted. The encoder is
then softly re-initialised towards its initial weights with strength ``a_m = tanh(lambda g_m)``::

    theta <- a_m theta_init + (1 - a_m) theta      (every parameter of encoder m)

The defaults (``lambda`` 3, every 20 epochs, 3 times) are those of ``code/script/ours.sh`` in
GeWu-Lab/Diagnosing_Relearning_ECCV2024, whose ``code/ours.py`` this rule follows. The validation
split is the engine's (never the test split). Under DDP the features of all ranks
are gathered, the purities are computed once (rank 0) and shared, so every rank applies the same
re-initialisation.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import torch

from ..errors import ConfigError
from ..models.model import MultimodalModel
from .base import EpochData, Method
from .distributed import all_reduce_sum, rank_and_world
from .features import encoder_features
from .registry import register_method


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """``(1/N) sum_clusters max_k |{i in cluster : y_i = k}|``."""
    _, label_ids = np.unique(labels, return_inverse=True)
    _, cluster_ids = np.unique(clusters, return_inverse=True)
    table = np.zeros((cluster_ids.max() + 1, label_ids.max() + 1), dtype=np.int64)
    np.add.at(table, (cluster_ids, label_ids), 1)
    return float(table.max(axis=1).sum() / len(labels))


def cluster_purity(features: np.ndarray, labels: np.ndarray, num_clusters: int, seed: int = 0) -> float:
    """Purity of K-means (``K = num_clusters``, k-means++, ``random_state=seed``) on the features
    min-max scaled to ``[-1, 1]`` per dimension."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import MinMaxScaler

    scaled = MinMaxScaler(feature_range=(-1, 1)).fit_transform(features)
    clusters_wanted = min(num_clusters, len(np.unique(scaled, axis=0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on tiny or degenerate sets
        clusters = KMeans(n_clusters=max(clusters_wanted, 1), random_state=seed, n_init="auto").fit_predict(scaled)
    return purity(labels, clusters)


def reinit_strengths(train_purity: torch.Tensor, val_purity: torch.Tensor, move_lambda: float) -> torch.Tensor:
    """``a_m = tanh(lambda |purity_train - purity_val|)``."""
    return torch.tanh(move_lambda * (train_purity - val_purity).abs())


@register_method
class ReLearning(Method):
    name = "relearning"
    min_modalities = 2

    def __init__(
        self, move_lambda: float = 3.0, reinit_epoch: int = 20, reinit_num: int = 3, seed: int | None = None
    ) -> None:
        super().__init__()
        if reinit_epoch < 1:
            raise ConfigError(f"method 'relearning': reinit_epoch must be >= 1, got {reinit_epoch}")
        self.move_lambda, self.reinit_epoch, self.reinit_num, self.seed = move_lambda, reinit_epoch, reinit_num, seed
        self.reinits = 0
        self.initial: dict[str, list[torch.Tensor]] | None = None

    def setup(self, model: MultimodalModel, optimizer=None, data=None) -> None:
        super().setup(model, optimizer, data)
        if self.initial is None:  # a resumed run keeps the initial weights from its checkpoint
            self.initial = {m: [p.detach().clone() for p in model.encoders[m].parameters()] for m in model.modalities}

    def due(self, epoch: int) -> bool:
        return epoch > 0 and epoch % self.reinit_epoch == 0 and self.reinits < self.reinit_num

    def on_epoch_end(self, epoch: int, model: MultimodalModel | None = None, data: EpochData | None = None) -> None:
        if model is None or not self.due(epoch):
            return
        if data is None:
            raise RuntimeError("method 'relearning' diagnoses encoders on the data: pass data to on_epoch_end")
        if self.initial is None:
            raise RuntimeError("method 'relearning' keeps the initial weights: call setup(model) first")
        train_purity, val_purity = self.diagnose(model, data)
        strengths = reinit_strengths(train_purity, val_purity, self.move_lambda)
        self.reinitialise(model, strengths)
        self.reinits += 1
        for index, m in enumerate(model.modalities):
            self._logs[f"purity_train/{m}"] = train_purity[index]
            self._logs[f"purity_val/{m}"] = val_purity[index]
            self._logs[f"reinit/{m}"] = strengths[index]

    def diagnose(self, model: MultimodalModel, data: EpochData) -> tuple[torch.Tensor, torch.Tensor]:
        """Cluster purities ``(M,)`` of every encoder's features on the training and validation
        splits (the same values on every rank)."""
        modalities = list(model.modalities)
        splits = [
            encoder_features(model, data.train_batches(), data.device),
            encoder_features(model, data.val_batches(), data.device),
        ]
        rank, _ = rank_and_world()
        values = torch.zeros(2, len(modalities), device=data.device)
        if rank == 0:
            for row, (features, labels) in enumerate(splits):
                y = labels.cpu().numpy()
                for column, m in enumerate(modalities):
                    values[row, column] = cluster_purity(
                        features[m].cpu().numpy(), y, model.head.num_classes, self.draw_seed
                    )
        values = all_reduce_sum(values)
        return values[0], values[1]

    def reinitialise(self, model: MultimodalModel, strengths: torch.Tensor) -> None:
        """``theta <- a_m theta_init + (1 - a_m) theta`` for every parameter of encoder m."""
        with torch.no_grad():
            for index, m in enumerate(model.modalities):
                a = strengths[index]
                for param, start in zip(model.encoders[m].parameters(), self.initial[m]):
                    if param.requires_grad:  # a frozen encoder (model.encoders.<m>.freeze) stays as it is
                        param.mul_(1 - a.to(param.dtype)).add_(start.to(param) * a.to(param.dtype))

    def state_dict(self) -> dict:
        state = {**super().state_dict(), "reinits": self.reinits}
        if self.initial is not None:
            state["initial"] = {m: [t.detach().cpu() for t in tensors] for m, tensors in self.initial.items()}
        return state

    def load_state_dict(self, state: Mapping) -> None:
        super().load_state_dict(state)
        self.reinits = int(state.get("reinits", 0))
        if state.get("initial") is not None:
            self.initial = {m: [torch.as_tensor(t) for t in tensors] for m, tensors in state["initial"].items()}

    def __repr__(self) -> str:
        return (
            f"ReLearning(move_lambda={self.move_lambda}, reinit_epoch={self.reinit_epoch}, "
            f"reinit_num={self.reinit_num})"
        )
