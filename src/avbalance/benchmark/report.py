"""The suite's Markdown table (``README.md``), ``summary.json`` and PNG plots."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from .aggregate import REFERENCES, summary_stats

COLUMNS = [
    ("acc", "fused acc"),
    ("f1_macro", "fused F1"),
    ("acc_audio", "audio acc"),
    ("f1_macro_audio", "audio F1"),
    ("acc_visual", "visual acc"),
    ("f1_macro_visual", "visual F1"),
    ("gap_audio", "audio gap"),
    ("gap_visual", "visual gap"),
]


# Columns shown when the runs hold them (the runner stores them; older runs have none):
# test accuracy with a modality missing, and the model's cost.
MISSING_COLUMNS = [("audio", "acc with audio missing"), ("visual", "acc with visual missing")]
COST_COLUMNS = [
    ("params", lambda cost: cost["parameters"]["total"] / 1e6, "{:.2f} M"),
    ("MFLOPs/sample", lambda cost: cost["flops_per_sample"] / 1e6, "{:.1f}"),
    ("ms/step", lambda cost: cost.get("ms_per_step"), "{:.0f}"),
]


def missing_cell(results: list[dict[str, Any]], modality: str) -> str:
    values = [r["robustness"]["missing"].get(modality) for r in results if "missing" in r.get("robustness", {})]
    return cell(summary_stats(values))


def cost_cell(results: list[dict[str, Any]], read, pattern: str) -> str:
    """The mean over seeds of one cost figure; ``-`` when no run holds it."""
    values = [read(r["cost"]) for r in results if "cost" in r and read(r["cost"]) is not None]
    return pattern.format(sum(values) / len(values)) if values else "-"


def extra_columns(runs: dict[str, dict[int, dict[str, Any]]]) -> tuple[list[tuple[str, str]], bool]:
    """The missing-modality columns and whether to show the cost columns, as far as runs hold them."""
    results = [r for by_seed in runs.values() for r in by_seed.values()]
    held = {m for r in results for m in r.get("robustness", {}).get("missing", {})}
    return [(m, title) for m, title in MISSING_COLUMNS if m in held], any("cost" in r for r in results)


def cell(stats: dict[str, Any] | None) -> str:
    """``mean ± std [± ci95]`` in percent; ``-`` when there is no value."""
    if not stats or stats["n"] == 0:
        return "-"
    text = f"{100 * stats['mean']:.1f}"
    if stats["n"] > 1:
        text += f" ± {100 * stats['std']:.1f} [±{100 * stats['ci95']:.1f}]"
    return text


def order(summary: dict[str, Any]) -> list[str]:
    joint = [m for m in summary if m not in REFERENCES]
    return (
        (["baseline"] if "baseline" in joint else [])
        + sorted(m for m in joint if m != "baseline")
        + [r for r in REFERENCES if r in summary]
    )


def markdown_table(summary: dict[str, Any], runs: dict[str, dict[int, dict[str, Any]]]) -> str:
    missing, with_cost = extra_columns(runs)
    costs = COST_COLUMNS if with_cost else []
    header = ["method", "seeds", "val acc"] + [title for _, title in COLUMNS] + [title for _, title in missing]
    header += [title for title, _, _ in costs] + ["s/run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in order(summary):
        entry = summary[method]
        results = list(runs[method].values())
        seconds = [r.get("train_seconds", math.nan) for r in results]
        mean_seconds = sum(seconds) / len(seconds) if seconds else math.nan
        row = [method, str(len(entry["seeds"])), cell(entry["val_acc"])]
        row += [cell(entry.get(key)) for key, _ in COLUMNS] + [missing_cell(results, m) for m, _ in missing]
        row += [cost_cell(results, read, pattern) for _, read, pattern in costs]
        row += [f"{mean_seconds:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


LEGEND = (
    "Cells: mean ± sample standard deviation over seeds [± half-width of the 95 % Student-t "
    "confidence interval of the mean], in percent. *audio/visual acc* of a joint model: its "
    "audio-only / visual-only output (the branch's logits); of `audio_only` / `visual_only`: the "
    "unimodal reference model. *gap*: per seed, the branch accuracy of the joint model minus the "
    "accuracy of the unimodal reference of the same seed (negative: the branch learned less "
    "than it can on its own — the imbalance). *acc with audio/visual missing*: fused test accuracy with "
    "that modality's encoder feature replaced by zeros, as for the Shapley values. *params*, "
    "*MFLOPs/sample* (one inference forward pass; 2 FLOPs per multiply-accumulate) and *ms/step* (the "
    "method's training step on one batch, one thread, mean of 3 timed steps): see docs/robustness.md. "
    "*s/run*: training seconds per run."
)


def write_report(
    out: Path, summary: dict[str, Any], runs: dict[str, dict[int, dict[str, Any]]], info: dict[str, Any]
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(_json_safe({"info": info, "summary": summary}), indent=2))
    write_runs_csv(out / "runs.csv", runs)
    if info.get("command"):
        (out / "command.txt").write_text(info["command"] + "\n")
    plot_accuracy(summary, out / "accuracy.png", info)
    plot_gaps(summary, out / "imbalance.png", info)
    (out / "README.md").write_text(readme_text(summary, runs, info))


def readme_text(summary: dict[str, Any], runs: dict[str, dict[int, dict[str, Any]]], info: dict[str, Any]) -> str:
    """The suite's README: how to reproduce it, the table, the plots, the recipe and the files."""
    text = [
        f"# Benchmark: {info['suite']}{' (quick mode)' if info['quick'] else ''}",
        "",
        info["description"] + ".",
        "",
    ]
    if info.get("command"):
        text += ["Reproduce (from the repository root):", "", "```bash", info["command"], "```", ""]
    text += [
        f"{info['seeds']} seed(s), {info['epochs']} epochs per run; the best epoch is chosen by "
        f"`{info.get('select', 'val/acc')}` on the validation split, the numbers are on the test split.",
        "",
        LEGEND,
        "",
        markdown_table(summary, runs),
        "",
        "![test accuracy](accuracy.png)",
        "",
        "![imbalance](imbalance.png)",
        "",
        *recipe_lines(info),
        "",
        files_line(info),
        "",
    ]
    return "\n".join(text)


