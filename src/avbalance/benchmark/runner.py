"""Run a suite: prepare the data once, train every (method, seed), reuse finished runs, report."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shlex
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError
from .aggregate import REFERENCES, aggregate
from .report import write_report
from .suites import Suite, base_method, is_variant

KEPT_FILES = ("metrics.json", "history.json", "config.yaml")
RUN_FILE = "run.json"
THREADS = 1  # torch intra-op threads per run
QUICK_CLIPS = 200  # clips prepared for the quick mode
DEFAULT_SELECTION = "val/acc"


def default_cache(suite: Suite) -> Path:
    return Path.home() / ".cache" / "avbalance" / "benchmark" / suite.name


def cache_folder(suite: Suite, cache: str | Path | None, quick: bool) -> Path:
    """``cache/<hash of the prepare options>``: a suite whose preparation changes gets a new folder
    instead of clashing with the settings of the old one."""
    cache = Path(cache) if cache else default_cache(suite)
    if quick:  # a small seeded subset in its own folder: the quick mode prepares in seconds
        cache = cache.with_name(cache.name + "-quick")
    options = [a for a in prepare_arguments(suite, quick) if "{" not in a]
    return cache / hashlib.sha1(" ".join(options).encode()).hexdigest()[:10]


def prepare_arguments(suite: Suite, quick: bool) -> list[str]:
    """The suite's ``avbalance prepare`` arguments, still holding ``{raw}`` and ``{cache}``."""
    return list(suite.prepare or []) + (["--limit", str(QUICK_CLIPS)] if quick else [])


def all_methods() -> list[str]:
    from ..methods import method_names

    return list(method_names())


def prepare_data(
    suite: Suite, raw: str | Path | None, cache: str | Path | None, quick: bool, report: Callable[[str], None] = print
) -> Path | None:
    """The prepared cache of the suite, created with ``avbalance prepare`` unless already complete."""
    if suite.prepare is None:
        return None
    cache = cache_folder(suite, cache, quick)
    marker = cache / "benchmark_prepared.json"
    command = [a.format(raw=str(raw) if raw else "", cache=str(cache)) for a in prepare_arguments(suite, quick)]
    if marker.is_file() and json.loads(marker.read_text()).get("command") == command:
        return cache
    if raw is None or not (Path(raw) / (suite.raw_required or "")).exists():
        raise DataError(
            f"suite {suite.name!r} needs the raw data ({Path(raw or '?') / (suite.raw_required or '')} "
            f"not found); pass --raw DIR (the folder holding grid/, mnist/, fsdd/)"
        )
    from ..cli import main as cli_main

    report(f"preparing {suite.name} data: avbalance prepare {shlex.join(command)}")
    status = cli_main(["prepare", *command])
    if status != 0:
        raise DataError(f"preparing {suite.name} failed (exit status {status}); see the messages above")
    marker.write_text(json.dumps({"command": command}, indent=2))
    return cache


def _finished(folder: Path, overrides: list[str]) -> dict[str, Any] | None:
    run_file, metrics_file = folder / RUN_FILE, folder / "metrics.json"
    if not (run_file.is_file() and metrics_file.is_file()):
        return None
    if read_json_object(run_file).get("overrides") != overrides:
        return None  # a different recipe: train again
    return read_json_object(metrics_file)


