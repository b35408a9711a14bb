"""Small helpers for reading raw dataset layouts: required files, media indexes, list files, the
sources of a clip."""

from __future__ import annotations

import csv
from pathlib import Path

from ...errors import DataError
from ..prepare.plan import AUDIO, VIDEO, Source
from ..prepare.video import natural_key

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".flv", ".mov", ".mpg", ".mpeg", ".m4v"}
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus"}


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: missing folder ({what})")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: missing file ({what})")
    return path


def index_media(folder: Path, suffixes: set[str]) -> dict[str, Path]:
    """Every file under ``folder`` (recursively) with one of ``suffixes``, by file stem."""
    index: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in suffixes and path.is_file():
            index.setdefault(path.stem, path)
    return index


def read_text_lines(path: Path) -> list[tuple[int, str]]:
    """Non-empty lines with their 1-based numbers."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_csv_rows(path: Path, delimiter: str = ",") -> list[tuple[int, list[str]]]:
    """Rows of a CSV file (quotes honoured) with their 1-based line numbers; blank rows dropped."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            return [
                (reader.line_num, [cell.strip() for cell in row]) for row in reader if any(cell.strip() for cell in row)
            ]
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a readable CSV file ({error})") from None


def read_csv_dicts(
    path: Path, required: list[str], ragged: list[tuple[int, int, int]] | None = None
) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV file with a header as dicts; the header must name ``required`` columns, each
    column once. ``ragged``: rows with more or fewer cells than the header are left out and listed
    there as (line number, cells, header cells)."""
    rows = read_csv_rows(path)
    if not rows:
        raise DataError(f"{path}: empty file, expected a header with {', '.join(required)}")
    header = rows[0][1]
    missing = [column for column in required if column not in header]
    if missing:
        raise DataError(f"{path}: header lacks column {missing[0]!r} (found: {', '.join(header)})")
    repeated = [column for index, column in enumerate(header) if column in header[:index]]
    if repeated:
        raise DataError(f"{path}: column {repeated[0]!r} appears twice in the header; name each column once")
    if ragged is None:
        return [(number, dict(zip(header, cells))) for number, cells in rows[1:]]
    ragged += [(number, len(cells), len(header)) for number, cells in rows[1:] if len(cells) != len(header)]
    return [(number, dict(zip(header, cells))) for number, cells in rows[1:] if len(cells) == len(header)]


def sorted_labels(labels) -> list[str]:
    """Class names in a stable order: natural order, so '2' comes before '10'."""
    return sorted(set(labels), key=natural_key)


class MediaIndex:
    """Video and audio files under a folder, found by one of several candidate file stems."""

    def __init__(self, folder: Path):
        self.videos = index_media(folder, VIDEO_SUFFIXES)
        self.audios = index_media(folder, {".wav", ".flac"})

    def find(self, stems: list[str]) -> tuple[Path | None, Path | None]:
        """The video and the separate audio file (None when the video's own track is used)."""
        video = next((self.videos[s] for s in stems if s in self.videos), None)
        audio = next((self.audios[s] for s in stems if s in self.audios), None)
        return video, audio


def audio_visual(video: Path, audio: Path | None = None) -> dict[str, Source]:
    """The sources of a clip filmed in ``video``: its frames, and the sound of ``audio`` or, when
    there is no separate audio file, of the video's own track."""
    return {"audio": Source(AUDIO, str(audio or video)), "visual": Source(VIDEO, str(video))}
