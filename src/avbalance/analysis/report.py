"""``avbalance report RUN...``: one self-contained HTML page comparing training runs.

The page (``index.html``, inline CSS, no scripts, nothing fetched from the network) and its
figures (PNG files beside it) are written to one folder. Runs whose configs differ only in seeds
(and in settings that do not change results: output folder, devices, data location, progress bar)
form a *group*; tables show the group's mean ± sample standard deviation over its runs.
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import AvbalanceError
from . import report_plots as plots
from .analyse import analyse_run
from .groups import (
    Group,
    all_modalities,
    group_metric,
    group_runs,
    probe_accuracy,
    run_metric,
    shapley_value,
    stat_text,
    summarise,
)
from .probe import CONCAT, probe_run
from .report_cost import COST_COLUMNS, COST_NOTE, cost_rows
from .report_robustness import plot_robustness
from .runs import load_run, read_run
from .shapley import check_removal

# -- tables ----------------------------------------------------------------------------------------


@dataclass
class Table:
    columns: list[str]
    rows: list[tuple[Group, list[str]]]  # the group (its label and colour) and the other cells
    note: str = ""


def runs_table(groups: Sequence[Group]) -> Table:
    rows = []
    for group in groups:
        config = group.runs[0].record.config
        method = config.get("method", {})
        params = ", ".join(f"{k}={v}" for k, v in method.get("params", {}).items() if k != "seed")
        best = ", ".join(str(run.record.metrics.get("best_epoch", "?")) for run in group.runs)
        rows.append(
            (
                group,
                [
                    "\n".join(run.name for run in group.runs),
                    ", ".join(str(s) for s in group.seeds),
                    method.get("name", "?") + (f" ({params})" if params else ""),
                    ", ".join(group.modalities),
                    config.get("model", {}).get("fusion", "?"),
                    str(config.get("trainer", {}).get("epochs", "?")),
                    best,
                ],
            )
        )
    return Table(["group", "runs", "seeds", "method", "modalities", "fusion", "epochs", "best epoch"], rows)


def metrics_table(groups: Sequence[Group], split: str = "test") -> Table:
    modalities = all_modalities(groups)
    columns = ["group", "n", "val acc", f"{split} acc", "F1 (macro)", "mAP", *(f"acc {m}" for m in modalities)]
    rows = []
    for group in groups:

        def metric(key: str, which: str = split, group=group) -> str:
            return stat_text(group_metric(group, lambda run: run_metric(run, key, which)))

        cells = [str(len(group.runs)), metric("acc", "val"), metric("acc"), metric("f1_macro"), metric("map")]
        rows.append((group, cells + [metric(f"acc_{m}") for m in modalities]))
    note = (
        f"{split} split at the best-validation epoch, in %; mean ± sample standard deviation over the "
        f"group's runs. 'acc m' is the accuracy of modality m's own logits."
    )
    return Table(columns, rows, note)


def probe_table(groups: Sequence[Group]) -> Table | None:
    if not any(run.record.probe for group in groups for run in group.runs):
        return None
    representations = all_modalities(groups) + [CONCAT]
    columns = ["group", "n"] + [f"{r} {split}" for r in representations for split in ("val", "test")]
    rows = []
    for group in groups:
        probed = [run for run in group.runs if run.record.probe]
        cells = [str(len(probed))]
        for representation in representations:
            for split in ("val", "test"):
                cells.append(stat_text(summarise(probe_accuracy(run, representation, split) for run in probed)))
        rows.append((group, cells))
    note = (
        "Linear probes on the frozen encoders (logistic regression on standardised features, fitted on the "
        "training split), accuracy in %. 'concat' probes the concatenated features of all modalities. "
        "Runs without probe.json: 'avbalance probe --ckpt RUN'."
    )
    return Table(columns, rows, note)


def read_verification(folder: Path) -> dict | None:
    """``RUN/verification.json`` as ``avbalance verify --out RUN`` writes it, if there is one."""
    path = folder / "verification.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise AvbalanceError(f"{path}: invalid JSON ({error.msg}, line {error.lineno})") from None


def verification_table(groups: Sequence[Group]) -> Table | None:
    results = {run.name: read_verification(run.record.folder) for group in groups for run in group.runs}
    if not any(results.values()):
        return None
    outputs = ["fused", *all_modalities(groups)]
    columns = ["group", "n", "trials", *(f"EER {o}" for o in outputs), *(f"minDCF {o}" for o in outputs)]
    rows = []
    for group in groups:
        verified = [results[run.name] for run in group.runs if results[run.name]]
        eers = [stat_text(summarise(r.get(o, {}).get("eer") for r in verified), 100.0, 2) for o in outputs]
        costs = [stat_text(summarise(r.get(o, {}).get("min_dcf") for r in verified), 1.0, 4) for o in outputs]
        trials = ", ".join(sorted({str(r.get("trials", "?")) for r in verified})) or "–"
        rows.append((group, [str(len(verified)), trials, *eers, *costs]))
    note = (
        "Speaker verification of the run's embeddings ('avbalance verify --out RUN' writes RUN/verification.json): "
        "equal error rate in % and minDCF (p_target 0.01, C_miss = C_fa = 1) of the fused and per-modality "
        "embeddings on the trial list; see docs/verification.md."
    )
    return Table(columns, rows, note)


def cost_table(groups: Sequence[Group], measure: bool, warn: Callable[[str], None]) -> Table | None:
    """Each group's model and step cost (stored by the benchmark runner, or measured when ``measure``)."""
    rows = cost_rows(groups, measure, warn)
    return Table(COST_COLUMNS, rows, COST_NOTE) if rows else None


