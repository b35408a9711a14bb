"""VoxCeleb1 / VoxCeleb2: speaker identification from face frames and speech, and evaluation sets
for speaker verification.

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

With ``--eval-set`` the folder is an evaluation set whose speakers are not training classes (the
VoxCeleb1 test speakers): every utterance goes to the ``test`` split, labelled with its speaker
(the class names are the speakers found), and keeps its id ``<speaker>/<video>/<utt>`` -- the name
the verification trial lists give it, less the file suffix.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import ConfigError, DataError
from ..prepare.options import SplitOptions, option, split_rule
from ..prepare.plan import AUDIO, FOLDER, VIDEO, ClipTask, Failure, Listing, Source
from ..registry import register_dataset
from .cached import AudioLayout, Frames, LoaderOptions, PreparedDataset, build_splits
from .layout import read_text_lines, sorted_labels

SPLIT_CODES = {"1": "train", "2": "val", "3": "test"}


class VoxcelebOptions(SplitOptions):
    split_file: Path | None = option(None, "identification split (default: ROOT/iden_split.txt if present)")
    max_speakers: int | None = option(None, "keep only the first N speakers (sorted ids)", ge=1)
    eval_set: bool = option(
        False,
        "an evaluation set for speaker verification: every utterance in the test split, labelled with its "
        "speaker (no split file, no generated split)",
    )


@register_dataset
class Voxceleb(PreparedDataset):
    """VoxCeleb1/2 speaker identification from face frames + audio"""

    examples = (
        "  avbalance prepare voxceleb --root ~/data/voxceleb2/dev --out ~/cache/vox2-100 --max-speakers 100\n"
        "  avbalance prepare voxceleb --root ~/data/voxceleb1 --out ~/cache/vox1 --split-file iden_split.txt\n"
        "  avbalance prepare voxceleb --root ~/data/voxceleb1/test --out ~/cache/vox1-test --eval-set\n"
    )
    Options = VoxcelebOptions
    audio = "fbank"
    prepare_defaults = {"seconds": 4.0, "test_fraction": 0.1}

    @staticmethod
    def list_clips(root: Path, options: VoxcelebOptions) -> Listing:
        if options.eval_set and options.split_file:
            raise ConfigError(f"{options.split_file}: --eval-set puts every utterance in test; give no --split-file")
        utterances = _Utterances(root)
        speakers = sorted_labels(key.split("/")[0] for key in utterances.keys)[: options.max_speakers]
        splits = {} if options.eval_set else _read_split_file(_split_file(root, options.split_file))
        listing = Listing(clips=[], class_names=speakers, info={"eval_set": True} if options.eval_set else {})
        wanted = set(speakers)
        for key in sorted(splits) if splits else utterances.keys:
            if key.split("/")[0] in wanted:
                split = "test" if options.eval_set else splits.get(key, "")
                utterances.add_clip(key, split, listing)
        if not splits and not options.eval_set:
            listing.split_rule = split_rule(
                options, group=lambda clip: clip.columns["youtube_id"], stratify=lambda clip: clip.label
            )
        return listing

    @classmethod
    def load(
        cls,
        root: str | None = None,
        frames: Frames = 3,
        image_size: int | None = None,
        augment: bool = True,
        audio_layout: AudioLayout = "image",
    ):
        """VoxCeleb identification from a cache made by ``avbalance prepare voxceleb``.

        Options: ``frames`` per utterance (default 3; ``all``: every stored frame),
        ``image_size`` (default: stored size), ``augment`` (train split), ``audio_layout``
        (``sequence``: the audio features as a ``(T, F)`` sequence). Audio: ``(1, 128, 398)``
        Kaldi-style fbank of 4 s by default.
        """
        cache = cls.open(root)
        if cache.info.get("eval_set"):
            raise ConfigError(
                f"{cache.root} is an evaluation set (every utterance in test, made with --eval-set): "
                "it scores speaker verification and cannot train a classifier"
            )
        options = LoaderOptions(frames=frames, image_size=image_size, augment=augment, audio_layout=audio_layout)
        return build_splits(cache, options)


class _Utterances:
    """The utterances found under the root: face videos, audio files and face-frame folders."""

    def __init__(self, root: Path):
        self.root = root
        self.videos = _find(root / "mp4", "*/*/*.mp4")
        self.audios = {**_find(root / "aac", "*/*/*.m4a"), **_find(root / "wav", "*/*/*.wav")}
        self.frame_dirs = {key: path for key, path in _find(root / "frames", "*/*/*").items() if path.is_dir()}
        self.keys = sorted(set(self.videos) | set(self.audios) | set(self.frame_dirs))
        if not self.keys:
            raise DataError(f"{root}: no utterances found in mp4/, wav/, aac/ or frames/ (<speaker>/<video>/<utt>)")

    def add_clip(self, key: str, split: str, listing: Listing) -> None:
        """Add utterance ``key`` to ``listing``, or a failure when its face or its audio is missing."""
        speaker, video, _ = key.split("/")
        visual = (
            Source(VIDEO, str(self.videos[key]))
            if key in self.videos
            else Source(FOLDER, str(self.frame_dirs[key]))
            if key in self.frame_dirs
            else None
        )
        audio = self.audios.get(key) or self.videos.get(key)
        if visual is None or audio is None:
            missing = "face video or frame folder" if visual is None else "audio"
            listing.failures.append(Failure(key, f"no {missing} for this utterance", str(self.root)))
            return
        sources = {"audio": Source(AUDIO, str(audio)), "visual": visual}
        listing.clips.append(ClipTask(key, speaker, split, sources, columns={"youtube_id": video}))


def _find(folder: Path, pattern: str) -> dict[str, Path]:
    """'<speaker>/<video>/<utt>' -> path, for files (or folders) three levels below ``folder``."""
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.glob(pattern):
        key = "/".join(path.relative_to(folder).with_suffix("").parts)
        if len(key.split("/")) == 3:
            found[key] = path
    return found


def _split_file(root: Path, given: Path | None) -> Path | None:
    return given or (root / "iden_split.txt" if (root / "iden_split.txt").is_file() else None)


def _read_split_file(path: Path | None) -> dict[str, str]:
    """Utterance -> split of an identification split file (empty without one)."""
    splits: dict[str, str] = {}
    for number, line in read_text_lines(path) if path else []:
        parts = line.split()
        if len(parts) != 2 or parts[0] not in SPLIT_CODES:
            raise DataError(f"{path}: line {number} is not '<1|2|3> <speaker>/<video>/<utt>.wav': {line!r}")
        splits[parts[1].rsplit(".", 1)[0]] = SPLIT_CODES[parts[0]]
    return splits
