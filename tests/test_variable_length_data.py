"""Variable-length data: sequences, frame stacks and text prepared from a manifest, served and
padded per batch with their lengths; audio features served as sequences; text tokenisation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixture_media import tone, write_wav
from torch.utils.data import default_collate

from avbalance.cli import main
from avbalance.data import DATASETS, build_dataset, prepared_datasets
from avbalance.data.collate import collate_for, collate_samples, make_collate
from avbalance.data.datasets.cached import stored_text
from avbalance.data.prepare.cache import PreparedCache
from avbalance.engine.config import DataConfig
from avbalance.engine.datamodule import BalancedDataModule
from avbalance.errors import ConfigError

SPLITS = ["train", "train", "train", "train", "train", "val", "test", "test"]
LENGTHS = [5, 2, 7, 3, 9, 4, 6, 1]  # sequence steps per clip
FRAME_COUNTS = [3, 4, 2, 5, 3, 2, 4, 3]
TEXTS = ["the red dog", "The dog runs", "a red cat", "the cat sleeps", "red red red", "a blue bird", "zebra", "dog"]
GREY_MEAN, GREY_STD = 0.1307, 0.3081


def prepare(raw: Path, out: Path, *options: str) -> None:
    assert main(["prepare", "manifest", "--root", str(raw), "--out", str(out), "--workers", "1", *options]) == 0


def write_manifest(raw: Path, header: str, rows: list[str]) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "manifest.csv").write_text("\n".join([header, *rows]) + "\n")


def failures(out: Path) -> dict[str, tuple[str, str]]:
    with open(out / "failures.csv", newline="") as handle:
        return {row["id"]: (row["reason"], row["file"]) for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A manifest of 8 clips: (T, 3) float sequences, (T, 8, 8) uint8 frame stacks and a text
    column, prepared by the command line. Returns (cache folder, sequences, frame stacks)."""
    raw = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(0)
    sequences = [rng.normal(size=(t, 3)).astype(np.float32) for t in LENGTHS]
    stacks = [rng.integers(0, 256, size=(t, 8, 8), dtype=np.uint8) for t in FRAME_COUNTS]
    rows = []
    for i, split in enumerate(SPLITS):
        np.save(raw / f"seq{i}.npy", sequences[i])
        np.save(raw / f"lips{i}.npy", stacks[i])
        rows.append(f"c{i},{'ab'[i % 2]},{split},seq{i}.npy,lips{i}.npy,{TEXTS[i]}")
    write_manifest(raw, "id,label,split,motion,lips,caption:text", rows)
    out = tmp_path_factory.mktemp("cache") / "cache"
    prepare(raw, out)
    return out, sequences, stacks


def test_variable_length_arrays_and_text_are_stored_ragged(clips):
    out, sequences, stacks = clips
    assert failures(out) == {}
    cache = PreparedCache(out)
    specs = {m: (s["kind"], s["row_shape"], s["dtype"]) for m, s in cache.modalities.items()}
    assert specs == {
        "motion": ("sequence", [3], "<f4"),
        "lips": ("frames", [8, 8, 1], "|u1"),
        "caption": ("text", [], "|u1"),
    }
    rows = cache.ok_rows()
    assert [row["id"] for row in rows] == [f"c{i}" for i in range(8)]
    assert [int(row["motion_count"]) for row in rows] == LENGTHS
    assert [int(row["motion_offset"]) for row in rows] == list(np.cumsum([0, *LENGTHS[:-1]]))
    assert [int(row["lips_count"]) for row in rows] == FRAME_COUNTS
    assert [int(row["lips_offset"]) for row in rows] == list(np.cumsum([0, *FRAME_COUNTS[:-1]]))
    assert cache.array("motion").shape == (sum(LENGTHS), 3)  # no padding on disk
    for i, row in enumerate(rows):
        assert np.array_equal(cache.clip(row, "motion"), sequences[i])
        assert np.array_equal(cache.clip(row, "lips")[..., 0], stacks[i])
        assert stored_text(cache.clip(row, "caption")) == TEXTS[i]
        assert int(row["caption_count"]) == len(TEXTS[i].encode("utf-8"))


