"""The verification protocol: embed the evaluation cache, score every trial, compute the metrics and
write them (``verification.json``), the per-trial scores (``scores.csv``) and DET curves
(``det.png``) into the output folder."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .embeddings import FUSED, Embedder, Embeddings, open_eval_cache
from .metrics import C_FA, C_MISS, P_TARGET, equal_error_rate, min_dcf, operating_points
from .plot import plot_det
from .scoring import cosine_scores, normalise_scores
from .trials import Trial, read_trials, resolve_trials

RESULTS = "verification.json"
SCORES = "scores.csv"
DET_PLOT = "det.png"
EMBEDDINGS = "embeddings.npz"
COHORT_EMBEDDINGS = "cohort_embeddings.npz"


@dataclass
class Settings:
    checkpoint: str
    data: str
    trials: str
    out: str
    batch_size: int | None = None
    cohort: str | None = None
    norm: str = "none"
    top_n: int = 300
    accelerator: str = "auto"


def verify(settings: Settings) -> dict:
    """Run the protocol; returns what ``verification.json`` holds."""
    out = Path(settings.out)
    cache = open_eval_cache(settings.data)
    trials = resolve_trials(
        read_trials(settings.trials), {r["id"] for r in cache.ok_rows()}, Path(settings.trials), cache.root
    )
    embedder = Embedder(settings.checkpoint, settings.batch_size, settings.accelerator)
    evaluation = embedder.embed(cache, out / EMBEDDINGS)
    cohort = evaluation
    if settings.cohort and settings.norm != "none":
        cohort = embedder.embed(open_eval_cache(settings.cohort), out / COHORT_EMBEDDINGS)
        if cohort.modalities != evaluation.modalities:
            raise DataError(
                f"{settings.cohort}: the cohort cache gives embeddings of "
                f"{', '.join(cohort.modalities)}, the evaluation cache of "
                f"{', '.join(evaluation.modalities)}; use a cohort with the same modalities"
            )
    scores = score_trials(evaluation, cohort, trials, settings.norm, settings.top_n)
    targets = np.array([t.target for t in trials])
    results = {
        name: {"eer": equal_error_rate(s, targets), "min_dcf": min_dcf(s, targets)} for name, s in scores.items()
    }
    results.update(
        trials=len(trials),
        targets=int(targets.sum()),
        nontargets=int((~targets).sum()),
        settings={
            **vars(settings),
            "p_target": P_TARGET,
            "c_miss": C_MISS,
            "c_fa": C_FA,
            "fused": " + ".join(evaluation.modalities),
        },
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS).write_text(json.dumps(results, indent=2))
    write_scores(out / SCORES, trials, scores)
    curves = {name: operating_points(s, targets) for name, s in scores.items()}
    plot_det(curves, {name: results[name]["eer"] for name in scores}, out / DET_PLOT)
    return results


def score_trials(
    evaluation: Embeddings, cohort: Embeddings, trials: list[Trial], norm: str, top_n: int
) -> dict[str, np.ndarray]:
    """Scores of every trial for the fused embedding and each modality's."""
    rows = evaluation.index()
    enrol = np.array([rows[t.enrol] for t in trials])
    test = np.array([rows[t.test] for t in trials])
    cohort_rows = cohort.index()
    own = np.array([cohort_rows.get(clip, -1) for clip in evaluation.ids])
    scores = {}
    for name in [FUSED, *evaluation.modalities]:
        embeddings = evaluation.output(name)
        raw = cosine_scores(embeddings, enrol, test)
        scores[name] = normalise_scores(raw, embeddings, enrol, test, cohort.output(name), own, norm, top_n)
    return scores


def write_scores(path: Path, trials: list[Trial], scores: dict[str, np.ndarray]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["target", "enrol", "test", *scores])
        for i, trial in enumerate(trials):
            writer.writerow([int(trial.target), trial.enrol, trial.test, *(f"{s[i]:.6f}" for s in scores.values())])
