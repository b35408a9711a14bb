"""Datasets read from a prepared cache (see ``avbalance.data.prepare.cache``).

A sample is ``{modality: Tensor, ..., "label": int64 Tensor}``:

* audio features: ``(1, F, T)`` float32; with ``audio_frames`` a window of T columns (random in
  training when ``augment`` is on, the centre otherwise);
* frames: ``(3, K, H, W)`` float32 normalised (ImageNet mean/std unless the dataset says
  otherwise; grey images are repeated to 3 channels); flow: ``(2, K, H, W)``. The K frames come
  from K equal segments of the stored frames: a random frame per segment in training, the centre
  frame in evaluation, always in time order. Training with ``augment`` applies one random resized
  crop and one horizontal flip to all frames (and the flow) of a sample;
* arrays: the stored float32 array.

Random choices use torch's generator, which DataLoader seeds differently in every worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import RandomResizedCrop

from ...errors import ConfigError, DataError
from ..base import DatasetInfo, DatasetSplits
from ..declaration import DatasetDeclaration
from ..prepare.cache import MANIFEST, META, PreparedCache
from ..prepare.features import AudioRecipe
from ..prepare.options import PrepareOptions

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
GREY_STATS = ((0.1307,), (0.3081,))  # MNIST's statistics; BalanceMM also uses them for flow
CROP_SCALE = (0.08, 1.0)
VAL_FRACTION = 0.1  # share of train carved out for validation when a cache has no val split
VAL_SEED = 0
CROP_RATIO = (3 / 4, 4 / 3)


def open_cache(root, dataset: str) -> PreparedCache:
    """The cache at ``root``, checked to hold ``dataset``."""
    if root is None:
        raise ConfigError(
            f"dataset {dataset!r} reads a prepared cache: pass --data CACHE, a folder made by "
            f"'avbalance prepare {dataset} --root RAW --out CACHE'"
        )
    cache = PreparedCache(root)
    if cache.dataset != dataset:
        raise DataError(f"{cache.root / META}: this cache holds {cache.dataset!r}, not {dataset!r}")
    return cache


def audio_window(cache: PreparedCache, seconds: float | None) -> int | None:
    """How many audio feature columns ``seconds`` of sound give with the cache's recipe (None: all)."""
    if not seconds or not cache.settings.get("audio"):
        return None
    return AudioRecipe(**{**cache.settings["audio"], "seconds": seconds}).shape()[1]


