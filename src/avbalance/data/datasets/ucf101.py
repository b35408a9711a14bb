"""UCF-101: 13320 action videos of 101 classes, RGB frames plus optical flow.

Raw layout (``--root``)::

    UCF-101/<Class>/v_<Class>_g<group>_c<clip>.avi
    ucfTrainTestlist/classInd.txt         '<index> <Class>' (1-based)
    ucfTrainTestlist/trainlist0{1,2,3}.txt '<Class>/<video>.avi <index>'
    ucfTrainTestlist/testlist0{1,2,3}.txt  '<Class>/<video>.avi'
    tvl1_flow/u/<video>/*.jpg              optional optical flow as grey-scale images (the common
    tvl1_flow/v/<video>/*.jpg              TV-L1 layout; also found as flow/u, flow/v or --flow DIR),
                                           one image per video frame, <video> without '.avi'

With flow the cache holds ``visual`` (RGB) and ``flow`` (u, v) sampled at the same times; without
it, RGB alone. ``--split-id`` picks one of the three official splits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ...errors import DataError
from ..prepare.options import PrepareOptions, option
from ..prepare.plan import FLOW, VIDEO, ClipTask, Listing, Source, mark_duplicates
from ..registry import register_dataset
from .cached import GREY_STATS, Frames, LoaderOptions, PreparedDataset, build_splits
from .layout import read_text_lines, require_dir, require_file


class Ucf101Options(PrepareOptions):
    split_id: Literal[1, 2, 3] = option(1, "official split")
    flow: Path | None = option(
        None, "optical flow folder with u/ and v/ (default: ROOT/tvl1_flow or ROOT/flow if present)"
    )


@register_dataset
class Ucf101(PreparedDataset):
    """UCF-101 actions (101 classes): UCF-101/*/*.avi + ucfTrainTestlist, optional TV-L1 flow"""

    examples = "  avbalance prepare ucf101 --root ~/data/UCF101 --out ~/cache/ucf101 --split-id 1\n"
    Options = Ucf101Options
    audio = None

    @staticmethod
    def list_clips(root: Path, options: Ucf101Options) -> Listing:
        video_dir = require_dir(root / "UCF-101", "the UCF-101 .avi videos")
        lists = require_dir(root / "ucfTrainTestlist", "the official split lists")
        class_names = _read_class_index(require_file(lists / "classInd.txt", "UCF-101 class index"))
        flow = _find_flow(root, options.flow)
        listing = Listing(clips=[], class_names=class_names)
        for split in ("train", "test"):
            path = require_file(lists / f"{split}list{options.split_id:02d}.txt", f"UCF-101 {split} list")
            for number, line in read_text_lines(path):
                relative = line.split()[0]
                if "/" not in relative:
                    raise DataError(f"{path}: line {number} is not '<Class>/<video>.avi': {line!r}")
                label, name = relative.split("/", 1)
                stem = Path(name).stem
                sources = {"visual": Source(VIDEO, str(video_dir / relative))}
                if flow is not None:
                    sources["flow"] = Source(FLOW, (str(flow / "u" / stem), str(flow / "v" / stem)))
                listing.clips.append(ClipTask(id=stem, label=label, split=split, sources=sources))
        listing.clips = mark_duplicates(listing.clips, listing.failures)
        listing.notes.append(f"optical flow: {flow}" if flow else "no optical flow folder found: RGB only")
        return listing

    @classmethod
    def load(cls, root: str | None = None, frames: Frames = 3, image_size: int | None = None, augment: bool = True,
             flow: bool = True):  # fmt: skip
        """UCF-101 from a cache made by ``avbalance prepare ucf101``: ``visual`` and, when prepared
        with optical flow, ``flow`` (``(2, frames, H, W)``, normalised with mean 0.1307 / std
        0.3081 as BalanceMM).

        Options: ``frames`` per clip (default 3; ``all``: every stored frame), ``image_size`` (default: stored size),
        ``augment`` (train split: one crop + flip for RGB and flow), ``flow`` (false: RGB only).
        """
        cache = cls.open(root)
        modalities = [m for m in ("visual", "flow") if m in cache.modalities and (flow or m != "flow")]
        options = LoaderOptions(frames=frames, image_size=image_size, augment=augment, stats={"flow": GREY_STATS})
        return build_splits(cache, options, modalities=modalities)


def _find_flow(root: Path, flow: Path | None) -> Path | None:
    if flow is not None:
        require_dir(flow / "u", "horizontal optical flow images")
        require_dir(flow / "v", "vertical optical flow images")
        return flow
    return next((root / name for name in ("tvl1_flow", "flow") if (root / name / "u").is_dir()), None)


def _read_class_index(path: Path) -> list[str]:
    classes = {}
    for number, line in read_text_lines(path):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{path}: line {number} is not '<index> <Class>': {line!r}")
        classes[int(parts[0])] = parts[1]
    return [classes[i] for i in sorted(classes)]
