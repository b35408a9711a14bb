"""Run a prepare: list, skip what is done, prepare the rest in parallel, report, consolidate.

Workers write each finished clip atomically into ``CACHE/clips/`` themselves, so the parent only
receives ids and failure reasons. Killing the command at any point loses at most the clips being
worked on; the next run with the same command skips every finished clip.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ...errors import ConfigError, DataError
from .cache import (
    FAILURES,
    SETTINGS,
    clip_path,
    consolidate,
    finished_clip_files,
    remove_temporary_files,
    try_open,
    write_clip,
    write_csv_atomic,
    write_json_atomic,
)
from .plan import ClipError, ClipTask, Failure, Listing, PrepareSettings, assign_splits, take_subset
from .process import prepare_clip

FAILURE_COLUMNS = ["id", "reason", "file"]


@dataclass
class Summary:
    prepared: int = 0  # clips prepared by this run
    skipped: int = 0  # clips already in the cache from an earlier run
    failed: int = 0  # clips (and listing entries) that could not be prepared
    total_ok: int = 0  # clips in the cache after this run
    failures: list[Failure] = field(default_factory=list)
    interrupted: bool = False


def prepare_dataset(declaration, options, console: Console | None = None) -> Summary:
    """Prepare the raw dataset at ``options.root`` into the cache ``options.out``: ``declaration``
    (a :class:`~avbalance.data.declaration.DatasetDeclaration`) lists the clips, ``options`` (its
    options model) say how."""
    console = console or Console(stderr=True)
    root = Path(options.root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: raw dataset folder not found")
    settings = declaration.settings(options)
    listing = declaration.list_clips(root, options)
    listing.clips = take_subset(listing.clips, options.limit, options.seed)
    if not listing.clips and not listing.failures:
        raise DataError(f"{root}: no clips found for {declaration.name}; see docs/datasets.md for the expected layout")
    for note in listing.notes:
        console.print(note, markup=False)
    out = Path(options.out).expanduser()
    return run_prepare(declaration.name, listing, settings, out, workers=options.workers, console=console)


def run_prepare(
    dataset: str,
    listing: Listing,
    settings: PrepareSettings,
    out: Path,
    workers: int = 1,
    console: Console | None = None,
) -> Summary:
    console = console or Console(stderr=True)
    _refuse_foreign_folder(out)  # before the lock file is created in it
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(out):
        _check_same_settings(out, dataset, settings)
        remove_temporary_files(out)
        failures = list(listing.failures)
        listing.clips = _drop_unknown_labels(listing, failures)
        if listing.split_rule is not None:
            assign_splits(listing.clips, listing.split_rule)

        previous = try_open(out)
        done = set(finished_clip_files(out)) | ({row["id"] for row in previous.ok_rows()} if previous else set())
        todo = [clip for clip in _unique(listing.clips) if clip.id not in done]
        skipped = len({c.id for c in listing.clips} & done)

        clip_failures, interrupted = _prepare_all(todo, settings, out, workers, console)
        failures += clip_failures
        if interrupted:
            prepared = len(set(finished_clip_files(out)) - done)
            return Summary(prepared, skipped, len(failures), failures=failures, interrupted=True)

        counts = consolidate(out, dataset, listing, settings, failures, previous)
        write_csv_atomic(out / FAILURES, FAILURE_COLUMNS, [vars(f) for f in failures])
        return Summary(counts.ok - skipped, skipped, len(failures), total_ok=counts.ok, failures=failures)


def _prepare_all(todo: list[ClipTask], settings: PrepareSettings, out: Path, workers: int, console: Console):
    """Prepare ``todo``; returns (failures, interrupted)."""
    failures: list[Failure] = []
    progress = Progress(
        TextColumn("[bold]preparing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("clips"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        auto_refresh=False,  # no refresh thread: worker processes are forked while it runs
    )
    task_id = progress.add_task("prepare", total=len(todo), rate="")
    started = time.monotonic()

    def record(failure: Failure | None) -> None:
        if failure is not None:
            failures.append(failure)
        progress.advance(task_id)
        done = progress.tasks[0].completed
        progress.update(task_id, rate=f"{done / max(time.monotonic() - started, 1e-9):.1f}/s")
        progress.refresh()

    with progress:
        try:
            if workers <= 1 or len(todo) <= 1:
                for clip in todo:
                    record(prepare_and_store(clip, settings, out))
            else:
                _run_pool(todo, settings, out, workers, record)
        except KeyboardInterrupt:
            return failures, True
    return failures, False


def _run_pool(todo, settings, out, workers, record) -> None:
    # Fork keeps worker start-up cheap: modules loaded here (see warm_up) are not loaded again.
    warm_up(settings)
    context = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
    pending_clips = iter(todo)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        in_flight = {}
        try:
            # Keep a bounded number of clips queued so memory does not grow with the dataset.
            for clip in _take(pending_clips, workers * 4):
                in_flight[pool.submit(prepare_and_store, clip, settings, out)] = clip
            while in_flight:
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    clip = in_flight.pop(future)
                    try:
                        record(future.result())
                    except BrokenProcessPool:
                        record(
                            Failure(
                                clip.id,
                                "the worker process died (out of memory?) while preparing this clip",
                                clip.main_file(),
                            )
                        )
                        raise
                    for next_clip in _take(pending_clips, 1):
                        in_flight[pool.submit(prepare_and_store, next_clip, settings, out)] = next_clip
        except BrokenProcessPool:
            for clip in list(in_flight.values()) + list(pending_clips):
                record(Failure(clip.id, "not prepared: a worker process died; rerun to resume", clip.main_file()))
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def warm_up(settings: PrepareSettings) -> None:
    """Load the lazily imported decoding and feature code once, before worker processes fork."""
    if settings.audio is not None:
        import librosa
        import numpy as np

        silence = np.zeros(settings.audio.sample_rate // 10, dtype=np.float32)
        librosa.resample(silence, orig_sr=settings.audio.sample_rate, target_sr=8000, res_type="soxr_hq")
        settings.audio.features(silence)


def _take(iterator, count: int) -> list:
    items = []
    for item in iterator:
        items.append(item)
        if len(items) == count:
            break
    return items


def prepare_and_store(clip: ClipTask, settings: PrepareSettings, out: Path) -> Failure | None:
    """Prepare one clip and write it to the cache. Never raises for a bad input file."""
    try:
        result = prepare_clip(clip, settings)
        write_clip(clip_path(out, clip.id), result)
    except ClipError as error:
        return Failure(clip.id, str(error), error.file or clip.main_file())
    except KeyboardInterrupt:
        raise
    except MemoryError:
        return Failure(clip.id, "out of memory while preparing this clip", clip.main_file())
    except Exception as error:  # noqa: BLE001 - one odd file must not stop a run of thousands
        return Failure(clip.id, f"unexpected {type(error).__name__}: {' '.join(str(error).split())}", clip.main_file())
    return None


def _unique(clips: list[ClipTask]) -> list[ClipTask]:
    seen: set[str] = set()
    return [c for c in clips if not (c.id in seen or seen.add(c.id))]


def _drop_unknown_labels(listing: Listing, failures: list[Failure]) -> list[ClipTask]:
    known = set(listing.class_names)
    kept = []
    for clip in listing.clips:
        if clip.label in known:
            kept.append(clip)
        else:
            failures.append(Failure(clip.id, f"unknown label {clip.label!r}", clip.main_file()))
    return kept


def _check_same_settings(out: Path, dataset: str, settings: PrepareSettings) -> None:
    """A cache is prepared with one dataset and one set of settings; a rerun must match them."""
    path = out / SETTINGS
    wanted = {"dataset": dataset, "settings": settings.to_dict()}
    if path.is_file():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: unreadable ({error}); delete the cache folder to start again") from None
        if existing != wanted:
            raise ConfigError(
                f"{out} was prepared with other settings: {_difference(existing, wanted)}; "
                "use the same options or a new --out folder"
            )
        return
    _refuse_foreign_folder(out)
    write_json_atomic(path, wanted)


def _refuse_foreign_folder(out: Path) -> None:
    """A folder that holds files but no cache settings is someone else's: never write into it."""
    if out.is_dir() and not (out / SETTINGS).is_file() and any(p.name != ".lock" for p in out.iterdir()):
        raise ConfigError(
            f"{out} is not empty and is not a cache made by 'avbalance prepare'; choose an empty or new --out folder"
        )


def _difference(existing: dict, wanted: dict) -> str:
    if existing.get("dataset") != wanted["dataset"]:
        return f"dataset {existing.get('dataset')!r}, not {wanted['dataset']!r}"
    old, new = _flatten(existing.get("settings") or {}), _flatten(wanted["settings"])
    for key in {**old, **new}:
        if old.get(key) != new.get(key):
            return f"{key}={old.get(key)!r} (now {new.get(key)!r})"
    return "different settings"


def _flatten(settings: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


class _exclusive_lock:
    """One prepare at a time per cache folder (a POSIX lock: worker processes do not inherit it)."""

    def __init__(self, out: Path):
        self.path = out / ".lock"

    def __enter__(self):
        self.handle = open(self.path, "a+")
        try:
            fcntl.lockf(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.close()
            raise DataError(f"{self.path.parent}: another 'avbalance prepare' is writing this cache") from None
        return self

    def __exit__(self, *exc):
        fcntl.lockf(self.handle, fcntl.LOCK_UN)
        self.handle.close()
        return False