def read_json_object(path: Path) -> dict[str, Any]:
    """A finished run's JSON file; a damaged one is named, for the user to delete its run folder."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        content = error
    if not isinstance(content, dict):
        problem = f"invalid JSON ({content})" if isinstance(content, Exception) else "not a JSON object"
        raise DataError(f"{path}: {problem}; delete {path.parent} to train this run again")
    return content


def reuse_finished(runs: list[tuple[Any, list[str], Path]]) -> tuple[dict[Any, dict[str, Any]], list]:
    """Split ``(key, overrides, folder)`` runs into the metrics of those already finished with
    these overrides, by key, and the runs still to train."""
    finished, pending = {}, []
    for key, overrides, folder in runs:
        metrics = _finished(folder, overrides)
        if metrics is None:
            pending.append((key, overrides, folder))
        else:
            finished[key] = metrics
    return finished, pending


def train_one(overrides: list[str], folder: Path) -> dict[str, Any]:
    """Train in a scratch folder, then keep only the small files (no checkpoints, no logs)."""
    import torch

    from ..engine import load_config, train

    # One intra-op thread per run: the small models gain nothing from more, and on a busy machine
    # extra threads oversubscribe the cores (measured 4x slower with 2 threads under load).
    torch.set_num_threads(THREADS)
    scratch = folder.parent / (folder.name + ".running")
    shutil.rmtree(scratch, ignore_errors=True)
    started = time.perf_counter()
    metrics = train(load_config(overrides=overrides + [f"out={scratch}"]))
    seconds = time.perf_counter() - started
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in KEPT_FILES:
        if (scratch / name).is_file():
            shutil.copy2(scratch / name, folder / name)
    stored = json.loads((folder / "metrics.json").read_text())
    stored.pop("best_checkpoint", None)
    stored["train_seconds"] = round(seconds, 2)
    stored.update(run_figures(metrics["best_checkpoint"]))
    (folder / "metrics.json").write_text(json.dumps(stored, indent=2))
    # written last: its presence marks the run as finished
    (folder / RUN_FILE).write_text(json.dumps({"overrides": overrides, "seconds": round(seconds, 2)}, indent=2))
    shutil.rmtree(scratch, ignore_errors=True)
    return stored


def run_figures(checkpoint: str) -> dict[str, Any]:
    """The table's extra columns of a trained run, from its best checkpoint: the test accuracy with
    each modality missing (one encoder pass) and the model's cost (a few timed steps)."""
    from ..analysis.cost import run_cost
    from ..analysis.robustness import missing_modality_run
    from ..analysis.runs import load_run

    run = load_run(checkpoint)
    return {"robustness": {"missing": missing_modality_run(run, "test")}, "cost": run_cost(run)}


def selection_overrides(name: str, select: str | None) -> list[str]:
    """``trainer.monitor`` of a run selected by ``select`` (none for the default ``val/acc``, so runs
    finished before keep being reused). A unimodal reference selects on ``select`` when its model logs
    it, else on its only output's accuracy (``val/acc``: what the branch metrics reduce to)."""
    if select is None or select == DEFAULT_SELECTION:
        return []
    from ..metrics import metric_names

    if name in REFERENCES and select not in [f"val/{m}" for m in metric_names([REFERENCES[name]])]:
        return []
    return [f"trainer.monitor={select}"]


def check_selection(select: str | None) -> None:
    """``--select``: a validation metric of a two-modality model (the rows of the table)."""
    from ..errors import ConfigError
    from ..metrics import metric_names

    known = [f"val/{m}" for m in metric_names(["audio", "visual"])]
    if select is not None and select not in known:
        raise ConfigError(f"--select: unknown metric {select!r}; choose one of: {', '.join(known)}")


def default_jobs() -> int:
    """Runs trained at once: one per core (each run uses one thread), at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def train_many(pending: list[tuple[Any, list[str], Path]], jobs: int) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Train every ``(key, overrides, folder)``; yields ``(key, metrics)`` as runs finish.

    With ``jobs > 1`` the runs go to that many worker processes (started with *spawn*: a forked
    copy of a process holding torch threads can hang). Each run is deterministic on its own, so
    the results do not depend on ``jobs``. A failing run, an interrupt or the end of this process
    stops the workers (their unfinished runs leave only scratch folders, redone next time).
    """
    if jobs <= 1 or len(pending) <= 1:
        for key, overrides, folder in pending:
            yield key, train_one(overrides, folder)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(jobs, len(pending)), initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
        yield from pool.imap_unordered(_train_job, pending)  # leaving the block terminates the workers