def recipe_lines(info: dict[str, Any]) -> list[str]:
    lines = ["## Recipe", "", "Shared overrides (`avbalance train --set ...`):", "", "```", *info["recipe"], "```"]
    lines += ["", "Per method:", ""]
    for name, overrides in info["method_overrides"].items():
        lines.append(f"- `{name}`: {' '.join(f'`{o}`' for o in overrides) or 'defaults'}")
    return lines


def files_line(info: dict[str, Any]) -> str:
    line = (
        "Per-run files: `runs/<method>/seed<k>/` (`metrics.json`, `history.json`, `config.yaml`, "
        "`run.json`); every run's figures, one row per method and seed: `runs.csv` (any mean, std or "
        "interval above can be recomputed from it); aggregated numbers: `summary.json`. Total training time "
        f"{info['train_seconds']:.0f} s (sum over runs)."
    )
    if info.get("trained"):
        reused = f" and reused {info['reused']} finished run(s)" if info.get("reused") else ""
        line += (
            f" The last invocation trained {info['trained']} run(s), {info.get('jobs', 1)} at a time, "
            f"in {info.get('wall_seconds', 0):.0f} s of wall-clock time{reused}."
        )
    return line


def run_rows(runs: dict[str, dict[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per run: method, seed, best epoch, training seconds and every validation and test figure."""
    rows = []
    for method in order({m: None for m in runs}):
        for seed, result in sorted(runs[method].items()):
            row: dict[str, Any] = {
                "method": method,
                "seed": seed,
                "best_epoch": result.get("best_epoch"),
                "train_seconds": result.get("train_seconds"),
            }
            for split in ("val", "test"):
                row.update({f"{split}/{k}": v for k, v in sorted(result.get(split, {}).items())})
            row.update({f"test/acc_{m}_missing": v for m, v in result.get("robustness", {}).get("missing", {}).items()})
            row.update({f"cost/{title}": read(result["cost"]) for title, read, _ in COST_COLUMNS if "cost" in result})
            rows.append(row)
    return rows


def write_runs_csv(path: Path, runs: dict[str, dict[int, dict[str, Any]]]) -> None:
    rows = run_rows(runs)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _bars(ax, summary, methods, keys, labels):
    import numpy as np

    width = 0.8 / len(keys)
    x = np.arange(len(methods))
    for i, (key, label) in enumerate(zip(keys, labels)):
        means = [
            100 * summary[m].get(key, {}).get("mean", math.nan) if summary[m].get(key) else math.nan for m in methods
        ]
        errors = [
            100 * summary[m][key]["ci95"] if summary[m].get(key) and summary[m][key]["n"] > 1 else 0.0 for m in methods
        ]
        errors = [0.0 if math.isnan(e) else e for e in errors]
        ax.bar(x + (i - (len(keys) - 1) / 2) * width, means, width, yerr=errors, capsize=2, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(methods, rotation=45, ha="right")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_accuracy(summary: dict[str, Any], path: Path, info: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = order(summary)
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(methods) + 2), 4))
    _bars(ax, summary, methods, ["acc", "acc_audio", "acc_visual"], ["fused", "audio branch", "visual branch"])
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{info['suite']}: mean test accuracy over {info['seeds']} seed(s), 95 % CI")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gaps(summary: dict[str, Any], path: Path, info: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in order(summary) if m not in REFERENCES]
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(methods) + 2), 4))
    _bars(
        ax, summary, methods, ["gap_audio", "gap_visual"], ["audio branch − audio-only", "visual branch − visual-only"]
    )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("accuracy gap (points)")
    ax.set_title(f"{info['suite']}: imbalance (branch vs unimodal model), 95 % CI")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _json_safe(value):
    """Undefined figures (a std over one seed) as null: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
