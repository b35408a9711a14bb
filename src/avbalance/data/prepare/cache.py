"""The prepared cache: how it is laid out, written and read.

::

    CACHE/
      meta.json        what the cache holds and which version folder is current (written last)
      prepare.json     dataset and settings of the prepare command (a rerun must match them)
      classes.txt      the class names, one per line, in label-index order
      failures.csv     id, reason, file of every clip the last run could not prepare
      v0001/
        manifest.csv   one row per clip: id, label, label_index, split, status, reason, extra
                       columns, and <modality>_offset / <modality>_count into the arrays
        <modality>.npy one array per modality; a clip owns rows [offset, offset + count)
      clips/           clips prepared since the last consolidation, one .npz each

Every clip file is written to a temporary name and renamed, so a clip file is either complete or
absent. The version folder is built under a temporary name, renamed, and only then does
``meta.json`` (itself replaced atomically) point at it: an interrupted run never leaves a
half-written entry, and a rerun finds every finished clip either in the current version or in
``clips/``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np

from ...errors import DataError
from ...outputs import write_text_atomic
from .plan import ClipTask, Failure, Listing, PrepareSettings
from .process import ClipResult

FORMAT = 1
META = "meta.json"
SETTINGS = "prepare.json"
FAILURES = "failures.csv"
CLASSES = "classes.txt"
MANIFEST = "manifest.csv"
CLIPS = "clips"
BASE_COLUMNS = ["id", "label", "label_index", "split", "status", "reason"]


# ---------------------------------------------------------------------------------------------
# Files written atomically


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_csv_atomic(path: Path, header: list[str], rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def clip_path(cache_dir: Path, clip_id: str) -> Path:
    return cache_dir / CLIPS / (quote(clip_id, safe="-_.+=@,") + ".npz")


def clip_id_of(path: Path) -> str:
    return unquote(path.name[: -len(".npz")])


def finished_clip_files(cache_dir: Path) -> dict[str, Path]:
    folder = cache_dir / CLIPS
    if not folder.is_dir():
        return {}
    return {clip_id_of(p): p for p in folder.iterdir() if p.name.endswith(".npz") and not p.name.startswith(".")}


def write_clip(path: Path, result: ClipResult) -> None:
    """Write one prepared clip atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = {f"array/{name}": array for name, array in result.arrays.items()}
    payload["kinds"] = np.array(json.dumps(result.kinds))
    payload["columns"] = np.array(json.dumps(result.columns))
    with open(tmp, "wb") as handle:
        np.savez(handle, **payload)
    os.replace(tmp, path)


def read_clip(path: Path) -> ClipResult:
    with np.load(path, allow_pickle=False) as data:
        arrays = {key[len("array/") :]: data[key] for key in data.files if key.startswith("array/")}
        return ClipResult(arrays=arrays, kinds=json.loads(str(data["kinds"])), columns=json.loads(str(data["columns"])))


def read_npy_header(handle) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the header of an open ``.npy`` file, without reading the data."""
    version = np.lib.format.read_magic(handle)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(handle)
    return shape, dtype


def clip_shapes(path: Path) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict[str, str], dict[str, str]]:
    """Shapes and dtypes of a clip file's arrays read from the .npy headers, without the data."""
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if not name.startswith("array/"):
                continue
            with archive.open(name) as member:
                shape, dtype = read_npy_header(member)
            shapes[name[len("array/") : -len(".npy")]] = (shape, dtype.str)
        kinds = json.loads(str(np.load(archive.open("kinds.npy"), allow_pickle=False)))
        columns = json.loads(str(np.load(archive.open("columns.npy"), allow_pickle=False)))
    return shapes, kinds, columns


def remove_temporary_files(cache_dir: Path) -> None:
    """Leftovers of an interrupted run: temporary clip files and unfinished version folders."""
    current = _current_version(cache_dir)
    for folder in (cache_dir, cache_dir / CLIPS):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.name.endswith(".tmp"):
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            elif folder == cache_dir and path.is_dir() and _is_version_name(path.name) and path.name != current:
                shutil.rmtree(path)


def _is_version_name(name: str) -> bool:
    return len(name) == 5 and name[0] == "v" and name[1:].isdigit()


