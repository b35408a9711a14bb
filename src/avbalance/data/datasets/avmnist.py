"""AV-MNIST: MNIST digit images paired by class with spoken digits of the Free Spoken Digit
Dataset (FSDD), the classic audio-visual digit task.

Raw layout (``--root``; ``--mnist`` / ``--fsdd`` point elsewhere)::

    mnist/train-images-idx3-ubyte.gz   the four MNIST IDX files (gzip-compressed or not)
    mnist/train-labels-idx1-ubyte.gz
    mnist/t10k-images-idx3-ubyte.gz
    mnist/t10k-labels-idx1-ubyte.gz
    fsdd/recordings/<digit>_<speaker>_<index>.wav

FSDD's split: recordings with index 0-4 are test, 5-49 train. Each recording is paired with
``--images-per-recording`` MNIST images of the same digit (train images for train recordings,
test images for test recordings), drawn without replacement with ``--seed``.
"""

from __future__ import annotations

import gzip
import random
import re
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..prepare.options import PrepareOptions, option
from ..prepare.plan import AUDIO, IMAGE, ClipTask, Failure, Listing, Source
from ..registry import register_dataset
from .cached import GREY_STATS, AudioLayout, LoaderOptions, PreparedDataset, build_splits
from .layout import require_dir

DIGITS = [str(d) for d in range(10)]
FSDD_NAME = re.compile(r"(\d)_([A-Za-z]+)_(\d+)")
FSDD_TEST_INDICES = range(0, 5)
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SMALL_ENCODER = {"width": 16, "layers": [1, 1, 1]}


class AvmnistOptions(PrepareOptions):
    mnist: Path | None = option(None, "folder of the MNIST IDX files (default: ROOT/mnist)")
    fsdd: Path | None = option(None, "FSDD folder holding recordings/ (default: ROOT/fsdd)")
    images_per_recording: int = option(1, "MNIST images paired with each recording", ge=1)


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST file format), gzip-compressed or not."""
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot read ({error})") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: holds {body.size} bytes of data, its header says {shape}")
    return body.reshape(shape)


def _find_idx(folder: Path, name: str) -> Path:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder / (name + '.gz')}: missing file (MNIST)")


def _load_mnist(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_name, labels_name = MNIST_FILES[split]
    images, labels = read_idx(_find_idx(folder, images_name)), read_idx(_find_idx(folder, labels_name))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{folder}: MNIST {split} images {images.shape} and labels {labels.shape} do not match")
    return images, labels


@register_dataset
class Avmnist(PreparedDataset):
    """AV-MNIST: MNIST images paired by class with FSDD spoken digits (10 classes)"""

    examples = (
        "  avbalance prepare avmnist --root ~/data --out ~/cache/avmnist   (reads ~/data/mnist and ~/data/fsdd)\n"
    )
    Options = AvmnistOptions
    audio = "fbank"
    prepare_defaults = {"size": 28, "seconds": 1.0, "sample_rate": 8000, "mel_bins": 40}

    @staticmethod
    def list_clips(root: Path, options: AvmnistOptions) -> Listing:
        mnist_dir = require_dir(options.mnist or root / "mnist", "MNIST IDX files")
        recordings = require_dir(
            (options.fsdd or root / "fsdd") / "recordings", "FSDD recordings <digit>_<speaker>_<index>.wav"
        )
        listing = Listing(clips=[], class_names=list(DIGITS))
        rng = random.Random(options.seed)
        for split, items in _recordings_by_split(recordings, listing.failures).items():
            images, labels = _load_mnist(mnist_dir, split)
            pools = {
                digit: rng.sample(list(np.flatnonzero(labels == int(digit))), k=int((labels == int(digit)).sum()))
                for digit in DIGITS
            }
            for digit, path in items:
                _pair(path, digit, split, pools[digit], images, options.images_per_recording, listing)
        return listing

    @classmethod
    def load(
        cls,
        root: str | None = None,
        image_size: int | None = None,
        augment: bool = False,
        audio_layout: AudioLayout = "image",
    ):
        """AV-MNIST from a cache made by ``avbalance prepare avmnist``.

        A sample: ``audio`` ``(1, 40, 98)`` log-mel filterbank of 1 s at 8 kHz, ``visual``
        ``(3, 1, 28, 28)`` (the grey digit repeated to 3 channels, MNIST normalisation).
        Options: ``image_size`` (default 28), ``augment`` (default false: flips change digits),
        ``audio_layout`` (``sequence``: the filterbank as a ``(98, 40)`` sequence).
        """
        options = LoaderOptions(
            frames=1, image_size=image_size, augment=augment, stats={"visual": GREY_STATS}, audio_layout=audio_layout
        )
        return build_splits(cls.open(root), options, recommended_encoder=SMALL_ENCODER)


def _recordings_by_split(recordings: Path, failures: list[Failure]) -> dict[str, list[tuple[str, Path]]]:
    """(digit, file) of the FSDD recordings, by split; a file of another name is a failure."""
    by_split: dict[str, list[tuple[str, Path]]] = {"train": [], "test": []}
    for path in sorted(recordings.glob("*.wav")):
        match = FSDD_NAME.fullmatch(path.stem)
        if match is None:
            failures.append(Failure(path.stem, "file name is not <digit>_<speaker>_<index>.wav", str(path)))
            continue
        split = "test" if int(match.group(3)) in FSDD_TEST_INDICES else "train"
        by_split[split].append((match.group(1), path))
    return by_split


def _pair(path: Path, digit: str, split: str, pool: list, images: np.ndarray, count: int, listing: Listing) -> None:
    """Clips of recording ``path`` with ``count`` images of its digit drawn from ``pool``."""
    for _ in range(count):
        if not pool:
            problem = f"no MNIST {split} image of digit {digit} left to pair"
            listing.failures.append(Failure(path.stem, problem, str(path)))
            return
        image_index = int(pool.pop())
        sources = {"audio": Source(AUDIO, str(path)), "visual": Source(IMAGE, data=images[image_index])}
        columns = {"recording": path.stem, "mnist_index": str(image_index)}
        listing.clips.append(ClipTask(f"{path.stem}/{image_index}", digit, split, sources, columns=columns))
