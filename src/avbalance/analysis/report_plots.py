"""The report's figures (matplotlib, Agg backend). Each group of runs keeps one colour in every
figure; each output (fused, audio, visual, ...) keeps one line style."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .groups import Group, all_modalities, group_metric, probe_accuracy, run_metric, shapley_value

LINE_STYLES = {"fused": "-", "audio": "--", "visual": "-.", "flow": ":"}
PANEL_SIZE = (3.9, 3.0)
MAX_COLUMNS = 3
DPI = 110
FUSED = "fused"


def _mean_std(values_by_x: dict[float, list[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs = sorted(values_by_x)
    means = np.array([np.mean(values_by_x[x]) for x in xs])
    stds = np.array([np.std(values_by_x[x], ddof=1) if len(values_by_x[x]) > 1 else 0.0 for x in xs])
    return np.array(xs), means, stds


def history_curve(group: Group, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean and standard deviation over the group's runs of one ``history.json`` key."""
    by_epoch: dict[float, list[float]] = {}
    for run in group.runs:
        for record in run.record.history:
            if record.get(key) is not None:
                by_epoch.setdefault(record["epoch"], []).append(record[key])
    return _mean_std(by_epoch)


def _legend_below(figure, handles: list) -> None:
    columns = min(len(handles), 4)
    rows = math.ceil(len(handles) / columns) if handles else 0
    height = figure.get_figheight()
    bottom = (0.28 * rows + 0.15) / height
    figure.legend(handles=handles, loc="lower center", ncol=columns, frameon=False, fontsize=9)
    figure.tight_layout(rect=(0, bottom, 1, 1))


def _group_handles(groups: Sequence[Group]) -> list:
    return [Patch(color=group.color, label=group.label) for group in groups]


def _save(figure, path: Path) -> str:
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path.name


def _panels(count: int, extra_height: float = 0.6, panel_height: float = PANEL_SIZE[1]):
    """A grid of ``count`` panels, at most ``columns`` a row (unused cells hidden), so that figures keep
    one scale on the page."""
    rows = math.ceil(count / MAX_COLUMNS)
    columns = math.ceil(count / rows)  # balanced rows: 4 panels are 2 x 2, not 3 + 1
    figure, axes = plt.subplots(
        rows, columns, figsize=(PANEL_SIZE[0] * columns, panel_height * rows + extra_height), squeeze=False
    )
    cells = list(axes.flat)
    for axis in cells[count:]:
        axis.set_visible(False)
    return figure, cells[:count]


def _style(axis, title: str, xlabel: str, ylabel: str | None = None) -> None:
    axis.set_title(title, fontsize=11)
    if xlabel == "epoch":
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel(xlabel)
    if ylabel:
        axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.spines[["top", "right"]].set_visible(False)


def _plot_band(axis, curve: tuple[np.ndarray, np.ndarray, np.ndarray], color, linestyle: str) -> None:
    """A mean curve ``(epochs, mean, std)`` with its ± std band; markers only while they stay readable."""
    epochs, mean, std = curve
    marker = "o" if len(epochs) <= 20 else None
    axis.plot(epochs, mean, color=color, linestyle=linestyle, linewidth=1.8, marker=marker, markersize=3)
    axis.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)


def plot_learning_curves(groups: Sequence[Group], path: Path, split: str, with_loss: bool = False) -> str:
    """One panel per output (and the loss), one line per group: mean over runs, band ± std."""
    panels = [FUSED, *all_modalities(groups)] + (["loss"] if with_loss else [])
    figure, axes = _panels(len(panels))
    for axis, panel in zip(axes, panels):
        key = f"{split}/loss" if panel == "loss" else f"{split}/acc" + ("" if panel == FUSED else f"_{panel}")
        for group in groups:
            curve = history_curve(group, key)
            if len(curve[0]):
                _plot_band(axis, curve, group.color, LINE_STYLES.get(panel, "-"))
        ylabel = "loss" if panel == "loss" else "accuracy"
        _style(axis, "training loss" if panel == "loss" else f"{panel} ({split})", "epoch", ylabel)
    _legend_below(figure, _group_handles(groups))
    return _save(figure, path)


def method_curves(group: Group) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """``{quantity: {modality: (epochs, mean, std)}}`` from the runs' ``method/<quantity>/<m>_epoch`` logs."""
    collected: dict[str, dict[str, dict[float, list[float]]]] = {}
    for run in group.runs:
        for row in run.record.method_logs:
            for key, value in row.items():
                if not key.startswith("method/"):
                    continue
                name = key[len("method/") : -len("_epoch")]
                quantity, _, modality = name.rpartition("/")
                collected.setdefault(quantity or name, {}).setdefault(modality, {}).setdefault(row["epoch"], []).append(
                    value
                )
    return {q: {m: _mean_std(v) for m, v in by_modality.items()} for q, by_modality in collected.items()}


def plot_method_logs(groups: Sequence[Group], path: Path) -> bool:
    """One panel per logged quantity (coefficient, ratio, ...); colour = group, line style = modality."""
    curves = [method_curves(group) for group in groups]
    quantities = sorted({q for by_quantity in curves for q in by_quantity})
    if not quantities:
        return False
    figure, axes = _panels(len(quantities))
    modalities: list[str] = []
    for axis, quantity in zip(axes, quantities):
        for group, group_curves in zip(groups, curves):
            for modality, curve in group_curves.get(quantity, {}).items():
                modalities += [modality] if modality not in modalities else []
                _plot_band(axis, curve, group.color, LINE_STYLES.get(modality, ":"))
        _style(axis, quantity, "epoch", "epoch mean")
    with_logs = [group for group, group_curves in zip(groups, curves) if group_curves]
    handles = _group_handles(with_logs) + [
        Line2D([], [], color="0.3", linestyle=LINE_STYLES.get(m, ":"), label=m) for m in modalities if m
    ]  # "" = a quantity not per modality
    _legend_below(figure, handles)
    _save(figure, path)
    return True