def _current_version(cache_dir: Path) -> str | None:
    try:
        return json.loads((cache_dir / META).read_text())["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------------------------------------
# Reading


class PreparedCache:
    """Read access to a prepared cache; arrays are memory-mapped on first use."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / META
        if self.root.is_file():
            raise DataError(f"{self.root}: a file, not a cache folder; give the folder 'avbalance prepare' wrote")
        if not self.root.is_dir():
            raise DataError(
                f"{self.root}: no such cache folder; create it with 'avbalance prepare <dataset> --out {self.root}'"
            )
        if not meta_path.is_file():
            raise DataError(
                f"{meta_path}: missing, so {self.root} is not a finished cache; "
                "run (or rerun, to resume) 'avbalance prepare'"
            )
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
            self.version_dir = self.root / self.meta["version"]
            self.modalities: dict[str, dict] = self.meta["modalities"]
            self.class_names: list[str] = self.meta["class_names"]
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(f"{meta_path}: unreadable cache metadata ({error})") from None
        if self.meta.get("format") != FORMAT:
            raise DataError(f"{meta_path}: cache format {self.meta.get('format')} is not {FORMAT}; prepare it again")
        self.rows = self._read_manifest()
        self._arrays: dict[str, np.ndarray] = {}

    @property
    def dataset(self) -> str:
        return self.meta.get("dataset", "")

    @property
    def label_sets(self) -> dict[str, list[str]]:
        return self.meta.get("label_sets", {})

    @property
    def info(self) -> dict:
        return self.meta.get("info", {})

    @property
    def settings(self) -> dict:
        return self.meta.get("settings", {})

    def _read_manifest(self) -> list[dict]:
        path = self.version_dir / MANIFEST
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        except OSError as error:
            raise DataError(f"{path}: cannot read the cache manifest ({error.strerror})") from None
        needed = BASE_COLUMNS + [f"{m}_{part}" for m in self.modalities for part in ("offset", "count")]
        if rows and (missing := [c for c in needed if c not in rows[0]]):
            raise DataError(f"{path}: manifest lacks column {missing[0]!r}; prepare the cache again")
        self._check_label_indices(path, rows)
        return rows

    def _check_label_indices(self, path: Path, rows: list[dict]) -> None:
        """An edited manifest must not point past the classes (it would fail deep inside training)."""
        valid = {str(i) for i in range(len(self.class_names))}
        for line, row in enumerate(rows, start=2):
            if row["status"] == "ok" and row["label_index"] not in valid:
                raise DataError(
                    f"{path}: line {line}: label_index {row['label_index']!r} is not one of the "
                    f"{len(self.class_names)} classes (0..{len(self.class_names) - 1}); prepare the cache again"
                )

    def __getstate__(self):
        # Memory maps are not sent to DataLoader workers; each worker maps the files again.
        return {**self.__dict__, "_arrays": {}}

    def ok_rows(self) -> list[dict]:
        return [row for row in self.rows if row["status"] == "ok"]

    def array(self, modality: str) -> np.ndarray:
        if modality not in self._arrays:
            path = self.version_dir / f"{modality}.npy"
            try:
                self._arrays[modality] = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as error:
                raise DataError(f"{path}: unreadable cache array ({error})") from None
        return self._arrays[modality]

    def clip(self, row: dict, modality: str) -> np.ndarray:
        """All stored rows of one clip for one modality."""
        offset, count = int(row[f"{modality}_offset"]), int(row[f"{modality}_count"])
        return self.array(modality)[offset : offset + count]


@dataclass
class PreparedClips:
    """The prepared clips of a cache, in manifest order: ids, labels (class names), splits."""

    ids: list[str]
    labels: list[str]
    splits: list[str]
    class_names: list[str]


def read_prepared_clips(root: str | Path) -> PreparedClips:
    """The ids, labels and splits of every prepared clip of the cache at ``root`` (failed clips
    left out), without opening the arrays; a missing or damaged cache is a one-line DataError."""
    cache = PreparedCache(root)
    rows = cache.ok_rows()
    return PreparedClips(
        ids=[row["id"] for row in rows],
        labels=[row["label"] for row in rows],
        splits=[row["split"] for row in rows],
        class_names=list(cache.class_names),
    )


def try_open(cache_dir: Path) -> PreparedCache | None:
    """The existing cache in ``cache_dir``, or None when there is none (or it is unreadable)."""
    if not (cache_dir / META).is_file():
        return None
    try:
        return PreparedCache(cache_dir)
    except DataError:
        return None


# ---------------------------------------------------------------------------------------------
# Writing (consolidation)


@dataclass
class CacheCounts:
    ok: int
    failed: int


@dataclass
class _Entry:
    clip: ClipTask
    file: Path | None = None  # a clip file from this or an interrupted run
    old_row: dict | None = None  # the clip's row in the previous version
    shapes: dict | None = None
    kinds: dict | None = None
    columns: dict | None = None


def consolidate(
    cache_dir: Path,
    dataset: str,
    listing: Listing,
    settings: PrepareSettings,
    failures: list[Failure],
    previous: PreparedCache | None,
) -> CacheCounts:
    """Write a new version of the cache from the previous version and the finished clip files,
    switch ``meta.json`` to it, then remove what it replaced. Appends to ``failures``."""
    files = finished_clip_files(cache_dir)
    old_rows = {row["id"]: row for row in previous.ok_rows()} if previous else {}
    modality_specs: dict[str, dict] = {}
    entries = []
    for clip in _unique(listing.clips):
        entry = _find_clip(_Entry(clip, file=files.get(clip.id), old_row=old_rows.get(clip.id)), previous, failures)
        if entry.shapes is not None and (problem := _check_shapes(entry, modality_specs)):
            failures.append(Failure(clip.id, *problem))
            entry.shapes = None
        entries.append(entry)

    failed = {f.id: f.reason for f in failures}
    version = _next_version(previous)
    tmp_dir = cache_dir / f"{version}.tmp"
    tmp_dir.mkdir()
    rows = _write_arrays(tmp_dir, entries, modality_specs, previous, listing, failed)
    extra = sorted(
        {k for row in rows for k in row}
        - set(BASE_COLUMNS)
        - {f"{m}_{p}" for m in modality_specs for p in ("offset", "count")}
    )
    header = BASE_COLUMNS + extra + [f"{m}_{part}" for m in modality_specs for part in ("offset", "count")]
    write_csv_atomic(tmp_dir / MANIFEST, header, rows)
    os.replace(tmp_dir, cache_dir / version)

    ok = sum(row["status"] == "ok" for row in rows)
    meta = {
        "format": FORMAT,
        "dataset": dataset,
        "version": version,
        "class_names": listing.class_names,
        "label_sets": listing.label_sets,
        "info": listing.info,
        "modalities": modality_specs,
        "settings": settings.to_dict(),
        "counts": {"ok": ok, "failed": len(rows) - ok, **_split_counts(rows)},
    }
    write_text_atomic(cache_dir / CLASSES, "".join(f"{name}\n" for name in listing.class_names))
    write_json_atomic(cache_dir / META, meta)  # the switch to the new version

    if previous is not None and previous.version_dir.name != version:
        shutil.rmtree(previous.version_dir, ignore_errors=True)
    for entry in entries:
        if entry.file is not None:
            entry.file.unlink(missing_ok=True)
    return CacheCounts(ok=ok, failed=len(rows) - ok)


def _find_clip(entry: _Entry, previous: PreparedCache | None, failures: list[Failure]) -> _Entry:
    """Where a clip's data is: a new clip file (read its shapes) or the previous version."""
    if entry.file is not None:
        try:
            entry.shapes, entry.kinds, entry.columns = clip_shapes(entry.file)
            return entry
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            entry.file.unlink(missing_ok=True)
            reason = "unreadable prepared clip file; rerun to prepare it again"
            failures.append(Failure(entry.clip.id, reason, str(entry.file)))
            entry.file = None
    if entry.old_row is not None:
        row = entry.old_row
        entry.shapes = {
            m: ((int(row[f"{m}_count"]), *s["row_shape"]), s["dtype"]) for m, s in previous.modalities.items()
        }
        entry.kinds = {m: spec["kind"] for m, spec in previous.modalities.items()}
        entry.columns = {
            k: v for k, v in row.items() if k not in BASE_COLUMNS and not k.endswith(("_offset", "_count"))
        }
    return entry


def _unique(clips: list[ClipTask]) -> list[ClipTask]:
    seen: set[str] = set()
    return [c for c in clips if not (c.id in seen or seen.add(c.id))]


def _check_shapes(entry: _Entry, specs: dict) -> tuple[str, str] | None:
    """Register each modality's kind and row shape from the first clip; report a clip that differs
    as (reason, file). The number of rows (time) may vary, except for an array's single row."""
    for name, (shape, _) in entry.shapes.items():
        spec, kind = specs.get(name), entry.kinds.get(name, "array")
        if spec is None:
            continue
        source = entry.clip.sources.get(name)
        file = source.describe() if source is not None else entry.clip.main_file()
        if kind != spec["kind"]:
            return f"{name}: {file} is stored as {kind}, other clips as {spec['kind']}", file
        if list(shape[1:]) != spec["row_shape"]:
            if kind == "array":
                return f"{name}: {file} has shape {tuple(shape[1:])}, other clips {tuple(spec['row_shape'])}", file
            others = ", ".join(["T", *map(str, spec["row_shape"])])
            return f"{name}: {file} has shape {tuple(shape)}, other clips ({others})", file
    for name, (shape, dtype) in entry.shapes.items():
        specs.setdefault(
            name, {"kind": entry.kinds.get(name, "array"), "dtype": np.dtype(dtype).str, "row_shape": list(shape[1:])}
        )
    return None


def _next_version(previous: PreparedCache | None) -> str:
    number = int(previous.version_dir.name[1:]) + 1 if previous is not None else 1
    return f"v{number:04d}"


def _write_arrays(
    tmp_dir: Path, entries: list[_Entry], specs: dict, previous, listing: Listing, failed: dict
) -> list[dict]:
    totals = {name: sum(e.shapes[name][0][0] for e in entries if e.shapes and name in e.shapes) for name in specs}
    outputs = {name: _open_output(tmp_dir / f"{name}.npy", spec, totals[name]) for name, spec in specs.items()}
    cursor = dict.fromkeys(specs, 0)
    label_index = {name: i for i, name in enumerate(listing.class_names)}
    rows = []
    for entry in entries:
        clip = entry.clip
        row = {"id": clip.id, "label": clip.label, "split": clip.split, **clip.columns}
        if entry.shapes is None or set(entry.shapes) != set(specs):
            reason = failed.get(clip.id) or (
                "missing " + ", ".join(sorted(set(specs) - set(entry.shapes))) if entry.shapes else "not prepared"
            )
            rows.append({**row, "status": "failed", "reason": reason, "label_index": ""})
            continue
        arrays = _load_arrays(entry, previous)
        for name in specs:
            count = len(arrays[name])
            outputs[name][cursor[name] : cursor[name] + count] = arrays[name]
            row[f"{name}_offset"], row[f"{name}_count"] = cursor[name], count
            cursor[name] += count
        row.update(entry.columns or {})
        rows.append({**row, "status": "ok", "reason": "", "label_index": label_index[clip.label]})
    for output in outputs.values():
        if isinstance(output, np.memmap):
            output.flush()
    return rows


def _open_output(path: Path, spec: dict, total: int):
    shape = (total, *spec["row_shape"])
    if total == 0:
        np.save(path, np.zeros(shape, dtype=spec["dtype"]))
        return np.zeros(shape, dtype=spec["dtype"])
    return np.lib.format.open_memmap(path, mode="w+", dtype=spec["dtype"], shape=shape)


def _load_arrays(entry: _Entry, previous: PreparedCache | None) -> dict[str, np.ndarray]:
    if entry.file is not None:
        return read_clip(entry.file).arrays
    return {name: previous.clip(entry.old_row, name) for name in previous.modalities}


def _split_counts(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        if row["status"] == "ok":
            counts[row["split"]] = counts.get(row["split"], 0) + 1
    return dict(sorted(counts.items()))