def shapley_table(groups: Sequence[Group], split: str, removal: str) -> Table | None:
    if not any(run.analysis for group in groups for run in group.runs):
        return None
    modalities = all_modalities(groups)
    columns = ["group", "n", "v(none)", "v(all)", *(f"φ {m}" for m in modalities), "imbalance degree"]
    rows = []
    for group in groups:
        analysed = [run for run in group.runs if run.analysis]

        def cell(key: str, scale: float = 100.0, digits: int = 1, analysed=analysed) -> str:
            return stat_text(summarise(shapley_value(run, key) for run in analysed), scale, digits)

        cells = [
            str(len(analysed)),
            cell("empty"),
            cell("full"),
            *(cell(m) for m in modalities),
            cell("imbalance_degree", 1.0, 2),
        ]
        rows.append((group, cells))
    note = (
        f"Shapley values φ of each modality on the {split} split, in accuracy points: v(S) is the fused accuracy "
        f"with the modalities outside S removed ({removal} features), so Σ φ = v(all) − v(none). Imbalance "
        f"degree: mean pairwise |φ_m − φ_n| / (v(all) − v(none)); 0 = balanced, 1 = one modality does it all."
    )
    return Table(columns, rows, note)


@dataclass
class ClassTable:
    group: Group
    columns: list[str]
    rows: list[list[str]]


def per_class_tables(groups: Sequence[Group]) -> list[ClassTable]:
    """Per-class accuracy of each output, from the confusion matrices summed over the group's runs."""
    tables = []
    for group in groups:
        summed = plots.summed_confusion(group)
        if summed is None:
            continue
        class_names, matrices = summed
        outputs = list(matrices)
        rows = []
        for k, name in enumerate(class_names):
            cells = []
            for output in outputs:
                total = sum(matrices[output][k])
                cells.append(f"{100 * matrices[output][k][k] / total:.1f}" if total else "–")
            rows.append([name, str(sum(matrices[outputs[0]][k])), *cells])
        tables.append(ClassTable(group, ["class", "samples", *outputs], rows))
    return tables


# -- building the report ---------------------------------------------------------------------------


def attach_results(
    groups: Sequence[Group], split: str, removal: str, analysis: bool, probe: bool, warn: Callable[[str], None]
) -> None:
    """Load each run's best checkpoint once for what the report computes: Shapley values and
    confusion matrices (``analysis``), and a linear probe for runs without ``probe.json`` (``probe``,
    saved in the run folder as ``avbalance probe`` would)."""
    for group in groups:
        for run in group.runs:
            needs_probe = probe and run.record.probe is None
            if not (analysis or needs_probe):
                continue
            try:
                loaded = load_run(run.record.folder)
                if needs_probe:
                    run.record.probe = probe_run(loaded)
                    (run.record.folder / "probe.json").write_text(json.dumps(run.record.probe, indent=2))
                if analysis:
                    run.analysis = analyse_run(loaded, split=split, removal=removal)
            except AvbalanceError as error:
                warn(f"{run.name}: left out of the probe and contribution results ({error})")


@dataclass
class Figure:
    section: str  # where the page shows it: curves, method, modality, shapley or confusion
    file: str
    title: str
    caption: str


def draw_figures(groups: Sequence[Group], out: Path, split: str, removal: str) -> list[Figure]:
    return [
        *curve_figures(groups, out),
        *comparison_figures(groups, out, split, removal),
        *confusion_figures(groups, out, split),
    ]