def _bar_label(axis, bars, values: Sequence[float]) -> None:
    axis.bar_label(bars, labels=[f"{100 * v:.1f}" for v in values], fontsize=8, padding=2)


def plot_modality_accuracy(groups: Sequence[Group], path: Path, split: str) -> str:
    """Per modality: the accuracy of its own logits in every group, and of a linear probe on its encoder."""
    modalities = all_modalities(groups)
    figure, axes = _panels(len(modalities))
    any_probe = False
    for axis, modality in zip(axes, modalities):
        present = [g for g in groups if modality in g.modalities]
        for x, group in enumerate(present):
            head = group_metric(group, lambda run, m=modality: run_metric(run, f"acc_{m}", split))
            probe = group_metric(group, lambda run, m=modality: probe_accuracy(run, m, split))
            if head is not None:
                bars = axis.bar(x - 0.2, head.mean, 0.38, yerr=head.std, color=group.color, capsize=3)
                _bar_label(axis, bars, [head.mean])
            if probe is not None:
                any_probe = True
                bars = axis.bar(
                    x + 0.2,
                    probe.mean,
                    0.38,
                    yerr=probe.std,
                    color=group.color,
                    alpha=0.45,
                    hatch="//",
                    edgecolor="white",
                    capsize=3,
                )
                _bar_label(axis, bars, [probe.mean])
        axis.set_xticks([])
        axis.set_ylim(0, 1.08)
        _style(axis, f"{modality} ({split})", "", "accuracy")
    handles = _group_handles(groups)
    if any_probe:
        handles += [
            Patch(facecolor="0.4", label="own logits"),
            Patch(facecolor="0.75", hatch="//", edgecolor="white", label="linear probe"),
        ]
    _legend_below(figure, handles)
    return _save(figure, path)


def plot_shapley(groups: Sequence[Group], path: Path) -> bool:
    """Grouped bars: each modality's Shapley value per group (accuracy points)."""
    analysed = [g for g in groups if any(run.analysis for run in g.runs)]
    if not analysed:
        return False
    modalities = all_modalities(analysed)
    figure, axes = _panels(1, extra_height=0.6)
    figure.set_figwidth(max(5.5, 1.2 * len(modalities) * len(analysed) + 2))
    axis = axes[0]
    width = 0.8 / len(analysed)
    for index, group in enumerate(analysed):
        offsets = [m + (index - (len(analysed) - 1) / 2) * width for m in range(len(modalities))]
        stats = [group_metric(group, lambda run, m=m: shapley_value(run, m)) for m in modalities]
        kept = [(x, s) for x, s in zip(offsets, stats) if s is not None]
        errors = [s.std or 0 for _, s in kept] if any(s.std for _, s in kept) else None
        bars = axis.bar(
            [x for x, _ in kept], [s.mean for _, s in kept], width * 0.92, color=group.color, yerr=errors, capsize=3
        )
        _bar_label(axis, bars, [s.mean for _, s in kept])
    axis.axhline(0, color="0.3", linewidth=0.8)
    axis.set_xticks(range(len(modalities)), modalities)
    _style(axis, "Shapley value per modality", "", "accuracy points")
    _legend_below(figure, _group_handles(analysed))
    _save(figure, path)
    return True


def summed_confusion(group: Group) -> tuple[list[str], dict[str, list[list[int]]]] | None:
    """Class names and each output's confusion matrix summed over the group's analysed runs."""
    analysed = [run.analysis["confusion"] for run in group.runs if run.analysis]
    if not analysed:
        return None
    outputs = analysed[0]["outputs"]
    summed = {
        name: np.sum([np.array(a["outputs"][name]["matrix"]) for a in analysed], axis=0).tolist() for name in outputs
    }
    return analysed[0]["class_names"], summed


def plot_confusion(group: Group, path: Path) -> bool:
    summed = summed_confusion(group)
    if summed is None:
        return False
    class_names, matrices = summed
    count = len(class_names)
    figure, axes = _panels(len(matrices), extra_height=0.2, panel_height=PANEL_SIZE[0] + 0.6)
    for axis, (output, matrix) in zip(axes, matrices.items()):
        counts = np.array(matrix, dtype=float)
        rows = counts.sum(axis=1, keepdims=True)
        normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
        accuracy = np.trace(counts) / max(counts.sum(), 1)
        axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        if count <= 12:
            for (i, j), value in np.ndenumerate(normalised):
                axis.text(
                    j,
                    i,
                    f"{100 * value:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value > 0.6 else "0.2",
                )
        ticks = range(count) if count <= 30 else []
        labels = class_names if count <= 30 else []
        axis.set_xticks(ticks, labels, rotation=90, fontsize=7)
        axis.set_yticks(ticks, labels, fontsize=7)
        axis.set_title(f"{output} (acc {100 * accuracy:.1f}%)", fontsize=11)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
    figure.tight_layout()
    _save(figure, path)
    return True