def grey_frames(stack: np.ndarray) -> torch.Tensor:
    """(T, H, W) uint8 -> (3, T, H, W) normalised as grey frames, computed independently."""
    values = (torch.from_numpy(stack).double() / 255.0 - GREY_MEAN) / GREY_STD
    return values[None].repeat(3, 1, 1, 1).float()


def test_whole_clips_are_padded_per_batch_with_lengths(clips):
    out, sequences, stacks = clips
    splits = build_dataset("manifest", str(out), frames="all", augment=False)
    info = splits.info
    assert info.variable_length == ["motion", "lips", "caption"]
    assert info.input_kinds == {"motion": "sequence", "lips": "frame_stack", "caption": "text"}
    train_words = {w for text in TEXTS[:5] for w in text.lower().split()}
    assert info.vocab_sizes == {"caption": 2 + len(train_words)}
    # the longest train clip sizes positional tables
    assert info.input_shapes == {"motion": (9, 3), "lips": (3, 5, 8, 8), "caption": (3,)}

    batch = collate_for(info)([splits.train[i] for i in range(5)])
    assert batch["motion"].shape == (5, 9, 3) and batch["lips"].shape == (5, 3, 5, 8, 8)
    assert torch.equal(batch["motion_lengths"], torch.tensor(LENGTHS[:5]))
    assert torch.equal(batch["lips_lengths"], torch.tensor(FRAME_COUNTS[:5]))
    assert batch["motion_lengths"].dtype == torch.int64 and batch["caption"].dtype == torch.int64
    assert torch.equal(batch["label"], torch.tensor([0, 1, 0, 1, 0]))
    for i in range(5):
        t, k = LENGTHS[i], FRAME_COUNTS[i]
        assert torch.equal(batch["motion"][i, :t], torch.from_numpy(sequences[i]))
        assert not batch["motion"][i, t:].any()
        assert torch.allclose(batch["lips"][i, :, :k], grey_frames(stacks[i]), atol=1e-5)
        assert not batch["lips"][i, :, k:].any()
        words = len(TEXTS[i].split())
        assert batch["caption_lengths"][i] == words and not batch["caption"][i, words:].any()


def test_seq_len_takes_the_centre_pads_or_resamples(clips):
    out, sequences, _ = clips
    splits = build_dataset("manifest", str(out), seq_len=4, augment=False, frames=2)
    assert "motion" not in splits.info.variable_length and "lips" not in splits.info.variable_length
    assert splits.info.input_shapes["motion"] == (4, 3)
    assert splits.info.input_shapes["lips"] == (3, 2, 8, 8)
    longer, shorter = splits.test[0]["motion"], splits.test[1]["motion"]  # T = 6 and T = 1
    assert torch.equal(longer, torch.from_numpy(sequences[6][1:5]))  # centre window
    assert torch.equal(shorter[:1], torch.from_numpy(sequences[7])) and not shorter[1:].any()

    resampled = build_dataset("manifest", str(out), seq_len=4, resample=True)
    positions = np.linspace(0, LENGTHS[6] - 1, 4)
    expected = np.stack([np.interp(positions, np.arange(LENGTHS[6]), sequences[6][:, f]) for f in range(3)], axis=1)
    assert np.allclose(resampled.test[0]["motion"].numpy(), expected, atol=1e-6)
    assert resampled.test[1]["motion"].shape == (4, 3)  # one step repeated
    assert torch.allclose(resampled.test[1]["motion"], torch.from_numpy(sequences[7]).repeat(4, 1))


def test_seq_len_window_is_random_in_training(clips):
    out, sequences, _ = clips
    splits = build_dataset("manifest", str(out), seq_len=4, augment=True)
    torch.manual_seed(0)
    windows = [splits.train[4]["motion"] for _ in range(12)]  # T = 9: 6 possible windows
    starts = set()
    for window in windows:
        matches = [s for s in range(6) if torch.equal(window, torch.from_numpy(sequences[4][s : s + 4]))]
        assert len(matches) == 1
        starts.add(matches[0])
    assert len(starts) > 1


