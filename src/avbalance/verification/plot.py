"""The DET plot: miss rate against false-alarm rate on normal-deviate (probit) axes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from statistics import NormalDist

import numpy as np

from .metrics import OperatingPoints

TICKS = [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9]
STYLE = {"fused": ("black", "-"), "audio": ("tab:orange", "--"), "visual": ("tab:blue", "-.")}
LIMITS = (0.0005, 0.95)


def probit(rates: np.ndarray) -> np.ndarray:
    inverse = np.vectorize(NormalDist().inv_cdf)
    return inverse(np.clip(rates, *LIMITS))


def plot_det(curves: Mapping[str, OperatingPoints], eers: Mapping[str, float], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.8, 4.6))
    for name, points in curves.items():
        color, line = STYLE.get(name, (None, ":"))
        axis.plot(
            probit(points.false_alarm),
            probit(points.miss),
            line,
            color=color,
            label=f"{name} (EER {100 * eers[name]:.2f} %)",
        )
    ticks = probit(np.array(TICKS))
    labels = [f"{100 * t:g}" for t in TICKS]
    axis.set_xticks(ticks, labels)
    axis.set_yticks(ticks, labels)
    axis.set_xlim(*probit(np.array(LIMITS)))
    axis.set_ylim(*probit(np.array(LIMITS)))
    axis.plot(axis.get_xlim(), axis.get_ylim(), color="grey", linewidth=0.5)  # the EER line
    axis.set_xlabel("false-alarm rate (%)")
    axis.set_ylabel("miss rate (%)")
    axis.set_title("DET curves")
    axis.grid(True, linewidth=0.3)
    axis.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
