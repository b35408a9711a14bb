"""Trial lists: ``<1|0> <enrol utterance> <test utterance>`` per line, as VoxCeleb publishes them.

Utterances are paths relative to the dataset's ``wav/`` or ``mp4/`` folder
(``id10270/5r0dWxy17C8/00001.wav``); they name a cache clip by its id, with or without the file
suffix. A list can also be generated from any prepared cache's labels.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import DataError

TRIAL_FORMAT = "'<1|0> <enrol utterance> <test utterance>'"


@dataclass(frozen=True)
class Trial:
    target: bool  # same speaker
    enrol: str
    test: str


def read_trials(path: str | Path) -> list[Trial]:
    """The trials of a list file; one-line errors for a missing, malformed or empty file."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the trial list ({getattr(error, 'strerror', None) or error})") from None
    trials = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            raise DataError(f"{path}: line {number} is not {TRIAL_FORMAT}: {line.strip()!r}")
        trials.append(Trial(parts[0] == "1", parts[1], parts[2]))
    if not trials:
        raise DataError(f"{path}: the trial list is empty (expected lines {TRIAL_FORMAT})")
    return trials


def write_trials(path: Path, trials: Sequence[Trial]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{int(t.target)} {t.enrol} {t.test}\n" for t in trials), encoding="utf-8")


def clip_id_of(utterance: str, known: set[str] | dict) -> str | None:
    """The cache clip an utterance path names: the path itself, or the path without its suffix."""
    if utterance in known:
        return utterance
    stripped = str(PurePosixPath(utterance).with_suffix("")) if PurePosixPath(utterance).suffix else utterance
    return stripped if stripped in known else None


def resolve_trials(trials: Sequence[Trial], known: set[str] | dict, source: Path, cache: Path) -> list[Trial]:
    """The trials with utterances replaced by cache clip ids; one line naming the first missing
    utterance and how many are missing."""
    resolved, missing = [], []
    for trial in trials:
        enrol, test = clip_id_of(trial.enrol, known), clip_id_of(trial.test, known)
        missing += [u for u, clip in ((trial.enrol, enrol), (trial.test, test)) if clip is None]
        resolved.append(Trial(trial.target, enrol, test))
    if missing:
        distinct = list(dict.fromkeys(missing))
        raise DataError(
            f"{source}: {len(distinct)} utterance(s) of the trial list are not in the cache {cache} "
            f"(first: {distinct[0]})"
        )
    if all(t.target for t in resolved) or not any(t.target for t in resolved):
        raise DataError(f"{source}: the trial list needs both target (1) and non-target (0) trials")
    return resolved


def generate_trials(ids: Sequence[str], labels: Sequence[str], count: int, seed: int = 0) -> list[Trial]:
    """``count`` target and ``count`` non-target pairs of distinct clips, each pair drawn once,
    uniformly among the possible pairs, in a seeded random order."""
    if count < 1:
        raise DataError(f"--trials-from-cache must be at least 1, got {count}")
    rng = np.random.default_rng(seed)
    ids, labels = list(ids), np.asarray(labels)
    groups = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    sizes = np.array([len(g) for g in groups])
    same_weights = sizes * (sizes - 1) / 2

    def all_same() -> list[tuple[int, int]]:
        return [(int(a), int(b)) for g in groups for a, b in itertools.combinations(g, 2)]

    def all_different() -> list[tuple[int, int]]:
        return [(a, b) for a, b in itertools.combinations(range(len(ids)), 2) if labels[a] != labels[b]]

    def one_same() -> tuple[int, int]:
        group = groups[rng.choice(len(groups), p=same_weights / same_weights.sum())]
        return _ordered(rng.choice(group, size=2, replace=False))

    def one_different() -> tuple[int, int]:
        while True:
            pair = rng.choice(len(ids), size=2, replace=False)
            if labels[pair[0]] != labels[pair[1]]:
                return _ordered(pair)

    possible_same = int(same_weights.sum())
    possible_different = int((sizes.sum() ** 2 - (sizes**2).sum()) // 2)
    same = _sample_pairs(rng, count, possible_same, all_same, one_same, "target")
    different = _sample_pairs(rng, count, possible_different, all_different, one_different, "non-target")
    trials = [Trial(True, ids[a], ids[b]) for a, b in same] + [Trial(False, ids[a], ids[b]) for a, b in different]
    return [trials[i] for i in rng.permutation(len(trials))]


def _ordered(pair) -> tuple[int, int]:
    return int(min(pair)), int(max(pair))


def _sample_pairs(
    rng: np.random.Generator,
    count: int,
    possible: int,
    every_pair: Callable[[], list],
    one_pair: Callable[[], tuple[int, int]],
    kind: str,
) -> list[tuple[int, int]]:
    if count > possible:
        raise DataError(f"--trials-from-cache {count}: the cache allows only {possible} distinct {kind} pairs")
    if 2 * count >= possible:  # most pairs are wanted: list them all rather than draw and reject repeats
        pairs = every_pair()
        return sorted(pairs[i] for i in rng.choice(len(pairs), size=count, replace=False))
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < count:
        chosen.add(one_pair())
    return sorted(chosen)