def _train_job(job: tuple[Any, list[str], Path]) -> tuple[Any, dict[str, Any]]:
    key, overrides, folder = job
    return key, train_one(overrides, folder)


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: stop when the suite process is gone (killed, not only interrupted)."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def run_suite(
    suite: Suite,
    out: str | Path,
    seeds: int | None = None,
    methods: list[str] | None = None,
    quick: bool = False,
    raw: str | Path | None = None,
    cache: str | Path | None = None,
    references: bool = True,
    command: str | None = None,
    jobs: int = 1,
    report: Callable[[str], None] = print,
    select: str | None = None,
) -> dict[str, Any]:
    """Train ``methods`` (default: the suite's, or every registered method) and the unimodal
    references for ``seeds`` seeds (0..N-1), each run's best epoch chosen by ``select`` (a validation
    metric; default ``val/acc``), then write ``README.md`` (table), ``summary.json`` and PNG plots
    into ``out``. Runs live in ``out/runs/<method>/seed<k>/``; a run whose ``run.json`` matches the
    current overrides is reused; ``jobs`` runs train at once. Returns the aggregated summary."""
    warnings.filterwarnings("ignore", message=".*Average precision score.*")
    out = Path(out)
    seeds = seeds or (1 if quick else suite.seeds)
    methods = list(methods) if methods else list(suite.methods or all_methods())
    check_methods(methods, suite)
    check_selection(select)
    names = methods + ([r for r in REFERENCES if r not in methods] if references else [])
    root = prepare_data(suite, raw, cache, quick, report)
    data = [f"data.root={root}"] if root is not None else []
    # method by method: a stopped suite leaves whole methods
    jobs_list = [
        (
            (name, seed),
            suite.overrides(name, quick) + data + [f"trainer.seed={seed}"] + selection_overrides(name, select),
            out / "runs" / name / f"seed{seed}",
        )
        for name in names
        for seed in range(seeds)
    ]
    started = time.perf_counter()
    results, counts = finish_runs(jobs_list, jobs, report)
    runs: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in names}
    for (name, seed), metrics in sorted(results.items()):
        runs[name][seed] = metrics
    summary = aggregate(runs)
    info = {
        **suite_info(suite, quick, methods, names),
        "seeds": seeds,
        "command": command,
        "select": select or DEFAULT_SELECTION,
        **counts,
        "jobs": jobs,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "train_seconds": round(sum(r.get("train_seconds", 0.0) for by in runs.values() for r in by.values()), 1),
    }
    write_report(out, summary, runs, info)
    report(f"table: {out / 'README.md'}   plots: {out / 'accuracy.png'}, {out / 'imbalance.png'}")
    return summary


def suite_info(suite: Suite, quick: bool, methods: list[str], names: list[str]) -> dict[str, Any]:
    """The report's description of the suite: its recipe and each row's own overrides."""
    return {
        "suite": suite.name,
        "description": suite.description,
        "quick": quick,
        "epochs": suite.quick_epochs if quick else suite.epochs,
        "recipe": suite.overrides("baseline", quick)[:-1] if "baseline" in methods else suite.recipe,
        "method_overrides": {
            n: [o for o in suite.overrides(n, quick) if o.startswith(("method.", "data.modalities"))] for n in names
        },
    }


def check_methods(methods: list[str], suite: Suite) -> None:
    """Registered methods, references, and the variants ``NAME[TAG]`` that ``suite`` declares."""
    variants = [name for name in suite.method_params if is_variant(name)]
    unknown = sorted(
        name
        for name in methods
        if name not in REFERENCES
        and (base_method(name) not in all_methods() or (is_variant(name) and name not in variants))
    )
    if unknown:
        from ..errors import ConfigError

        choices = ", ".join([*all_methods(), *variants])
        raise ConfigError(f"unknown method(s): {', '.join(unknown)}; choose from: {choices}")


def finish_runs(
    runs: list[tuple[Any, list[str], Path]], jobs: int, report: Callable[[str], None]
) -> tuple[dict[Any, dict[str, Any]], dict[str, int]]:
    """Every run's metrics, reusing finished runs and training the others (``jobs`` at once) with
    a progress line each; and how many were ``trained`` and ``reused``."""
    finished, pending = reuse_finished(runs)
    results = dict(finished)
    if finished:
        report(f"reusing {len(finished)} finished run(s) of {len(runs)}")
    started = time.perf_counter()
    for trained, (key, metrics) in enumerate(train_many(pending, jobs), 1):
        results[key] = metrics
        elapsed = time.perf_counter() - started
        eta = elapsed / trained * (len(pending) - trained)
        name, seed = key
        report(
            f"[{len(finished) + trained}/{len(runs)}] {name} seed {seed}: test acc {metrics['test']['acc']:.3f} "
            f"(trained in {metrics['train_seconds']:.1f}s; elapsed {elapsed:.0f}s, ETA {eta:.0f}s)"
        )
    return results, {"trained": len(pending), "reused": len(finished)}


