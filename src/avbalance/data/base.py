"""The data contract shared by every dataset.

A dataset yields one sample per index as a dict: ``{modality: Tensor, ..., "label": int64 Tensor}``.
Modality tensors have a fixed per-sample shape given by :class:`DatasetInfo.input_shapes`:

* ``(C, F, T)`` -- a 2-D input such as a spectrogram (``audio``: ``(1, F, T)``) or one image;
* ``(C, T, H, W)`` -- a clip of ``T`` frames (``visual``: ``(3, T, H, W)``, ``flow``: ``(2, T, H, W)``);
* ``(D,)`` -- a feature vector;
* ``(T, F)`` -- a sequence of ``T`` feature vectors (``T`` may vary between samples);
* ``(T,)`` -- int64 token ids of a text (``T`` may vary between samples).

A modality listed in :attr:`DatasetInfo.variable_length` has a time axis whose length varies
between samples: :func:`avbalance.data.collate.collate_for` pads it per batch and adds
``<modality>_lengths``; every other modality is stacked as PyTorch's default collate does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch.utils.data import Dataset


def lengths_key(modality: str) -> str:
    """The batch key of a variable-length modality's true lengths ``(B,)``."""
    return f"{modality}_lengths"


@dataclass
class DatasetInfo:
    """What a model needs to know about a dataset."""

    name: str
    num_classes: int
    input_shapes: dict[str, tuple[int, ...]]
    class_names: list[str] | None = None
    # Encoder settings that suit the dataset's input sizes (see avbalance.models.build_model).
    recommended_encoder: dict = field(default_factory=dict)
    # modality -> "audio", "frames", "flow", "array", "sequence", "frame_stack" or "text"
    # (a missing modality: the encoder is chosen from its shape).
    input_kinds: dict[str, str] = field(default_factory=dict)
    # Modalities served with a variable time axis; their input_shapes hold the longest train length.
    variable_length: list[str] = field(default_factory=list)
    # Text modalities: the number of token ids, padding id 0 included.
    vocab_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.input_shapes)


@dataclass
class DatasetSplits:
    """The splits a dataset provides. ``val`` is None when the dataset has no validation split;
    the data module then carves one from ``train`` (never from ``test``)."""

    info: DatasetInfo
    train: Dataset
    test: Dataset
    val: Dataset | None = None


class TensorDictDataset(Dataset):
    """A dataset held in memory as one tensor per modality plus a label tensor."""

    def __init__(self, tensors: dict, labels):
        self.tensors = dict(tensors)
        self.labels = labels
        for modality, tensor in self.tensors.items():
            if len(tensor) != len(labels):
                raise ValueError(f"modality {modality!r} has {len(tensor)} samples but there are {len(labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        sample = {modality: tensor[index] for modality, tensor in self.tensors.items()}
        sample["label"] = self.labels[index]
        return sample
