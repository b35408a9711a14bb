"""VoxCeleb1 / VoxCeleb2: speaker identification from face frames and speech.

Raw layout (``--root``); an utterance is ``<speaker>/<video>/<utterance>``::

    mp4/<speaker>/<video>/<utt>.mp4      face-track video (VoxCeleb2 ``dev/mp4``, ``test/mp4``);
                                         its audio track is used when there is no file below
    aac/<speaker>/<video>/<utt>.m4a      optional audio (VoxCeleb2)
    wav/<speaker>/<video>/<utt>.wav      optional audio (VoxCeleb1)
    frames/<speaker>/<video>/<utt>/*.jpg face frames when there is no mp4 (VoxCeleb1), shot at
                                         --folder-fps frames per second
    iden_split.txt                       optional (or --split-file): VoxCeleb1 identification split,
                                         rows '<1|2|3> <speaker>/<video>/<utt>.wav' (train/val/test)

Classes are the speaker ids. Without a split file the split is seeded and per speaker, with all
utterances of one YouTube video in the same split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...errors import DataError
from ..prepare.plan import (
    AUDIO,
    FOLDER,
    VIDEO,
    ClipTask,
    Failure,
    Listing,
    Preparer,
    Source,
    add_split_arguments,
    register_preparer,
    split_rule_from_args,
)
from ..registry import register_dataset
from .cached import LoaderOptions, build_splits, open_cache
from .layout import read_text_lines, sorted_labels

SPLIT_CODES = {"1": "train", "2": "val", "3": "test"}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--split-file", type=Path, help="identification split (default: ROOT/iden_split.txt if present)"
    )
    parser.add_argument("--max-speakers", type=int, help="keep only the first N speakers (sorted ids)")
    add_split_arguments(parser, test=0.1, val=0.1)


def _utterances(folder: Path, pattern: str) -> dict[str, Path]:
    """'<speaker>/<video>/<utt>' -> path, for files (or folders) three levels below ``folder``."""
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.glob(pattern):
        key = "/".join(path.relative_to(folder).with_suffix("").parts)
        if len(key.split("/")) == 3:
            found[key] = path
    return found


def list_clips(root: Path, args: argparse.Namespace) -> Listing:
    videos = _utterances(root / "mp4", "*/*/*.mp4")
    audios = {**_utterances(root / "aac", "*/*/*.m4a"), **_utterances(root / "wav", "*/*/*.wav")}
    frame_dirs = {key: path for key, path in _utterances(root / "frames", "*/*/*").items() if path.is_dir()}
    keys = sorted(set(videos) | set(audios) | set(frame_dirs))
    if not keys:
        raise DataError(f"{root}: no utterances found in mp4/, wav/, aac/ or frames/ (<speaker>/<video>/<utt>)")
    speakers = sorted_labels(key.split("/")[0] for key in keys)
    if args.max_speakers:
        speakers = speakers[: args.max_speakers]
    wanted = set(speakers)

    split_file = args.split_file or (root / "iden_split.txt" if (root / "iden_split.txt").is_file() else None)
    splits = _read_split_file(split_file) if split_file else {}
    failures: list[Failure] = []
    clips = []
    for key in sorted(splits) if splits else keys:
        speaker, video, _ = key.split("/")
        if speaker not in wanted:
            continue
        visual = (
            Source(VIDEO, str(videos[key]))
            if key in videos
            else Source(FOLDER, str(frame_dirs[key]))
            if key in frame_dirs
            else None
        )
        audio = audios.get(key) or videos.get(key)
        if visual is None or audio is None:
            missing = "face video or frame folder" if visual is None else "audio"
            failures.append(Failure(key, f"no {missing} for this utterance", str(root)))
            continue
        clips.append(
            ClipTask(
                id=key,
                label=speaker,
                split=splits.get(key, ""),
                sources={"audio": Source(AUDIO, str(audio)), "visual": visual},
                columns={"youtube_id": video},
            )
        )
    listing = Listing(clips=clips, class_names=speakers, failures=failures)
    if not splits:
        listing.split_rule = split_rule_from_args(
            args, group=lambda clip: clip.columns["youtube_id"], stratify=lambda clip: clip.label
        )
    return listing


def _read_split_file(path: Path) -> dict[str, str]:
    splits = {}
    for number, line in read_text_lines(path):
        parts = line.split()
        if len(parts) != 2 or parts[0] not in SPLIT_CODES:
            raise DataError(f"{path}: line {number} is not '<1|2|3> <speaker>/<video>/<utt>.wav': {line!r}")
        key = parts[1].rsplit(".", 1)[0]
        splits[key] = SPLIT_CODES[parts[0]]
    return splits


register_preparer(
    Preparer(
        name="voxceleb",
        summary="VoxCeleb1/2 speaker identification from face frames + audio",
        add_arguments=_add_arguments,
        list_clips=list_clips,
        audio="fbank",
        defaults={"fps": 1.0, "size": 224, "seconds": 4.0},
        examples=(
            "  avbalance prepare voxceleb --root ~/data/voxceleb2/dev --out ~/cache/vox2-100 --max-speakers 100\n"
            "  avbalance prepare voxceleb --root ~/data/voxceleb1 --out ~/cache/vox1 --split-file iden_split.txt\n"
        ),
    )
)


@register_dataset("voxceleb")
def build_voxceleb(root: str | None = None, frames: int = 3, image_size: int | None = None, augment: bool = True):
    """VoxCeleb identification from a cache made by ``avbalance prepare voxceleb``.

    Options: ``frames`` per utterance (default 3), ``image_size`` (default: stored size),
    ``augment`` (train split). Audio: ``(1, 128, 398)`` Kaldi-style fbank of 4 s by default.
    """
    cache = open_cache(root, "voxceleb")
    return build_splits(cache, LoaderOptions(frames=frames, image_size=image_size, augment=augment))