def test_builtin_vocabulary_is_fitted_on_train_only(clips):
    out, _, _ = clips
    splits = build_dataset("manifest", str(out))
    tokens = [splits.train[i]["caption"].tolist() for i in range(5)]
    # counts in train: red 5, the 3, dog 2, cat 2, a 1, runs 1, sleeps 1 -> ids 2.. by count, then name
    vocabulary = {"red": 2, "the": 3, "cat": 4, "dog": 5, "a": 6, "runs": 7, "sleeps": 8}
    assert tokens == [[vocabulary[w] for w in text.lower().split()] for text in TEXTS[:5]]
    assert splits.val[0]["caption"].tolist() == [vocabulary["a"], 1, 1]  # "blue", "bird" only in val
    assert splits.test[0]["caption"].tolist() == [1]  # "zebra" only in test
    assert splits.test[1]["caption"].tolist() == [vocabulary["dog"]]
    rare = build_dataset("manifest", str(out), min_count=2, max_tokens=2)
    assert rare.info.vocab_sizes["caption"] == 2 + 4
    assert rare.train[1]["caption"].tolist() == [3, 5]  # "the dog" (runs: once, and cut)
    assert rare.info.input_shapes["caption"] == (2,)


def write_hf_tokenizer(folder: Path) -> dict[str, int]:
    tokenizers = pytest.importorskip("tokenizers", reason="the tokenizers library builds the test tokenizer")
    transformers = pytest.importorskip("transformers", reason="transformers (the hf extra) is not installed")
    vocab = {"[PAD]": 0, "[UNK]": 1, "dog": 2, "cat": 3, "red": 4, "the": 5}
    model = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    model.normalizer = tokenizers.normalizers.Lowercase()
    model.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=model, unk_token="[UNK]", pad_token="[PAD]")
    fast.save_pretrained(str(folder))
    return vocab


def test_hugging_face_tokenizer_from_a_local_folder(clips, tmp_path):
    out, _, _ = clips
    vocab = write_hf_tokenizer(tmp_path / "tok")
    splits = build_dataset("manifest", str(out), tokenizer=str(tmp_path / "tok"))
    assert splits.info.vocab_sizes == {"caption": len(vocab)}
    assert splits.train[0]["caption"].tolist() == [vocab["the"], vocab["red"], vocab["dog"]]
    assert splits.test[0]["caption"].tolist() == [vocab["[UNK]"]]


def test_missing_transformers_names_the_extra(clips, tmp_path, monkeypatch):
    out, _, _ = clips
    (tmp_path / "tok").mkdir()
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)
    with pytest.raises(ConfigError, match=r"pip install avbalance\[hf\]"):
        build_dataset("manifest", str(out), tokenizer=str(tmp_path / "tok"))


def test_options_for_modalities_the_cache_lacks_are_refused(clips, tmp_path):
    out, _, _ = clips
    with pytest.raises(ConfigError, match="frames must be a positive integer or 'all'"):
        build_dataset("manifest", str(out), frames=0)
    with pytest.raises(ConfigError, match="resample=true needs seq_len"):
        build_dataset("manifest", str(out), resample=True)
    raw = tmp_path / "raw"
    write_manifest(raw, "id,label,split,emb", [f"c{i},{'ab'[i % 2]},{s},e{i}.npy" for i, s in enumerate(SPLITS)])
    for i in range(8):
        np.save(raw / f"e{i}.npy", np.full(4, float(i)))
    prepare(raw, tmp_path / "fixed")
    assert PreparedCache(tmp_path / "fixed").modalities["emb"]["kind"] == "array"  # same shape: as before
    with pytest.raises(ConfigError, match="option seq_len applies to sequence modalities"):
        build_dataset("manifest", str(tmp_path / "fixed"), seq_len=3)