@dataclass
class LoaderOptions:
    frames: int = 3
    image_size: int | None = None  # None: the stored size
    augment: bool = True
    audio_frames: int | None = None  # None: every stored feature column
    stats: dict[str, tuple] = field(default_factory=dict)  # per modality (mean, std); default ImageNet / grey

    def validate(self) -> None:
        if not isinstance(self.frames, int) or self.frames < 1:
            raise ConfigError(f"option frames must be a positive integer, got {self.frames!r}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 8):
            raise ConfigError(f"option image_size must be an integer of at least 8, got {self.image_size!r}")
        if not isinstance(self.augment, bool):
            raise ConfigError(f"option augment must be true or false, got {self.augment!r}")


def windowed_options(
    cache: PreparedCache, frames: int, image_size: int | None, augment: bool, audio_seconds: float | None
) -> LoaderOptions:
    """Loader options that feed the model ``audio_seconds`` of each clip's stored audio features
    (a random window in training, the centred one in evaluation; None: all of it)."""
    window = audio_window(cache, audio_seconds)
    return LoaderOptions(frames=frames, image_size=image_size, augment=augment, audio_frames=window)


def segment_indices(count: int, k: int, train: bool) -> np.ndarray:
    """K indices into ``count`` frames, one per equal segment, non-decreasing (time order)."""
    edges = torch.linspace(0, count, k + 1, dtype=torch.float64)
    low, width = edges[:-1], edges[1:] - edges[:-1]
    positions = low + (torch.rand(k, dtype=torch.float64) if train else 0.5) * width
    return positions.long().clamp_(0, count - 1).numpy()


class CachedClipDataset(Dataset):
    """One split of a prepared cache."""

    def __init__(
        self,
        cache: PreparedCache,
        rows: list[dict],
        labels: list[int],
        modalities: list[str],
        options: LoaderOptions,
        train: bool,
    ):
        self.cache = cache
        self.modalities = modalities
        self.kinds = {m: cache.modalities[m]["kind"] for m in modalities}
        self.row_shapes = {m: tuple(cache.modalities[m]["row_shape"]) for m in modalities}
        self.ids = [row["id"] for row in rows]
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.offsets = {m: np.array([int(r[f"{m}_offset"]) for r in rows], dtype=np.int64) for m in modalities}
        self.counts = {m: np.array([int(r[f"{m}_count"]) for r in rows], dtype=np.int64) for m in modalities}
        self.options = options
        self.train = train

    def __len__(self) -> int:
        return len(self.ids)

    def input_shape(self, modality: str) -> tuple[int, ...]:
        kind, row = self.kinds[modality], self.row_shapes[modality]
        if kind == "feature":
            window = self.options.audio_frames
            return (1, row[0], min(window, row[1]) if window else row[1])
        if kind in ("frames", "flow"):
            size = self.options.image_size or row[0]
            channels = 2 if kind == "flow" else 3
            return (channels, self.options.frames, size, size)
        return row

    def __getitem__(self, index: int) -> dict:
        crop = self._draw_crop()
        sample = {}
        for modality in self.modalities:
            offset, count = self.offsets[modality][index], self.counts[modality][index]
            kind = self.kinds[modality]
            if kind == "feature":
                sample[modality] = self._features(modality, offset)
            elif kind in ("frames", "flow"):
                sample[modality] = self._frames(modality, offset, count, crop)
            else:
                sample[modality] = torch.from_numpy(np.array(self.cache.array(modality)[offset], dtype=np.float32))
        sample["label"] = self.labels[index]
        return sample

    def _features(self, modality: str, offset: int) -> torch.Tensor:
        features = self.cache.array(modality)[offset]
        window, total = self.options.audio_frames, features.shape[1]
        if window and window < total:
            start = int(torch.randint(0, total - window + 1, ())) if self._random() else (total - window) // 2
            features = features[:, start : start + window]
        return torch.from_numpy(np.array(features, dtype=np.float32))[None]

    def _frames(self, modality: str, offset: int, count: int, crop) -> torch.Tensor:
        indices = offset + segment_indices(int(count), self.options.frames, self.train)
        clip = np.array(self.cache.array(modality)[indices])  # (K, H, W, C) uint8
        size = self.options.image_size or clip.shape[2]
        if crop is not None:
            clip = _apply_crop(clip, crop, size, is_flow=self.kinds[modality] == "flow")
        elif clip.shape[1:3] != (size, size):
            clip = np.stack([_resize(frame, (0, 0, frame.shape[1], frame.shape[0]), size) for frame in clip])
        mean, std = self.options.stats.get(modality, IMAGENET_STATS if clip.shape[-1] == 3 else GREY_STATS)
        values = (clip.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        if values.shape[-1] == 1 and self.kinds[modality] == "frames":
            values = np.repeat(values, 3, axis=-1)  # grey images feed the 3-channel visual encoder
        return torch.from_numpy(np.ascontiguousarray(values.transpose(3, 0, 1, 2)))  # (C, K, H, W)

    def _random(self) -> bool:
        return self.train and self.options.augment

    def _draw_crop(self):
        """One random resized crop + flip shared by every frame modality of the sample."""
        if not self._random() or not any(k in ("frames", "flow") for k in self.kinds.values()):
            return None
        top, left, height, width = RandomResizedCrop.get_params(torch.empty(1, 1000, 1000), CROP_SCALE, CROP_RATIO)
        return top / 1000, left / 1000, height / 1000, width / 1000, bool(torch.rand(()) < 0.5)


# Per-sample image work uses NumPy and Pillow, which run on the calling thread: with the default of
# no loader worker processes, torch's intra-op threads would compete with training for the cores.


def _apply_crop(clip: np.ndarray, crop, size: int, is_flow: bool) -> np.ndarray:
    """Crop the same relative box out of every ``(H, W, C)`` frame, resize it, maybe mirror it."""
    top, left, height, width, flip = crop
    h, w = clip.shape[1:3]
    box = (left * w, top * h, (left + width) * w, (top + height) * h)
    clip = np.stack([_resize(frame, box, size) for frame in clip])
    if flip:
        clip = clip[:, :, ::-1]
        if is_flow:  # mirroring the image reverses horizontal motion (flow stored around 128)
            clip = np.concatenate([255 - clip[..., :1], clip[..., 1:]], axis=-1)
    return clip


def _resize(frame: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """The ``box`` (left, top, right, bottom) of an ``(H, W, C)`` uint8 frame as ``(size, size, C)``
    (bilinear, antialiased when shrinking)."""
    if frame.shape[-1] == 3:
        image = Image.fromarray(frame, "RGB").resize((size, size), Image.Resampling.BILINEAR, box=box)
        return np.asarray(image)
    channels = [
        Image.fromarray(frame[..., c], "L").resize((size, size), Image.Resampling.BILINEAR, box=box)
        for c in range(frame.shape[-1])
    ]
    return np.stack([np.asarray(c) for c in channels], axis=-1)


def _check_arrays(cache: PreparedCache, modalities: list[str]) -> None:
    """Open every array now, so a damaged cache fails with one line before training starts."""
    rows = cache.ok_rows()
    for modality in modalities:
        array = cache.array(modality)
        needed = max((int(r[f"{modality}_offset"]) + int(r[f"{modality}_count"]) for r in rows), default=0)
        if len(array) < needed:
            path = cache.version_dir / f"{modality}.npy"
            raise DataError(f"{path}: holds {len(array)} rows, the manifest needs {needed}; prepare the cache again")


def _carve(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    count = max(1, round(len(rows) * fraction))
    chosen = set(torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:count].tolist())
    return [r for i, r in enumerate(rows) if i not in chosen], [r for i, r in enumerate(rows) if i in chosen]


def build_splits(
    cache: PreparedCache,
    options: LoaderOptions,
    *,
    name: str | None = None,
    label_column: str = "label",
    class_names: list[str] | None = None,
    split_of: Callable[[dict], str | None] | None = None,
    modalities: list[str] | None = None,
    recommended_encoder: dict | None = None,
) -> DatasetSplits:
    """Train / val / test datasets of a cache.

    When the cache has no val clips, a seeded 10 % of the train clips becomes the val split, read
    like the test split (segment centres, no augmentation): model selection never sees test data
    and never sees augmented samples.
    """
    options.validate()
    class_names = class_names or cache.class_names
    modalities = modalities or [m for m, spec in cache.modalities.items() if spec["kind"] != "wave"]
    split_of = split_of or (lambda row: row["split"])
    manifest = cache.version_dir / MANIFEST
    by_split: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for row in cache.ok_rows():
        split = split_of(row)
        if split in by_split:
            by_split[split].append(row)
    for split in ("train", "test"):
        if not by_split[split]:
            raise DataError(f"{manifest}: no prepared clip in the {split} split")
    _check_arrays(cache, modalities)
    if not by_split["val"] and len(by_split["train"]) > 1:
        by_split["train"], by_split["val"] = _carve(by_split["train"], VAL_FRACTION, VAL_SEED)
    index = {label: i for i, label in enumerate(class_names)}

    def label_of(row: dict) -> int:
        if label_column == "label":
            return int(row["label_index"])
        if row.get(label_column) not in index:
            raise DataError(f"{manifest}: clip {row['id']} has unknown {label_column} {row.get(label_column)!r}")
        return index[row[label_column]]

    def make(split: str, train: bool) -> CachedClipDataset | None:
        rows = by_split[split]
        if not rows:
            return None
        return CachedClipDataset(cache, rows, [label_of(r) for r in rows], modalities, options, train)

    train = make("train", True)
    info = DatasetInfo(
        name=name or cache.dataset,
        num_classes=len(class_names),
        input_shapes={m: train.input_shape(m) for m in modalities},
        class_names=list(class_names),
        recommended_encoder=dict(recommended_encoder or {}),
    )
    return DatasetSplits(info=info, train=train, val=make("val", False), test=make("test", False))


class PreparedDataset(DatasetDeclaration):
    """A dataset prepared from raw files and loaded from its cache. The default loader reads
    ``frames`` frames per clip (random segment positions in training), resized to ``image_size``
    (default: the stored size), with ``augment`` (crop + flip) on the train split."""

    Options = PrepareOptions

    @classmethod
    def open(cls, root: str | None) -> PreparedCache:
        return open_cache(root, cls.name)

    @classmethod
    def load(
        cls, root: str | None = None, frames: int = 3, image_size: int | None = None, augment: bool = True
    ) -> DatasetSplits:
        return build_splits(cls.open(root), LoaderOptions(frames=frames, image_size=image_size, augment=augment))
