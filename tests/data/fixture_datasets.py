"""Tiny raw datasets in each dataset's official layout, generated at test time."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from fixture_media import (
    tone,
    write_corrupt,
    write_frame_folder,
    write_idx,
    write_video,
    write_wav,
)

CREMAD_EMOTIONS = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]


def frequency(index: int) -> float:
    return 300.0 + 120.0 * index


def write_tone_video(path: Path, seconds: float, fps: int, index: int, rate: int = 16000, **options) -> Path:
    """A video whose audio track is class ``index``'s tone (sampled at ``rate``) over the whole clip."""
    audio = tone(seconds, rate, frequency(index))
    return write_video(path, seconds=seconds, fps=fps, audio=audio, audio_rate=rate, **options)


def make_cremad(root: Path, actors=(1001, 1002, 1003, 1004, 1005)) -> Path:
    """Every actor says one sentence with every emotion; flv video with an mp3 track + 16 kHz wav."""
    for actor in actors:
        for index, emotion in enumerate(CREMAD_EMOTIONS):
            stem = f"{actor}_DFA_{emotion}_XX"
            write_tone_video(root / "VideoFlash" / f"{stem}.flv", 2.5, fps=10, index=index, rate=22050)
            write_wav(root / "AudioWAV" / f"{stem}.wav", tone(2.2, 16000, frequency(index)), 16000)
    return root


def make_ave(root: Path) -> Path:
    categories = ["Church bell", "Dog bark", "Male speech"]
    rows = {"train": [], "val": [], "test": []}
    number = 0
    for index, category in enumerate(categories):
        for split, count in (("train", 3), ("val", 1), ("test", 1)):
            for _ in range(count):
                video_id = f"vid{number:03d}"
                number += 1
                write_tone_video(root / "AVE" / f"{video_id}.mp4", 3.0, fps=10, index=index)
                rows[split].append(f"{category}&{video_id}&good&1&3")
    header = "Category&VideoID&Quality&StartTime&EndTime"
    (root / "Annotations.txt").write_text("\n".join([header, *rows["train"], *rows["val"], *rows["test"]]) + "\n")
    for split, name in (("train", "trainSet.txt"), ("val", "valSet.txt"), ("test", "testSet.txt")):
        (root / name).write_text("\n".join(rows[split]) + "\n")
    return root


