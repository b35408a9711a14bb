"""Utterance embeddings of a prepared cache: each modality's encoder output (``ModelOutput.features``)
and the fused embedding.

The fused embedding is the per-modality embeddings, each scaled to unit length, concatenated: its
cosine score is the mean of the per-modality cosine scores. It uses the modalities that the
checkpoint's model and the cache share; a checkpoint that shares none with the cache is an error.

Every clip of the cache (status ok) is embedded once, in eval mode and in manifest order, and the
result is saved to an ``.npz`` file; a later run reuses it while the checkpoint file and the cache
are unchanged.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..analysis.runs import eval_batch_size, load_run, pick_device, resolve_checkpoint
from ..data.collate import collate_samples
from ..data.datasets.cached import CachedClipDataset, LoaderOptions
from ..data.prepare.cache import META, PreparedCache
from ..errors import DataError
from ..models.model import lengths_of
from .scoring import unit_rows

FUSED = "fused"


@dataclass
class Embeddings:
    """``vectors[m]`` (N, D_m) float32 per modality, rows in the order of ``ids``."""

    ids: list[str]
    labels: list[str]
    vectors: dict[str, np.ndarray]

    @property
    def modalities(self) -> list[str]:
        return list(self.vectors)

    def output(self, name: str) -> np.ndarray:
        """One modality's embeddings, or the fused ones (unit-length modality embeddings concatenated)."""
        if name == FUSED:
            return np.concatenate([unit_rows(self.vectors[m]) for m in self.modalities], axis=1)
        return self.vectors[name]

    def index(self) -> dict[str, int]:
        return {clip: row for row, clip in enumerate(self.ids)}


def open_eval_cache(root: str | Path) -> PreparedCache:
    cache = PreparedCache(root)
    if not cache.ok_rows():
        raise DataError(f"{cache.root}: the cache holds no prepared clip")
    return cache


def cache_modalities(cache: PreparedCache) -> list[str]:
    return [m for m, spec in cache.modalities.items() if spec["kind"] != "wave"]


def fingerprint(checkpoint: Path, cache: PreparedCache) -> str:
    """What the embeddings depend on: the checkpoint file and the cache's current version."""
    stat = checkpoint.stat()
    meta = (cache.root / META).stat()
    return json.dumps(
        {
            "checkpoint": str(checkpoint.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "cache": str(cache.root.resolve()),
            "version": cache.meta.get("version"),
            "meta_mtime_ns": meta.st_mtime_ns,
        },
        sort_keys=True,
    )


def read_saved(path: Path, expected: str) -> Embeddings | None:
    """The embeddings saved at ``path`` if they were made from the same checkpoint and cache."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["fingerprint"]) != expected:
                return None
            modalities = json.loads(str(saved["modalities"]))
            return Embeddings(
                [str(i) for i in saved["ids"]],
                [str(label) for label in saved["labels"]],
                {m: saved[f"embedding/{m}"] for m in modalities},
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # unreadable or from another version: embed again


def save(path: Path, embeddings: Embeddings, stamp: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    arrays = {f"embedding/{m}": v for m, v in embeddings.vectors.items()}
    with open(tmp, "wb") as handle:
        np.savez(
            handle,
            ids=np.array(embeddings.ids),
            labels=np.array(embeddings.labels),
            fingerprint=np.array(stamp),
            modalities=np.array(json.dumps(embeddings.modalities)),
            **arrays,
        )
    os.replace(tmp, path)


class Embedder:
    """A trained model, loaded on first use (not at all when every embedding is already saved)."""

    def __init__(self, checkpoint: str | Path, batch_size: int | None = None, accelerator: str = "auto"):
        self.checkpoint = resolve_checkpoint(checkpoint)
        self.batch_size, self.device = batch_size, pick_device(accelerator)
        self._run = None

    def _loaded(self):
        if self._run is None:
            self._run = load_run(self.checkpoint, batch_size=self.batch_size)
            self._run.model.to(self.device)
        return self._run

    def embed(self, cache: PreparedCache, file: Path) -> Embeddings:
        """Every clip of ``cache``, saved to (or reused from) ``file``."""
        stamp = fingerprint(self.checkpoint, cache)
        saved = read_saved(file, stamp)
        if saved is not None:
            return saved
        embeddings = self._embed(cache)
        save(file, embeddings, stamp)
        return embeddings

    def shared_modalities(self, cache: PreparedCache) -> list[str]:
        model_modalities = list(self._loaded().model.modalities)
        shared = [m for m in model_modalities if m in cache_modalities(cache)]
        if not shared:
            raise DataError(
                f"{cache.root}: the cache holds {', '.join(cache_modalities(cache)) or 'no modality'}, "
                f"but {self.checkpoint} encodes {', '.join(model_modalities)}: no modality in common"
            )
        return shared

    @torch.no_grad()
    def _embed(self, cache: PreparedCache) -> Embeddings:
        run = self._loaded()
        modalities = self.shared_modalities(cache)
        rows = cache.ok_rows()
        dataset = CachedClipDataset(
            cache,
            rows,
            [int(r["label_index"]) for r in rows],
            modalities,
            loader_options(run.datamodule.test_set),
            train=False,
        )
        loader = DataLoader(dataset, batch_size=eval_batch_size(run.config), shuffle=False, collate_fn=collate_samples)
        chunks: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
        for batch in loader:
            for modality in modalities:
                inputs = {modality: batch[modality], **lengths_of(batch, [modality])}
                features = run.model.encode_modality(modality, {k: v.to(self.device) for k, v in inputs.items()})
                chunks[modality].append(features.float().cpu().numpy())
        vectors = {m: np.concatenate(c) for m, c in chunks.items()}
        return Embeddings([r["id"] for r in rows], [r["label"] for r in rows], vectors)


def loader_options(dataset) -> LoaderOptions:
    """How the run read its cached clips (frames per clip, image size, audio window), found on its
    test set through any wrapping subsets; evaluation reading (no augmentation) either way."""
    while not isinstance(dataset, CachedClipDataset) and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    options = dataset.options if isinstance(dataset, CachedClipDataset) else LoaderOptions()
    return LoaderOptions(
        frames=options.frames,
        image_size=options.image_size,
        augment=False,
        audio_frames=options.audio_frames,
        stats=dict(options.stats),
    )