def test_bad_clips_fail_one_by_one_with_reasons(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(1)
    sequences = [rng.normal(size=(t, 3)) for t in (4, 5, 3, 6, 2, 3)]
    sequences[1][2, 1] = np.nan
    sequences[2] = np.zeros((0, 3))
    sequences[3] = rng.normal(size=(6, 4))  # another feature size
    stacks = [rng.integers(0, 256, size=(t, 8, 8, 3), dtype=np.uint8) for t in (2, 3, 2, 4, 3, 2)]
    stacks[4] = stacks[4].astype(np.float32) / 255
    texts = ["one", "two", "three", "four", "five", ""]
    rows = []
    for i in range(6):
        np.save(raw / f"s{i}.npy", sequences[i])
        np.save(raw / f"f{i}.npy", stacks[i])
        (raw / f"t{i}.txt").write_text(texts[i])
        rows.append(f"c{i},{'ab'[i % 2]},{['train', 'test'][i % 2]},s{i}.npy,f{i}.npy,t{i}.txt")
    write_manifest(raw, "id,label,split,motion:sequence,video:frames,note", rows)
    out = tmp_path / "cache"
    prepare(raw, out)
    reasons = failures(out)
    assert set(reasons) == {"c1", "c2", "c3", "c4", "c5"}
    assert "motion has NaN or infinite values" in reasons["c1"][0] and reasons["c1"][1] == str(raw / "s1.npy")
    assert reasons["c2"][0] == f"sequence {raw / 's2.npy'} is empty (shape (0, 3), T = 0)"
    assert reasons["c3"] == (f"motion: {raw / 's3.npy'} has shape (6, 4), other clips (T, 3)", str(raw / "s3.npy"))
    assert f"frame stack {raw / 'f4.npy'} has dtype float32; frames are uint8" in reasons["c4"][0]
    assert reasons["c5"][0] == f"empty text ({raw / 't5.txt'})"
    cache = PreparedCache(out)
    assert {m: s["kind"] for m, s in cache.modalities.items()} == {
        "motion": "sequence",
        "video": "frames",
        "note": "text",
    }
    assert np.array_equal(cache.clip(cache.ok_rows()[0], "video"), stacks[0])


def test_explicit_kinds_force_ragged_storage_and_the_guess_follows_the_first_axis(tmp_path):
    raw = tmp_path / "raw"
    rows = [f"c{i},{'ab'[i % 2]},{s},a{i}.npy,a{i}.npy,b{i}.npy" for i, s in enumerate(SPLITS)]
    write_manifest(raw, "id,label,split,fixed,forced:sequence,guessed", rows)
    for i in range(8):
        np.save(raw / f"a{i}.npy", np.full((3, 2), float(i)))  # same shape in every clip
        np.save(raw / f"b{i}.npy", np.full((i + 1, 2), float(i)))  # time varies
    prepare(raw, tmp_path / "cache")
    cache = PreparedCache(tmp_path / "cache")
    kinds = {m: (s["kind"], s["row_shape"]) for m, s in cache.modalities.items()}
    assert kinds == {"fixed": ("array", [3, 2]), "forced": ("sequence", [2]), "guessed": ("sequence", [2])}
    info = build_dataset("manifest", str(tmp_path / "cache")).info
    assert info.variable_length == ["forced", "guessed"]
    assert info.input_shapes == {"fixed": (3, 2), "forced": (3, 2), "guessed": (5, 2)}  # longest train: c4


def test_audio_features_served_as_a_sequence(tmp_path):
    raw = tmp_path / "raw"
    rows = []
    for i, split in enumerate(["train", "train", "val", "test"]):
        write_wav(raw / f"c{i}.wav", tone(1.0, 16000, 300 + 100 * i), 16000)
        rows.append(f"c{i},{'ab'[i % 2]},{split},c{i}.wav")
    write_manifest(raw, "id,label,split,audio", rows)
    prepare(raw, tmp_path / "cache", "--seconds", "1")
    cache = PreparedCache(tmp_path / "cache")
    stored = np.asarray(cache.clip(cache.ok_rows()[0], "audio")[0], dtype=np.float32)  # (F, T)
    image = build_dataset("manifest", str(tmp_path / "cache"), augment=False)
    assert image.info.input_shapes["audio"] == (1, *stored.shape) and image.info.input_kinds["audio"] == "audio"
    whole = build_dataset("manifest", str(tmp_path / "cache"), audio_layout="sequence", augment=False)
    assert whole.info.input_shapes["audio"] == stored.T.shape
    assert whole.info.input_kinds["audio"] == "sequence" and whole.info.variable_length == ["audio"]
    assert torch.equal(whole.train[0]["audio"], torch.from_numpy(stored.T))
    batch = collate_for(whole.info)([whole.train[0], whole.train[1]])
    assert torch.equal(batch["audio_lengths"], torch.tensor([stored.shape[1]] * 2))
    window = build_dataset("manifest", str(tmp_path / "cache"), audio_layout="sequence", audio_seconds=0.5)
    steps = window.info.input_shapes["audio"][0]
    assert window.info.variable_length == [] and steps < stored.shape[1]
    start = (stored.shape[1] - steps) // 2  # the centre in evaluation
    test_clip = np.asarray(cache.clip(cache.ok_rows()[3], "audio")[0], dtype=np.float32)
    assert torch.equal(window.test[0]["audio"], torch.from_numpy(test_clip[:, start : start + steps].T))


def test_every_prepared_dataset_accepts_the_serving_options():
    for name, declaration in prepared_datasets().items():
        defaults = DATASETS.defaults(name, skip=1)
        options = {}
        if "frames" in defaults:
            options["frames"] = "all"
        if declaration.audio is not None:
            options["audio_layout"] = "sequence"
        assert DATASETS.validate(name, options, skip=1).items() >= options.items(), name
    assert {"frames", "audio_layout"} <= set(DATASETS.defaults("grid", skip=1))
    with pytest.raises(ConfigError, match="audio_layout"):
        DATASETS.validate("grid", {"audio_layout": "columns"}, skip=1)


def test_collate_without_variable_length_is_the_default_collate():
    samples = [{"audio": torch.randn(1, 4, 5), "emb": torch.randn(3), "label": torch.tensor(i)} for i in range(3)]
    expected = default_collate(samples)
    for collate in (collate_samples, make_collate(set(), {})):
        batch = collate(samples)
        assert list(batch) == list(expected)
        assert all(torch.equal(batch[key], expected[key]) for key in expected)
    # a declared variable-length modality always gets lengths, even when a batch's are equal
    batch = make_collate({"emb"}, {"emb": 0})(samples)
    assert torch.equal(batch["emb_lengths"], torch.tensor([3, 3, 3])) and torch.equal(batch["emb"], expected["emb"])
    with pytest.raises(ValueError, match="more than one axis"):
        collate_samples([{"x": torch.zeros(2, 3)}, {"x": torch.zeros(3, 4)}])


def test_data_module_loaders_pad_variable_length_modalities(clips):
    out, sequences, _ = clips
    config = DataConfig(
        dataset="manifest",
        root=str(out),
        options={"frames": "all"},
        batch_size=4,
        num_workers=0,
        modalities=["motion", "caption"],
    )
    module = BalancedDataModule(config)
    assert module.info.variable_length == ["motion", "caption"]
    assert module.info.input_kinds == {"motion": "sequence", "caption": "text"}
    batch = next(iter(module.test_dataloader()))
    assert set(batch) == {"motion", "motion_lengths", "caption", "caption_lengths", "label"}
    assert torch.equal(batch["motion_lengths"], torch.tensor(LENGTHS[6:]))
    assert torch.equal(batch["motion"][1, :1], torch.from_numpy(sequences[7])) and not batch["motion"][1, 1:].any()
    assert module.info.vocab_sizes == {"caption": 9}


@pytest.mark.parametrize("method", ["baseline", "ogm_ge"])
def test_train_and_test_on_variable_length_inputs(clips, tmp_path, method):
    out, _, _ = clips
    run = tmp_path / "run"
    command = ["train", "--dataset", "manifest", "--data", str(out), "--method", method, "--epochs", "1"]
    settings = ["data.options.frames=all", "data.num_workers=0", "trainer.progress_bar=false"]
    assert main([*command, "--batch-size", "4", "--out", str(run), *(a for s in settings for a in ("--set", s))]) == 0
    spec = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)["avbalance"]
    kinds = {m: encoder["kind"] for m, encoder in spec["model_spec"]["encoders"].items()}
    assert kinds == {"motion": "gru", "lips": "framestack", "caption": "transformer"}  # chosen by kind
    assert main(["test", "--ckpt", str(run / "checkpoints" / "best.ckpt"), "--out", str(tmp_path / "test")]) == 0
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())["test"]
    assert metrics["samples"] == 2 and {"acc_motion", "acc_lips", "acc_caption"} <= set(metrics)
