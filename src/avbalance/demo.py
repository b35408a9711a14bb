"""``avbalance demo``: the imbalance phenomenon and two remedies on the built-in ``synthetic`` data.

Trains, with one small-model recipe: joint ``baseline``, ``ogm_ge``, ``mmcosine``, and audio-only
and visual-only references; prints fused / audio / visual test accuracy per run, and writes
``results.json``, ``val_accuracy.png`` and every run's folder under ``--out``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .engine import load_config, train
from .plots import plot_validation_accuracy

RECIPE = [
    "data.dataset=synthetic",
    "data.batch_size=64",
    "optim.name=sgd",
    "optim.lr=0.01",
    "optim.step_size=10",
    "trainer.progress_bar=false",
]

RUNS: dict[str, list[str]] = {
    "baseline": ["method.name=baseline"],
    "ogm_ge": ["method.name=ogm_ge", "method.params.alpha=0.5"],
    "mmcosine": ["method.name=mmcosine", "method.params.scaling=10"],
    "audio_only": ["data.modalities=[audio]"],
    "visual_only": ["data.modalities=[visual]"],
}


def summarise(test_metrics: dict[str, float]) -> dict[str, float]:
    """``{"fused": acc, "audio": acc_audio, "visual": acc_visual}`` (modalities the run has)."""
    summary = {"fused": test_metrics["acc"]}
    summary.update({k[len("acc_") :]: v for k, v in test_metrics.items() if k.startswith("acc_")})
    return summary


def run_demo(
    out: str | Path = "runs/demo", epochs: int = 15, seed: int = 0, runs: list[str] | None = None, report=print
) -> dict[str, Any]:
    out = Path(out)
    results, histories = {}, {}
    for name in runs or list(RUNS):
        overrides = RECIPE + RUNS[name] + [f"trainer.epochs={epochs}", f"trainer.seed={seed}", f"out={out / name}"]
        report(f"training {name} ...")
        metrics = train(load_config(overrides=overrides))
        results[name] = summarise(metrics["test"])
        histories[name] = json.loads((out / name / "history.json").read_text())
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot_validation_accuracy(histories, out / "val_accuracy.png")
    return results
