"""The report's robustness figure: fused accuracy with each modality missing and under each
corruption level, one line per run, coloured by the run's group.

A run holds robustness results when its ``metrics.json`` has a ``robustness`` entry (the benchmark
runner stores the missing-modality accuracies there) or its folder has ``robustness.json``
(``avbalance test --robustness``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .groups import Group, Run  # noqa: E402
from .robustness import CORRUPTIONS, ROBUSTNESS_FILE, UNITS  # noqa: E402

PANEL_SIZE = (3.9, 3.0)
MAX_COLUMNS = 3
DPI = 110


def run_robustness(run: Run) -> dict[str, Any] | None:
    """The run's robustness results: ``robustness.json`` in its folder, else ``metrics.json``'s entry."""
    path = run.record.folder / ROBUSTNESS_FILE
    if path.is_file():
        return json.loads(path.read_text())
    return run.record.metrics.get("robustness")


def robustness_panels(results: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(corruption, modality)`` panels present in any result, ``("missing", "")`` first."""
    panels = [("missing", "")] if any(r.get("missing") for r in results) else []
    for name in CORRUPTIONS:
        modalities = dict.fromkeys(m for r in results for m in r.get(name, {}))
        panels += [(name, modality) for modality in modalities]
    return panels


def panel_points(result: dict[str, Any], name: str, modality: str) -> tuple[list[str], list[float]]:
    """Labels and accuracies of one run's line: the clean accuracy first, when stored, then the levels."""
    if name == "missing":
        curve = result.get("missing", {})
        labels, values = [f"no {m}" for m in curve], list(curve.values())
    else:
        curve = result.get(name, {}).get(modality, {})
        labels, values = list(curve), list(curve.values())
    if "clean" in result and values:
        labels, values = ["clean", *labels], [result["clean"], *values]
    return labels, values


def plot_robustness(groups: Sequence[Group], path: Path) -> bool:
    """One panel for the missing modalities and one per (corruption, modality); False when no run holds results."""
    lines = [(group, run, result) for group in groups for run in group.runs if (result := run_robustness(run))]
    panels = robustness_panels([result for _, _, result in lines])
    if not panels:
        return False
    rows = math.ceil(len(panels) / MAX_COLUMNS)
    columns = math.ceil(len(panels) / rows)
    figure, axes = plt.subplots(
        rows, columns, figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows + 0.8), squeeze=False
    )
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    for axis, (name, modality) in zip(axes.flat, panels):
        labels: list[str] = []
        for group, _, result in lines:
            points, values = panel_points(result, name, modality)
            if values:
                style = "none" if name == "missing" else "-"  # separate removals, not a curve
                axis.plot(
                    range(len(values)),
                    [100 * v for v in values],
                    marker="o",
                    linestyle=style,
                    color=group.color,
                    alpha=0.8,
                )
                labels = points if len(points) > len(labels) else labels
        axis.set_xticks(range(len(labels)), labels, fontsize=8)
        axis.set_title("modality missing" if name == "missing" else f"{name} on {modality}", fontsize=11)
        axis.set_xlabel("" if name == "missing" else UNITS[name], fontsize=8)
        axis.set_ylabel("fused accuracy (%)")
        axis.grid(alpha=0.3)
    shown = [group for group in groups if any(group is line_group for line_group, _, _ in lines)]
    figure.legend(
        handles=[Patch(color=g.color, label=g.label) for g in shown],
        loc="lower center",
        ncol=min(len(shown), 4),
        frameon=False,
        fontsize=9,
    )
    figure.tight_layout(rect=(0, 0.35 * math.ceil(len(shown) / 4) / figure.get_figheight(), 1, 1))
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return True