def make_kinetics_sounds(root: Path) -> Path:
    """Kinetics CSVs; the 'reading book' class is outside the class list given in classes.txt."""
    labels = ["playing drums", "playing piano", "reading book"]
    (root / "annotations").mkdir(parents=True)
    for split, name, count in (("train", "train.csv", 3), ("val", "validate.csv", 1)):
        with open(root / "annotations" / name, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split", "is_cc"])
            for index, label in enumerate(labels):
                for k in range(count):
                    youtube_id = f"{split}{index}{k}-x_Y"
                    writer.writerow([label, youtube_id, 10, 12, split, 0])
                    folder = root / split / label.replace(" ", "_")
                    write_tone_video(folder / f"{youtube_id}_000010_000012.mp4", 2.0, fps=10, index=index)
    (root / "classes.txt").write_text("playing drums\nplaying piano\n")
    return root


def make_vggsound(root: Path) -> Path:
    """vggsound.csv with a quoted label containing a comma, a missing video and a bad row."""
    labels = ["dog barking", "male speech, man speaking"]
    rows = []
    for index, label in enumerate(labels):
        for k, split in enumerate(["train", "train", "train", "test"]):
            youtube_id = f"v{index}{k}"
            rows.append([youtube_id, 30 + k, label, split])
            write_tone_video(root / "video" / f"{youtube_id}_{30 + k:06d}.mp4", 2.0, fps=10, index=index)
    rows.append(["gone", 5, labels[0], "train"])  # no video on disk
    with open(root / "vggsound.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
        handle.write("broken row without fields\n")
    return root


def make_esc50(root: Path) -> Path:
    categories = {0: "dog", 1: "rooster", 2: "rain"}
    rows = []
    for fold in range(1, 6):
        for target, category in categories.items():
            filename = f"{fold}-1000{target}-A-{target}.wav"
            write_wav(root / "audio" / filename, tone(1.0, 44100, frequency(target)), 44100)
            rows.append([filename, fold, target, category, "False", f"1000{target}", "A"])
    (root / "meta").mkdir(parents=True)
    with open(root / "meta" / "esc50.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        writer.writerows(rows)
    return root


def make_ssw60(root: Path) -> Path:
    """Two species; one test video has no audio track at all."""
    rows = []
    for label in (0, 1):
        for k, split in enumerate(["train", "train", "test"]):
            asset = f"{4800 + 10 * label + k}"
            silent = label == 1 and split == "test"
            write_video(
                root / "video_ml" / f"{asset}.mp4",
                seconds=2.0,
                fps=25,
                audio=None if silent else tone(2.0, 22050, frequency(label)),
                audio_rate=22050,
            )
            rows.append([asset, label, split, 25])
    with open(root / "video_ml.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["asset_id", "label", "split", "fps"])
        writer.writerows(rows)
    with open(root / "taxa.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "species_code", "common_name"])
        writer.writerows([[0, "cangoo", "Canada Goose"], [1, "wooduc", "Wood Duck"]])
    return root


def make_voxceleb(root: Path) -> Path:
    """VoxCeleb2-style mp4 for two speakers, VoxCeleb1-style wav + face frames for a third."""
    for index, speaker in enumerate(["id00012", "id00015"]):
        for video in ("aaaa", "bbbb", "cccc"):
            for utt in ("00001", "00002"):
                write_tone_video(root / "mp4" / speaker / video / f"{utt}.mp4", 1.5, fps=10, index=index)
    for video in ("dddd", "eeee", "ffff"):
        write_wav(root / "wav" / "id10001" / video / "00001.wav", tone(1.5, 16000, frequency(2)), 16000)
        write_frame_folder(root / "frames" / "id10001" / video / "00001", count=30, size=24)
    return root


def make_voxceleb_eval(root: Path) -> Path:
    """A VoxCeleb1-test-style evaluation set: wav + face frames of two speakers, two videos each,
    with an identification split file that the evaluation set must ignore."""
    for index, speaker in enumerate(["id10270", "id10271"]):
        for video in ("5r0dWxy17C8", "8jEAjG6SegY"):
            for utt in ("00001", "00002"):
                write_wav(root / "wav" / speaker / video / f"{utt}.wav", tone(1.0, 16000, frequency(index)), 16000)
                write_frame_folder(root / "frames" / speaker / video / utt, count=10, size=16)
    (root / "iden_split.txt").write_text("1 id10270/5r0dWxy17C8/00001.wav\n3 id10271/5r0dWxy17C8/00001.wav\n")
    return root


def make_ucf101(root: Path, flow: bool = True) -> Path:
    classes = ["ApplyEyeMakeup", "Archery"]
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    train, test = [], []
    for name in classes:
        for group in (1, 2, 3):
            stem = f"v_{name}_g{group:02d}_c01"
            write_video(root / "UCF-101" / name / f"{stem}.avi", seconds=2.0, fps=25, colour=(1, 1, 1))
            if flow:
                write_frame_folder(root / "tvl1_flow" / "u" / stem, count=49, size=24, mode="L")
                write_frame_folder(root / "tvl1_flow" / "v" / stem, count=49, size=24, mode="L")
            (test if group == 1 else train).append(f"{name}/{stem}.avi")
    (lists / "trainlist01.txt").write_text("".join(f"{p} {classes.index(p.split('/')[0]) + 1}\n" for p in train))
    (lists / "testlist01.txt").write_text("".join(f"{p}\n" for p in test))
    return root


GRID_SENTENCES = [
    "bin blue at f two now",
    "lay green by g nine again",
    "place red in u eight please",
    "set white with z zero soon",
    "bin red at a one now",
    "lay blue by b three again",
    "place white in c four please",
    "set green with d five soon",
    "bin green at e six now",
    "lay red by f seven again",
]


def make_grid(root: Path, extension: str = ".mpg") -> Path:
    """GRID speaker s1: 3 s clips whose words are aligned 0.4 s apart after 0.5 s of silence."""
    for index, sentence in enumerate(GRID_SENTENCES):
        stem = f"clip{index:02d}"
        write_tone_video(root / "s1" / f"{stem}{extension}", 3.0, fps=25, index=index, size=(48, 48))
        lines = ["0 12500 sil"]
        for k, word in enumerate(sentence.split()):
            start = 12500 + k * 10000
            lines.append(f"{start} {start + 10000} {word}")
        lines.append(f"{12500 + 60000} 75000 sil")
        (root / "alignments" / "s1").mkdir(parents=True, exist_ok=True)
        (root / "alignments" / "s1" / f"{stem}.align").write_text("\n".join(lines) + "\n")
    return root


def make_avmnist(root: Path, recordings_per_digit: int = 8, speakers=("george", "lucas")) -> Path:
    """MNIST-style IDX files whose image of digit d is filled with grey level 20 * d + 10, and
    FSDD-style recordings (indices 0-4 test, higher train)."""
    for split, count in (("train", 60), ("t10k", 100)):
        labels = np.arange(count) % 10
        images = np.stack([np.full((28, 28), 20 * d + 10, dtype=np.uint8) for d in labels])
        write_idx(root / "mnist" / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / "mnist" / f"{split}-labels-idx1-ubyte.gz", labels)
    for digit in range(10):
        for speaker in speakers:
            for index in range(recordings_per_digit):
                write_wav(
                    root / "fsdd" / "recordings" / f"{digit}_{speaker}_{index}.wav",
                    tone(0.4, 8000, frequency(digit)),
                    8000,
                )
    return root


def make_manifest(root: Path) -> Path:
    """manifest.csv of six clips in three splits, each with a wav file and an mp4 video."""
    rows = ["id,label,split,audio,visual"]
    for index, split in enumerate(["train", "train", "train", "val", "test", "test"]):
        write_wav(root / "wav" / f"c{index}.wav", tone(1.0, 16000, frequency(index % 2)), 16000)
        write_video(root / "video" / f"c{index}.mp4", seconds=1.0, fps=10)
        rows.append(f"c{index},{['cat', 'dog'][index % 2]},{split},wav/c{index}.wav,video/c{index}.mp4")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def add_bad_files(root: Path, video: Path, audio: Path) -> None:
    """Turn one video into garbage and delete one audio file."""
    write_corrupt(root / video)
    (root / audio).unlink()
