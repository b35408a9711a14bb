"""Each dataset: a tiny raw copy in its official layout -> prepare -> loader."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest
import torch
from fixture_datasets import (
    CREMAD_EMOTIONS,
    GRID_SENTENCES,
    add_bad_files,
    make_ave,
    make_avmnist,
    make_cremad,
    make_esc50,
    make_grid,
    make_kinetics_sounds,
    make_ssw60,
    make_ucf101,
    make_vggsound,
    make_voxceleb,
)
from fixture_media import tone, write_frame_folder, write_video, write_wav
from prep_helpers import prepare, prepared_cache

from avbalance.data import build_dataset
from avbalance.data.prepare.cache import PreparedCache
from avbalance.errors import ConfigError, DataError


def failures(cache_dir) -> dict[str, str]:
    with open(cache_dir / "failures.csv", newline="") as handle:
        return {row["id"]: row["reason"] for row in csv.DictReader(handle)}


def labels_of(dataset) -> list[int]:
    return [int(dataset[i]["label"]) for i in range(len(dataset))]


def test_cremad_actor_disjoint_split_and_bad_files(tmp_path):
    raw = make_cremad(tmp_path / "raw")
    add_bad_files(raw, "VideoFlash/1005_DFA_ANG_XX.flv", "AudioWAV/1004_DFA_SAD_XX.wav")
    write_wav(raw / "AudioWAV" / "1003_DFA_FEA_XX.wav", np.zeros(16000, np.float32), 16000)  # silent
    write_wav(raw / "AudioWAV" / "1003_DFA_DIS_XX.wav", tone(0.05, 16000), 16000)  # too short
    out = tmp_path / "cache"
    assert prepare("cremad", raw, out, "--size", "32", workers=2) == 0

    reasons = failures(out)
    assert set(reasons) == {"1005_DFA_ANG_XX", "1004_DFA_SAD_XX", "1003_DFA_FEA_XX", "1003_DFA_DIS_XX"}
    assert "cannot decode" in reasons["1005_DFA_ANG_XX"] and "missing file" in reasons["1004_DFA_SAD_XX"]
    assert "silent" in reasons["1003_DFA_FEA_XX"] and "too short" in reasons["1003_DFA_DIS_XX"]

    cache = PreparedCache(out)
    assert len(cache.rows) == 30 and len(cache.ok_rows()) == 26
    assert {r["status"] for r in cache.rows if r["id"] in reasons} == {"failed"}
    actors = {split: {r["actor"] for r in cache.ok_rows() if r["split"] == split} for split in ("train", "val", "test")}
    assert all(actors[split] for split in actors)
    assert (
        not (actors["train"] & actors["test"])
        and not (actors["train"] & actors["val"])
        and not (actors["val"] & actors["test"])
    )
    assert cache.array("audio").dtype == np.float16 and cache.array("visual").dtype == np.uint8

    splits = build_dataset("cremad", str(out))
    assert splits.info.num_classes == 6 and splits.info.class_names == CREMAD_EMOTIONS
    assert splits.info.input_shapes == {"audio": (1, 257, 188), "visual": (3, 1, 32, 32)}
    assert len(splits.train) + len(splits.val) + len(splits.test) == 26
    sample = splits.test[0]
    assert sample["audio"].shape == (1, 257, 188) and sample["audio"].dtype == torch.float32
    assert sample["visual"].shape == (3, 1, 32, 32) and sample["label"].dtype == torch.int64
    # the label comes from the emotion in the file name
    for row, label in zip([r for r in cache.ok_rows() if r["split"] == "test"], labels_of(splits.test)):
        assert CREMAD_EMOTIONS[label] == row["id"].split("_")[2]
    batch = next(iter(torch.utils.data.DataLoader(splits.train, batch_size=4, shuffle=True)))
    assert batch["visual"].shape == (4, 3, 1, 32, 32) and batch["label"].shape == (4,)


def test_cremad_official_lists(tmp_path):
    raw = make_cremad(tmp_path / "raw", actors=(1001, 1002))
    train_list, test_list = tmp_path / "train.csv", tmp_path / "test.csv"
    train_list.write_text(
        "1001_DFA_ANG_XX,ANG\n1001_DFA_NEU_XX,NEU\n1001_DFA_HAP_XX,HAP\n1001_DFA_HAP_XX,HAP\n1002_DFA_SAD_XX,XYZ\n"
    )
    test_list.write_text("1002_DFA_ANG_XX,ANG\n1002_DFA_FEA_XX,FEA\n")
    out = tmp_path / "cache"
    assert (
        prepare("cremad", raw, out, "--size", "16", "--train-list", str(train_list), "--test-list", str(test_list)) == 0
    )
    reasons = failures(out)
    assert "listed twice" in reasons["1001_DFA_HAP_XX"] and "unknown label 'XYZ'" in reasons["1002_DFA_SAD_XX"]
    cache = PreparedCache(out)
    assert Counter(r["split"] for r in cache.ok_rows()) == {"train": 3, "test": 2}
    splits = build_dataset("cremad", str(out), frames=2)
    assert len(splits.train) + len(splits.val) == 3  # val carved from train
    assert splits.test[0]["visual"].shape == (3, 2, 16, 16)

    bad = tmp_path / "bad.csv"
    bad.write_text("only-one-field\n")
    with pytest.raises(DataError, match="bad.csv: line 1"):
        prepare("cremad", raw, tmp_path / "c2", "--train-list", str(bad), "--test-list", str(test_list))


def test_ave_official_splits_and_event_segments(tmp_path):
    raw = make_ave(tmp_path / "raw")
    out = tmp_path / "cache"
    cache = prepared_cache("ave", raw, out, "--size", "16", "--seconds", "3", "--event-only")
    assert cache.class_names == ["Church bell", "Dog bark", "Male speech"]
    assert Counter(r["split"] for r in cache.ok_rows()) == {"train": 9, "val": 3, "test": 3}
    # the event is [1, 3) s of each clip at 1 fps: two frames per clip
    assert {r["visual_count"] for r in cache.ok_rows()} == {"2"}
    splits = build_dataset("ave", str(out))
    assert splits.val is not None and len(splits.val) == 3
    assert splits.info.input_shapes["audio"] == (1, 257, 188)
    assert sorted(labels_of(splits.test)) == [0, 1, 2]


def test_kinetics_sounds_class_list_and_splits(tmp_path):
    raw = make_kinetics_sounds(tmp_path / "raw")
    out = tmp_path / "cache"
    cache = prepared_cache("kinetics_sounds", raw, out, "--size", "16", "--seconds", "2")
    assert cache.class_names == ["playing drums", "playing piano"]
    assert (out / "classes.txt").read_text() == "playing drums\nplaying piano\n"
    assert Counter(r["split"] for r in cache.ok_rows()) == {"train": 6, "test": 2}
    splits = build_dataset("kinetics_sounds", str(out))
    assert splits.info.input_shapes == {"audio": (1, 128, 198), "visual": (3, 3, 16, 16)}


def test_vggsound_derived_classes_and_audio_window(tmp_path):
    raw = make_vggsound(tmp_path / "raw")
    out = tmp_path / "cache"
    assert prepare("vggsound", raw, out, "--size", "16", "--seconds", "2") == 0
    reasons = failures(out)
    assert "missing video" in reasons["gone_000005"]
    assert any("bad row" in reason for reason in reasons.values())
    cache = PreparedCache(out)
    assert cache.class_names == ["dog barking", "male speech, man speaking"]
    assert cache.modalities["audio"]["row_shape"] == [129, 251]
    splits = build_dataset("vggsound", str(out), audio_seconds=1.0)
    assert splits.info.input_shapes["audio"] == (1, 129, 126)
    torch.manual_seed(0)
    windows = {tuple(splits.train[0]["audio"][0, :, 0].tolist()) for _ in range(5)}
    assert splits.train[0]["audio"].shape == (1, 129, 126) and len(windows) > 1  # random window in training
    assert torch.equal(splits.test[0]["audio"], splits.test[0]["audio"])  # centred window in evaluation


def test_esc50_folds(tmp_path):
    raw = make_esc50(tmp_path / "raw")
    out = tmp_path / "cache"
    cache = prepared_cache("esc50", raw, out)
    assert cache.class_names == ["dog", "rooster", "rain"] and set(cache.modalities) == {"audio"}
    splits = build_dataset("esc50", str(out), test_fold=2, val_fold=3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 3)
    assert splits.info.input_shapes == {"audio": (1, 257, 313)}
    assert all(row["split"] == "fold2" for row in cache.ok_rows() if row["id"].startswith("2-"))
    with pytest.raises(ConfigError, match="test_fold"):
        build_dataset("esc50", str(out), test_fold=7)


def test_ssw60_keeps_videos_without_audio(tmp_path):
    raw = make_ssw60(tmp_path / "raw")
    out = tmp_path / "cache"
    cache = prepared_cache("ssw60", raw, out, "--size", "16", "--seconds", "2")
    assert cache.class_names == ["Canada Goose", "Wood Duck"]
    rows = {r["id"]: r for r in cache.ok_rows()}
    assert len(rows) == 6 and rows["4812"]["audio_present"] == "0" and rows["4800"]["audio_present"] == "1"
    assert prepare("ssw60", raw, tmp_path / "strict", "--size", "16", "--seconds", "2", "--require-audio") == 0
    assert "no audio track" in failures(tmp_path / "strict")["4812"]


def test_voxceleb_identities_from_mp4_and_frame_folders(tmp_path):
    raw = make_voxceleb(tmp_path / "raw")
    out = tmp_path / "cache"
    assert (
        prepare(
            "voxceleb",
            raw,
            out,
            "--size",
            "16",
            "--seconds",
            "1.5",
            "--test-fraction",
            "0.34",
            "--val-fraction",
            "0.34",
        )
        == 0
    )
    cache = PreparedCache(out)
    assert cache.class_names == ["id00012", "id00015", "id10001"]
    rows = cache.ok_rows()
    assert len(rows) == 15
    for speaker in cache.class_names:  # every identity in every split, one YouTube video per split
        mine = [r for r in rows if r["label"] == speaker]
        assert {r["split"] for r in mine} == {"train", "val", "test"}
        assert all(
            len({r["split"] for r in mine if r["youtube_id"] == v}) == 1 for v in {r["youtube_id"] for r in mine}
        )
    splits = build_dataset("voxceleb", str(out))
    assert splits.info.input_shapes == {"audio": (1, 128, 148), "visual": (3, 3, 16, 16)}

    (raw / "iden_split.txt").write_text(
        "1 id00012/aaaa/00001.wav\n1 id00015/aaaa/00001.wav\n3 id00012/bbbb/00001.wav\n"
        "3 id00015/bbbb/00001.wav\n2 id10001/dddd/00001.wav\n"
    )
    official = tmp_path / "official"
    assert prepare("voxceleb", raw, official, "--size", "16", "--seconds", "1.5") == 0
    assert Counter(r["split"] for r in PreparedCache(official).ok_rows()) == {"train": 2, "test": 2, "val": 1}


def test_ucf101_rgb_and_flow(tmp_path):
    raw = make_ucf101(tmp_path / "raw")
    out = tmp_path / "cache"
    cache = prepared_cache("ucf101", raw, out, "--size", "16", "--fps", "2")
    assert cache.class_names == ["ApplyEyeMakeup", "Archery"] and set(cache.modalities) == {"visual", "flow"}
    assert Counter(r["split"] for r in cache.ok_rows()) == {"train": 4, "test": 2}
    row = cache.ok_rows()[0]
    assert row["visual_count"] == row["flow_count"] == "4"  # same times for RGB and flow
    splits = build_dataset("ucf101", str(out), frames=2)
    assert splits.info.input_shapes == {"visual": (3, 2, 16, 16), "flow": (2, 2, 16, 16)}
    sample = splits.test[0]
    assert sample["flow"].shape == (2, 2, 16, 16)
    # flow images rise in grey level with time: the two frames come out in time order
    assert sample["flow"][0, 1].mean() > sample["flow"][0, 0].mean()
    assert build_dataset("ucf101", str(out), flow=False).info.modalities == ("visual",)

    rgb_only = make_ucf101(tmp_path / "raw2", flow=False)
    assert prepare("ucf101", rgb_only, tmp_path / "rgb", "--size", "16") == 0
    assert set(PreparedCache(tmp_path / "rgb").modalities) == {"visual"}


@pytest.mark.parametrize("extension", [".mpg", ".mp4"])
def test_grid_digit_words_are_cut_with_the_alignment(tmp_path, extension):
    raw = make_grid(tmp_path / "raw", extension)
    out = tmp_path / "cache"
    cache = prepared_cache("grid", raw, out, "--size", "16")
    assert cache.info == {"task": "digit"} and len(cache.ok_rows()) == 10
    # each word lasts 0.4 s: 10 frames at 25 fps, cut from 2.1 s to 2.5 s (frames 52-61 of 75)
    row = cache.ok_rows()[0]
    assert row["visual_count"] == "10"
    frames = cache.clip(row, "visual")
    expected = [20 + 200 * i / 74 for i in range(52, 62)]
    assert np.abs(frames.reshape(10, -1).mean(axis=1) - expected).max() < 6
    splits = build_dataset("grid", str(out), frames=4)
    assert splits.info.input_shapes == {"audio": (1, 128, 98), "visual": (3, 4, 16, 16)}
    assert splits.info.recommended_encoder == {"width": 16, "layers": [1, 1, 1]}
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    by_id = {
        r["id"]: words.index(s.split()[4])
        for r, s in zip(sorted(cache.ok_rows(), key=lambda r: r["id"]), GRID_SENTENCES)
    }
    for split in (splits.train, splits.val, splits.test):
        for i in range(len(split)):
            assert int(split[i]["label"]) == by_id[split.ids[i]]
    with pytest.raises(ConfigError, match="word-level digit task"):
        build_dataset("grid", str(out), task="colour")


def test_grid_sentence_labels(tmp_path):
    raw = make_grid(tmp_path / "raw")
    (raw / "alignments" / "s1" / "clip09.align").write_text("0 1000 sil\n1000 2000 hello\n")
    (raw / "alignments" / "s1" / "clip08.align").unlink()
    out = tmp_path / "cache"
    assert prepare("grid", raw, out, "--size", "16", "--task", "sentence") == 0
    reasons = failures(out)
    assert "missing alignment" in reasons["s1/clip08"] and "1 words" in reasons["s1/clip09"]
    splits = build_dataset("grid", str(out), task="colour", frames=2)
    assert splits.info.num_classes == 4 and splits.info.class_names == ["blue", "green", "red", "white"]
    assert splits.info.input_shapes == {"audio": (1, 128, 298), "visual": (3, 2, 16, 16)}
    colours = {f"s1/clip{i:02d}": s.split()[1] for i, s in enumerate(GRID_SENTENCES)}
    for split in (splits.train, splits.val, splits.test):
        for i in range(len(split)):
            assert splits.info.class_names[int(split[i]["label"])] == colours[split.ids[i]]
    visual = splits.test[0]["visual"]  # 3 s at 5 fps = 15 stored frames; 2 segment centres in time order
    assert visual[:, 1].mean() > visual[:, 0].mean()
    letters = build_dataset("grid", str(out), task="letter")
    assert letters.info.num_classes == 25
    with pytest.raises(ConfigError, match="task"):
        build_dataset("grid", str(out), task="verb")


def test_avmnist_pairs_by_class(tmp_path):
    raw = make_avmnist(tmp_path / "raw")
    write_wav(raw / "fsdd" / "recordings" / "notadigit.wav", tone(0.4, 8000), 8000)
    out = tmp_path / "cache"
    assert prepare("avmnist", raw, out) == 0
    assert "file name" in failures(out)["notadigit"]
    cache = PreparedCache(out)
    assert Counter(r["split"] for r in cache.ok_rows()) == {"train": 60, "test": 100}
    for row in cache.ok_rows():  # the image's grey level encodes its MNIST class: same digit as the audio
        assert int(cache.clip(row, "visual").mean()) == 20 * int(row["label"]) + 10
        assert row["recording"].split("_")[0] == row["label"]
        index = int(row["recording"].split("_")[2])
        assert (row["split"] == "test") == (index < 5)
    splits = build_dataset("avmnist", str(out))
    assert splits.info.input_shapes == {"audio": (1, 40, 98), "visual": (3, 1, 28, 28)}
    assert splits.info.recommended_encoder == {"width": 16, "layers": [1, 1, 1]}
    # seeded pairing: the same seed pairs the same images
    assert prepare("avmnist", raw, tmp_path / "again") == 0
    again = {r["id"] for r in PreparedCache(tmp_path / "again").ok_rows()}
    assert again == {r["id"] for r in cache.ok_rows()}
    # 2 images per recording: 6 train (10 test) images of a digit serve 3 of its 6 train (5 of its
    # 10 test) recordings; the others are reported, not dropped silently
    assert prepare("avmnist", raw, tmp_path / "two", "--images-per-recording", "2") == 0
    assert sum("left to pair" in reason for reason in failures(tmp_path / "two").values()) == 30 + 50


def test_manifest_with_video_audio_frames_and_arrays(tmp_path):
    raw = tmp_path / "raw"
    rows = ["id,label,split,audio,visual,depth,emb"]
    for i in range(6):
        label = ["cat", "dog"][i % 2]
        split = ["train", "train", "val", "test", "train", "test"][i]
        write_wav(raw / "wav" / f"c{i}.wav", tone(1.0, 16000, 300 + 100 * i), 16000)
        write_video(raw / "video" / f"c{i}.mp4", seconds=1.0, fps=10)
        write_frame_folder(raw / "depth" / f"c{i}", count=5, size=8)
        np.save(raw / f"emb{i}.npy", np.full(4, i, dtype=np.float64))
        rows.append(f"c{i},{label},{split},wav/c{i}.wav,video/c{i}.mp4,depth/c{i},emb{i}.npy")
    rows.append("c7,cat,holdout,wav/c0.wav,video/c0.mp4,depth/c0,emb0.npy")
    rows.append("c0,cat,train,wav/c0.wav,video/c0.mp4,depth/c0,emb0.npy")
    (raw / "manifest.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "cache"
    assert prepare("manifest", raw, out, "--size", "16", "--seconds", "1", "--folder-fps", "5") == 0
    reasons = failures(out)
    assert "unknown split" in reasons["c7"] and "listed twice" in reasons["c0"]
    cache = PreparedCache(out)
    assert {m: s["kind"] for m, s in cache.modalities.items()} == {
        "audio": "feature",
        "visual": "frames",
        "depth": "frames",
        "emb": "array",
    }
    splits = build_dataset("manifest", str(out), frames=2)
    assert splits.info.class_names == ["cat", "dog"]
    assert splits.info.input_shapes == {
        "audio": (1, 257, 63),
        "visual": (3, 2, 16, 16),
        "depth": (3, 2, 16, 16),
        "emb": (4,),
    }
    assert splits.info.recommended_encoder == {"width": 16, "layers": [1, 1, 1]}
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3, 1, 2)
    sample = splits.test[0]
    assert torch.equal(sample["emb"], torch.full((4,), 3.0))


def test_nan_in_a_prepared_feature_is_reported(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = ["id,label,split,emb"]
    for i in range(4):
        values = np.full(3, float(i))
        if i == 2:
            values[1] = np.nan
        if i == 3:
            values[0] = np.inf
        np.save(raw / f"e{i}.npy", values)
        rows.append(f"c{i},{'ab'[i % 2]},train,e{i}.npy")
    (raw / "manifest.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "cache"
    assert prepare("manifest", raw, out) == 0
    reasons = failures(out)
    assert set(reasons) == {"c2", "c3"}
    assert all("emb has NaN or infinite values after preparation" in reasons[c] for c in reasons)


def test_missing_layout_is_one_line_data_error(tmp_path):
    (tmp_path / "empty").mkdir()
    for dataset, needle in [
        ("cremad", "VideoFlash"),
        ("ave", "AVE"),
        ("esc50", "audio"),
        ("grid", "alignments"),
        ("vggsound", "vggsound.csv"),
        ("ucf101", "UCF-101"),
        ("avmnist", "mnist"),
        ("manifest", "manifest.csv"),
        ("ssw60", "video_ml"),
        ("kinetics_sounds", "train.csv"),
        ("voxceleb", "no utterances"),
    ]:
        with pytest.raises(DataError, match=needle) as error:
            prepare(dataset, tmp_path / "empty", tmp_path / f"out-{dataset}")
        assert "\n" not in str(error.value)
    with pytest.raises(DataError, match="not found"):
        prepare("cremad", tmp_path / "nowhere", tmp_path / "out")


def test_loader_errors(tmp_path):
    with pytest.raises(ConfigError, match="--data"):
        build_dataset("cremad", None)
    with pytest.raises(DataError, match="no such cache folder"):
        build_dataset("cremad", str(tmp_path / "nothing"))
    raw = make_esc50(tmp_path / "raw")
    assert prepare("esc50", raw, tmp_path / "esc") == 0
    with pytest.raises(DataError, match="holds 'esc50', not 'cremad'"):
        build_dataset("cremad", str(tmp_path / "esc"))
    (tmp_path / "esc" / "v0001" / "audio.npy").write_bytes(b"damaged")
    with pytest.raises(DataError, match="audio.npy: unreadable cache array"):
        build_dataset("esc50", str(tmp_path / "esc"))
    (tmp_path / "esc" / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="meta.json: unreadable"):
        build_dataset("esc50", str(tmp_path / "esc"))
