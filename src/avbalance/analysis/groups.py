"""Runs given to a report, grouped by config: runs whose configs differ only in seeds (and in
settings that do not change results: output folder, devices, data location, progress bar) are one
group, summarised by the mean and sample standard deviation over its runs."""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .runs import RunRecord

NON_RESULT_KEYS = {
    "out",
    "trainer.seed",
    "method.params.seed",
    "trainer.progress_bar",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "data.root",
    "data.num_workers",
    "data.eval_batch_size",
}
SECTION_ORDER = ("method", "data", "model", "optim", "trainer")
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]


@dataclass
class Run:
    name: str
    record: RunRecord
    analysis: dict[str, Any] | None = None  # Shapley values and confusion matrices on the report's split


@dataclass
class Group:
    label: str
    color: str
    runs: list[Run] = field(default_factory=list)

    @property
    def modalities(self) -> list[str]:
        return self.runs[0].record.modalities

    @property
    def seeds(self) -> list[int]:
        return [run.record.seed for run in self.runs]


# -- grouping --------------------------------------------------------------------------------------


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``; empty sections disappear."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def result_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flatten(config).items() if k not in NON_RESULT_KEYS}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _key_order(key: str) -> tuple[int, str]:
    section = key.split(".")[0]
    return (SECTION_ORDER.index(section) if section in SECTION_ORDER else len(SECTION_ORDER), key)


def _describe(key: str, value: Any) -> str:
    parts = key.split(".")
    if key == "method.name":
        return str(value)
    if value is None and parts[-1] == "modalities":
        value = "all"
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    short = parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]
    return f"{short}={value}"


def group_labels(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Name each group by the settings that tell it apart from the other groups."""
    flats = [result_config(c) for c in configs]
    if len(flats) > 1:
        keys = sorted({k for flat in flats for k in flat}, key=_key_order)
        keys = [k for k in keys if len({_canonical(flat.get(k, "<unset>")) for flat in flats}) > 1]
    else:
        keys = [k for k in ("method.name", "data.modalities") if flats[0].get(k) is not None]
    return [" ".join(_describe(k, flat[k]) for k in keys if k in flat) or "run" for flat in flats]


def run_names(folders: Sequence[Path]) -> list[str]:
    """Folder paths relative to their common parent (just the folder name for a single run)."""
    resolved = [f.resolve() for f in folders]
    if len(resolved) == 1:
        return [resolved[0].name]
    common = Path(os.path.commonpath(resolved))
    return [str(f.relative_to(common)) if f != common else f.name for f in resolved]


def group_runs(records: Sequence[RunRecord]) -> list[Group]:
    """Groups of runs sharing a config except for seeds, in the order their first run was given."""
    buckets: dict[str, list[Run]] = {}
    for name, record in zip(run_names([r.folder for r in records]), records):
        buckets.setdefault(_canonical(result_config(record.config)), []).append(Run(name, record))
    labels = group_labels([runs[0].record.config for runs in buckets.values()])
    return [
        Group(label, PALETTE[i % len(PALETTE)], runs) for i, (label, runs) in enumerate(zip(labels, buckets.values()))
    ]


def all_modalities(groups: Sequence[Group]) -> list[str]:
    seen: list[str] = []
    for group in groups:
        seen += [m for m in group.modalities if m not in seen]
    return seen


# -- statistics ------------------------------------------------------------------------------------


@dataclass
class Stat:
    mean: float
    std: float | None  # sample standard deviation; None for a single run
    n: int

    def text(self, scale: float = 100.0, digits: int = 1) -> str:
        mean = f"{self.mean * scale:.{digits}f}"
        return mean if self.std is None else f"{mean} ± {self.std * scale:.{digits}f}"


def summarise(values: Iterable[float | None]) -> Stat | None:
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    std = statistics.stdev(present) if len(present) > 1 else None
    return Stat(statistics.fmean(present), std, len(present))


def stat_text(stat: Stat | None, scale: float = 100.0, digits: int = 1) -> str:
    return "–" if stat is None else stat.text(scale, digits)


def group_metric(group: Group, read: Callable[[Run], float | None]) -> Stat | None:
    return summarise(read(run) for run in group.runs)


# -- what a run holds ------------------------------------------------------------------------------


def run_metric(run: Run, key: str, split: str) -> float | None:
    return run.record.metrics.get(split, {}).get(key)


def probe_accuracy(run: Run, representation: str, split: str) -> float | None:
    probe = run.record.probe
    return probe.get("accuracy", {}).get(representation, {}).get(split) if probe else None


def shapley_value(run: Run, key: str) -> float | None:
    """A modality's Shapley value, or another number of the Shapley result (``full``, ``empty``,
    ``imbalance_degree``)."""
    if not run.analysis:
        return None
    shapley = run.analysis["shapley"]
    return shapley["shapley"][key] if key in shapley["shapley"] else shapley.get(key)