def _distinct_settings(sweep: dict[str, list[list[str]]], epochs: int) -> dict[str, list[tuple[int, list[str]]]]:
    """Each method's settings with ``{epochs}`` / ``{third}`` filled in, numbered as in the suite;
    a setting equal to an earlier one at this run length (``{third}`` = 1 = a fixed 1) is left out."""
    values = {"epochs": epochs, "third": max(1, epochs // 3)}
    distinct: dict[str, list[tuple[int, list[str]]]] = {}
    for method, settings in sweep.items():
        kept = distinct.setdefault(method, [])
        for number, setting in enumerate(settings):
            filled = [s.format(**values) for s in setting]
            if all(filled != other for _, other in kept):
                kept.append((number, filled))
    return distinct


def run_sweep(
    suite: Suite,
    out: str | Path,
    seeds: int = 2,
    quick: bool = False,
    raw: str | Path | None = None,
    cache: str | Path | None = None,
    jobs: int = 1,
    report: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train every setting of ``suite.sweep`` for ``seeds`` seeds and rank the settings by mean
    *validation* accuracy (the test split is not read). Writes ``sweep.md`` and ``sweep.json``."""
    from ..errors import ConfigError
    from .aggregate import summary_stats

    if not suite.sweep:
        raise ConfigError(f"suite {suite.name!r} defines no validation sweep")
    warnings.filterwarnings("ignore", message=".*Average precision score.*")
    out = Path(out)
    root = prepare_data(suite, raw, cache, quick, report)
    data = [f"data.root={root}"] if root is not None else []
    epochs = suite.quick_epochs if quick else suite.epochs
    settings = _distinct_settings(suite.sweep, epochs)
    finished, pending = reuse_finished(
        [
            (
                (method, number, seed),
                suite.sweep_overrides(method, setting, quick) + data + [f"trainer.seed={seed}"],
                out / "sweep" / method / f"setting{number}" / f"seed{seed}",
            )
            for method, numbered in settings.items()
            for number, setting in numbered
            for seed in range(seeds)
        ]
    )
    val_acc = {key: metrics["val"]["acc"] for key, metrics in finished.items()}
    for key, metrics in train_many(pending, jobs):
        val_acc[key] = metrics["val"]["acc"]
        report(f"sweep {key[0]} setting {key[1]} seed {key[2]}: val acc {metrics['val']['acc']:.3f}")
    rows = []
    for method, numbered in settings.items():
        for number, setting in numbered:
            values = [val_acc[method, number, seed] for seed in range(seeds)]
            stats = summary_stats(values)
            rows.append({"method": method, "setting": setting, "val_acc": stats, "values": values})
            report(f"sweep {method} {' '.join(setting)}: val acc {stats['mean']:.3f} over {seeds} seed(s)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.md").write_text(
        f"# Validation sweep: {suite.name}\n\nSelected on the validation split only ({seeds} seed(s), "
        f"{epochs} epochs); the test split is not read.\n\n" + "\n".join(sweep_table(rows)) + "\n"
    )
    (out / "sweep.json").write_text(json.dumps(rows, indent=2))
    return rows


def sweep_table(rows: list[dict[str, Any]]) -> list[str]:
    """The sweep's Markdown table; each method's best setting by mean validation accuracy is marked."""
    lines = ["| method | setting | val acc (mean ± std, %) | per seed |", "|---|---|---|---|"]
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["method"] not in best or row["val_acc"]["mean"] > best[row["method"]]["val_acc"]["mean"]:
            best[row["method"]] = row
    for row in rows:
        mark = " **(chosen)**" if best[row["method"]] is row else ""
        stats = row["val_acc"]
        spread = f" ± {100 * stats['std']:.1f}" if stats["n"] > 1 else ""
        lines.append(
            f"| {row['method']} | `{' '.join(row['setting'])}`{mark} | {100 * stats['mean']:.1f}{spread} | "
            f"{', '.join(f'{100 * v:.1f}' for v in row['values'])} |"
        )
    return lines
