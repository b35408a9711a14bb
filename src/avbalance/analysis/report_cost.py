"""The report's cost table: parameters, FLOPs per sample, time per step and peak memory per group.

A run's cost is read from its ``metrics.json`` (``cost``, stored by the benchmark runner) and
otherwise measured on its best checkpoint (:func:`avbalance.analysis.cost.run_cost`) when the
report analyses checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import AvbalanceError
from .cost import run_cost
from .groups import Group, Run, stat_text, summarise
from .runs import load_run

COST_COLUMNS = ["group", "n", "params (M)", "MFLOPs/sample", "step MFLOPs/sample", "ms/step", "peak memory (MB)"]
COST_NOTE = (
    "Parameters of the whole model; FLOPs counted by torch.utils.flop_counter (matrix products and "
    "convolutions, 2 FLOPs per multiply-accumulate) for one inference forward pass and for one training step "
    "of the method (forward, extra passes, backward), per sample; ms/step: the method's training step on one "
    "training batch, mean of 3 timed steps after a warm-up; peak memory: CUDA max allocated, or the process's "
    "peak resident set on CPU (an upper bound). Mean ± std over the group's runs; see docs/robustness.md."
)
FIGURES: list[tuple[Callable[[dict[str, Any]], float | None], float, int]] = [
    (lambda cost: cost["parameters"]["total"], 1e-6, 3),
    (lambda cost: cost["flops_per_sample"], 1e-6, 2),
    (lambda cost: cost.get("step_flops_per_sample"), 1e-6, 2),
    (lambda cost: cost.get("ms_per_step"), 1.0, 1),
    (lambda cost: cost.get("peak_memory_mb"), 1.0, 0),
]


def measured_cost(run: Run, measure: bool, warn: Callable[[str], None]) -> dict[str, Any] | None:
    """The run's stored cost, else (``measure``) one measured on its best checkpoint."""
    stored = run.record.metrics.get("cost")
    if stored or not measure:
        return stored
    try:
        return run_cost(load_run(run.record.folder))
    except AvbalanceError as error:
        warn(f"{run.name}: left out of the cost table ({error})")
        return None


def cost_rows(groups: Sequence[Group], measure: bool, warn: Callable[[str], None]) -> list[tuple[Group, list[str]]]:
    rows = []
    for group in groups:
        costs = [cost for run in group.runs if (cost := measured_cost(run, measure, warn))]
        if costs:
            cells = [stat_text(summarise(read(c) for c in costs), scale, digits) for read, scale, digits in FIGURES]
            rows.append((group, [str(len(costs)), *cells]))
    return rows
