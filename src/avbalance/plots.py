"""Plots of training histories (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"fused": ("black", "-"), "audio": ("tab:orange", "--"), "visual": ("tab:blue", "-.")}


def plot_validation_accuracy(histories: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path) -> Path:
    """One panel per run: validation accuracy of the fused output and of each modality per epoch."""
    names = list(histories)
    columns = min(len(names), 3)
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False, sharey=True)
    for axis, name in zip(axes.flat, names):
        history = histories[name]
        epochs = [record["epoch"] for record in history]
        keys = sorted({k for record in history for k in record if k.startswith("val/acc")})
        for key in keys:
            output = key[len("val/acc_") :] if key != "val/acc" else "fused"
            color, line = STYLE.get(output, (None, ":"))
            axis.plot(epochs, [record.get(key) for record in history], line, color=color, label=output)
        axis.set_title(name)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    for axis in axes.flat[len(names) :]:
        axis.set_visible(False)
    axes[0][0].set_ylabel("validation accuracy")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
