"""Mean, standard deviation and Student-t 95 % confidence intervals over seeds."""

from __future__ import annotations

import math
from typing import Any

# Two-sided 97.5 % quantiles of Student's t for 1..30 degrees of freedom (scipy is used when present).
_T975 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]

REFERENCES = {"audio_only": "audio", "visual_only": "visual"}
METRICS = ("acc", "f1_macro")


def t_quantile(dof: int) -> float:
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, dof))
    except ImportError:  # pragma: no cover
        return _T975[dof - 1] if dof <= len(_T975) else 1.96


def summary_stats(values: list[float]) -> dict[str, Any]:
    """``{"n", "mean", "std", "ci95"}``: sample std (ddof 1) and the half-width of the 95 % t-interval
    of the mean (NaN for fewer than two values)."""
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci95": math.nan}
    mean = sum(values) / n
    if n < 2:
        return {"n": 1, "mean": mean, "std": math.nan, "ci95": math.nan}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return {"n": n, "mean": mean, "std": std, "ci95": t_quantile(n - 1) * std / math.sqrt(n)}


def aggregate(runs: dict[str, dict[int, dict[str, Any]]], modalities=("audio", "visual")) -> dict[str, Any]:
    """Summarise per-run test metrics.

    ``runs``: ``{method: {seed: metrics.json content}}``; the references ``audio_only`` and
    ``visual_only`` are methods like the others. Returns ``{method: {key: stats}}`` where ``key`` is
    ``acc``/``f1_macro`` (fused output) and ``acc_<m>``/``f1_macro_<m>`` (each branch), plus
    ``gap_<m>``: per seed, the branch accuracy of the joint model minus the test accuracy of the
    unimodal ``<m>``-only model of the same seed (negative: the branch is under-trained).
    """
    summary: dict[str, Any] = {}
    reference_acc = {
        m: {seed: r["test"]["acc"] for seed, r in runs.get(name, {}).items()} for name, m in REFERENCES.items()
    }
    for method, by_seed in runs.items():
        seeds = sorted(by_seed)
        entry: dict[str, Any] = {"seeds": seeds}
        for metric in METRICS:
            entry[metric] = summary_stats([by_seed[s]["test"].get(metric) for s in seeds])
            entry["val_" + metric] = summary_stats([by_seed[s]["val"].get(metric) for s in seeds])
            for m in modalities:
                key = f"{metric}_{m}"
                if method in REFERENCES:  # a unimodal model: its only output is its branch
                    values = [by_seed[s]["test"].get(metric) for s in seeds] if REFERENCES[method] == m else []
                else:
                    values = [by_seed[s]["test"].get(key) for s in seeds if key in by_seed[s]["test"]]
                entry[key] = summary_stats(values)
        if method not in REFERENCES:
            for m in modalities:
                gaps = [
                    by_seed[s]["test"][f"acc_{m}"] - reference_acc[m][s]
                    for s in seeds
                    if f"acc_{m}" in by_seed[s]["test"] and s in reference_acc[m]
                ]
                entry[f"gap_{m}"] = summary_stats(gaps)
        summary[method] = entry
    return summary