def curve_figures(groups: Sequence[Group], out: Path) -> list[Figure]:
    figures = [
        Figure(
            "curves",
            plots.plot_learning_curves(groups, out / "curves_validation.png", "val"),
            "Validation accuracy per epoch",
            "One panel per output (the fused logits and each modality's own logits), one line per group: the "
            "mean over its runs, the band ± one standard deviation. Unimodal references appear in the fused "
            "panel and in their modality's panel.",
        ),
        Figure(
            "curves",
            plots.plot_learning_curves(groups, out / "curves_training.png", "train", with_loss=True),
            "Training accuracy and loss per epoch",
            "Accuracy on the training batches (model in train mode) per output, and the training loss.",
        ),
    ]
    if plots.plot_method_logs(groups, out / "method_coefficients.png"):
        figures.append(
            Figure(
                "method",
                "method_coefficients.png",
                "Method coefficients over training",
                "What the balancing method logged, as the mean over each epoch's steps; for OGM and "
                "OGM-GE, each modality's gradient coefficient (1 = unchanged) and score ratio.",
            )
        )
    return figures


def comparison_figures(groups: Sequence[Group], out: Path, split: str, removal: str) -> list[Figure]:
    """Modalities compared: per-modality accuracy, Shapley values, robustness."""
    figures: list[Figure] = []
    figures.append(
        Figure(
            "modality",
            plots.plot_modality_accuracy(groups, out / "modality_accuracy.png", split),
            "Per-modality accuracy: joint models against unimodal references",
            f"For each modality, the {split} accuracy of its own logits in every group (solid bars) "
            "and, where probed, of a linear probe on its frozen encoder (hatched bars). A joint "
            "model's bar below the unimodal reference's bar is the imbalance.",
        )
    )
    if plots.plot_shapley(groups, out / "shapley.png"):
        figures.append(
            Figure(
                "shapley",
                "shapley.png",
                "Shapley value per modality",
                f"Each modality's Shapley value on the {split} split ({removal} removal), in accuracy "
                "points; error bars: standard deviation over the group's runs.",
            )
        )
    if plot_robustness(groups, out / "robustness.png"):
        figures.append(
            Figure(
                "robustness",
                "robustness.png",
                "Robustness: missing and corrupted modalities",
                "Fused accuracy of each run (one line per run, coloured by group) with one modality "
                "missing (its feature replaced as for the Shapley values) and with one modality's "
                "input corrupted at increasing levels, starting from the clean accuracy; from "
                "'avbalance test --robustness' (robustness.json) or the benchmark runner.",
            )
        )
    return figures


def confusion_figures(groups: Sequence[Group], out: Path, split: str) -> list[Figure]:
    figures: list[Figure] = []
    for index, group in enumerate(groups):
        name = f"confusion_{index + 1}.png"
        if plots.plot_confusion(group, out / name):
            figures.append(
                Figure(
                    "confusion",
                    name,
                    group.label,
                    f"Row-normalised confusion matrices on the {split} split (rows: true class, "
                    "columns: predicted class, cells in %), fused and per modality, summed over the "
                    "group's runs.",
                )
            )
    return figures


def print_warning(message: str) -> None:
    print(f"avbalance: warning: {message}", file=sys.stderr)


def write_report(
    run_folders: Sequence[str | Path],
    out: str | Path = "report",
    title: str | None = None,
    split: str = "test",
    removal: str = "zero",
    analysis: bool = True,
    probe: bool = False,
    warn: Callable[[str], None] = print_warning,
) -> Path:
    """Write ``out/index.html`` and its figures for the given run folders; returns the HTML path.

    ``analysis`` computes Shapley values and confusion matrices of each run's best checkpoint on
    ``split``; ``probe`` fits linear probes for runs without a ``probe.json`` (and saves it there).
    Problems with single runs (a dataset that moved, say) become warnings shown on the page.
    """
    from .. import __version__
    from .report_template import render

    warnings: list[str] = []

    def note(message: str) -> None:
        warnings.append(message)
        warn(message)

    check_removal(removal)
    groups = group_runs([read_run(folder) for folder in run_folders])
    attach_results(groups, split, removal, analysis, probe, note)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    html = render(
        title=title or "avbalance report",
        created=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        version=__version__,
        split=split,
        removal=removal,
        analysed=analysis,
        runs=runs_table(groups),
        metrics=metrics_table(groups, split),
        probe=probe_table(groups),
        shapley=shapley_table(groups, split, removal),
        cost=cost_table(groups, analysis, note),
        verification=verification_table(groups),
        figures=draw_figures(groups, out, split, removal),
        class_tables=per_class_tables(groups),
        warnings=warnings,
    )
    path = out / "index.html"
    path.write_text(html, encoding="utf-8")
    return path
