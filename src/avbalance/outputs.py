"""Output paths checked before any work starts: a command that is given an ``--out`` it cannot
write to says so in one line at once, instead of failing after a long computation."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_creatable(path: Path) -> None:
    """``path`` does not exist yet: its nearest existing ancestor must be a writable folder."""
    ancestor = _nearest_existing(path.parent)
    if not ancestor.is_dir():
        raise ConfigError(f"{path}: cannot create this folder, {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{path}: cannot create it, {ancestor} is not writable")


def check_output_folder(path: str | Path) -> Path:
    """A folder the command will write into: an existing writable folder, or one it can create.
    Nothing is created here."""
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{path}: not a folder (it is a file); give a folder to write into")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{path}: this folder is not writable")
        return path
    _check_creatable(path)
    return path


def check_output_file(path: str | Path) -> Path:
    """A file the command will write (replacing it if it exists), in a folder it can create."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{path}: a folder, not a file; give the name of the file to write")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{path}: this file is not writable")
    if not path.parent.exists():
        _check_creatable(path.parent)
    elif not path.parent.is_dir():
        raise ConfigError(f"{path}: cannot create this file, {path.parent} is a file")
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it: a process killed while
    writing leaves the old file (or none), never half of the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
