"""Dataset declarations: one registry, typed prepare options, the generated command line, the
VoxCeleb evaluation set and the plain reader of a cache's clips."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Literal

import pytest
from fixture_datasets import CREMAD_EMOTIONS, make_cremad, make_voxceleb_eval
from fixture_media import tone, write_wav
from prep_helpers import parse_prepare, prepare

from avbalance.cli import main
from avbalance.data import DATASETS, build_dataset, get_dataset, prepared_datasets, register_dataset
from avbalance.data.datasets.cached import PreparedDataset
from avbalance.data.prepare.cache import read_prepared_clips
from avbalance.data.prepare.options import PrepareOptions, option
from avbalance.errors import ConfigError, DataError
from avbalance.prepare_cli import add_option_flags, options_from_args
from avbalance.registry import RegistryError


class ToyOptions(PrepareOptions):
    colour: Literal["red", "blue"] = option("red", "which colour to keep")
    max_items: int | None = option(None, "keep only the first N items", ge=1)
    labels: Path | None = option(None, "the label file")
    mono: bool = option(False, "one channel only")


class Toy(PreparedDataset):
    """A toy dataset: toy/*.wav"""

    name = "toy"
    Options = ToyOptions
    video = False
    prepare_defaults = {"seconds": 2.0}


def toy_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toy")
    add_option_flags(parser, Toy)
    return parser


@pytest.mark.parametrize("name", sorted(prepared_datasets()))
def test_every_option_of_every_dataset_is_a_documented_flag(name, capsys):
    declaration = get_dataset(name)
    assert declaration.summary and declaration.examples.startswith(f"  avbalance prepare {name} ")
    for field in declaration.Options.model_fields.values():
        assert field.description, f"{name}: an option without a description"
    options = declaration.options(root="raw", out="cache")
    declaration.settings(options)  # the defaults make valid settings
    assert main(["prepare", name, "--help"]) == 0
    text = capsys.readouterr().out
    shown = {"video": declaration.video, "audio": bool(declaration.audio), None: True}
    for key, field in declaration.Options.model_fields.items():
        needs = (field.json_schema_extra or {}).get("needs")
        assert (f"--{key.replace('_', '-')} " in text or f"--{key.replace('_', '-')}\n" in text) == shown[needs]


def test_flags_are_generated_from_the_options_model():
    parser = toy_parser()
    args = parser.parse_args(["--root", "r", "--out", "o", "--colour", "blue", "--max-items", "3", "--mono"])
    options = options_from_args(args, Toy)
    assert isinstance(options, ToyOptions)
    assert (options.colour, options.max_items, options.mono, options.labels) == ("blue", 3, True, None)
    assert options.root == Path("r") and options.seconds == 2.0 and options.audio == "ogm"
    defaults = options_from_args(parser.parse_args(["--root", "r", "--out", "o"]), Toy)
    assert (defaults.colour, defaults.max_items, defaults.mono, defaults.workers >= 1) == ("red", None, False, True)
    text = " ".join(parser.format_help().split())
    assert "--colour {red,blue} which colour to keep (default: red)" in text
    assert "--max-items MAX_ITEMS keep only the first N items --labels LABELS" in text
    assert "--seconds SECONDS audio is tiled or cut to this length (default: 2.0)" in text
    assert "frames and audio:" in text and "--fps" not in text and "--crop" not in text  # no video


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-items", "0"], "argument --max-items: Input should be greater than or equal to 1"),
        (["--max-items", "two"], "argument --max-items: invalid int value: 'two'"),
        (["--colour", "green"], "argument --colour: invalid choice: 'green'"),
        (["--workers", "0"], "argument --workers: Input should be greater than or equal to 1"),
        (["--limit", "-5"], "argument --limit: Input should be greater than or equal to 1"),
        (["--seconds", "0"], "argument --seconds: Input should be greater than 0"),
    ],
)
def test_bad_flag_values_are_refused_naming_the_flag(flags, message, capsys):
    with pytest.raises(SystemExit):
        toy_parser().parse_args(["--root", "r", "--out", "o", *flags])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["prepare", "voxceleb", "--max-speakers", "0"], "argument --max-speakers: Input should be greater than"),
        (["prepare", "esc50", "--workers", "-2"], "argument --workers: Input should be greater than or equal to 1"),
        (["prepare", "grid", "--limit", "0"], "argument --limit: Input should be greater than or equal to 1"),
        (["prepare", "grid", "--crop", "1,2,3"], "argument --crop: expected X,Y,W,H (four integers), got '1,2,3'"),
        (["prepare", "ucf101", "--split-id", "4"], "argument --split-id: invalid choice: 4 (choose from 1, 2, 3)"),
    ],
)
def test_bad_counts_on_the_command_line_are_one_line(argv, message, tmp_path, capsys):
    argv = [*argv[:2], "--root", str(tmp_path), "--out", str(tmp_path / "c"), *argv[2:]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avbalance: error: ") and "\n" not in err and message in err, err


def test_options_from_python_are_checked_too():
    cremad = get_dataset("cremad")
    with pytest.raises(ConfigError, match=r"^--test-fraction: Input should be less than 1 \(got 1.5\)$"):
        cremad.options(root="r", out="o", test_fraction=1.5)
    with pytest.raises(ConfigError, match="no option --colour"):
        cremad.options(root="r", out="o", colour="red")


def test_a_taken_name_raises_and_a_new_dataset_is_one_class(tmp_path):
    with pytest.raises(RegistryError, match="dataset name 'cremad' is taken"):

        @register_dataset
        class Cremad(PreparedDataset):
            """Another CREMA-D"""

            name = "cremad"

    assert get_dataset("cremad").__module__ == "avbalance.data.datasets.cremad"
    register_dataset(Toy)
    try:
        assert "toy" in prepared_datasets() and Toy.summary == "A toy dataset: toy/*.wav"
        with pytest.raises(ConfigError, match="dataset 'toy' has no option 'colour'; its options are: frames"):
            build_dataset("toy", str(tmp_path), colour="red")
    finally:
        DATASETS.remove("toy")


def test_list_clips_is_a_plain_call(tmp_path):
    raw = make_cremad(tmp_path / "raw", actors=(1001, 1002))
    cremad = get_dataset("cremad")
    listing = cremad.list_clips(raw, cremad.options(root=raw, out=tmp_path / "unused"))
    assert listing.class_names == CREMAD_EMOTIONS and len(listing.clips) == 12
    assert {clip.columns["actor"] for clip in listing.clips} == {"1001", "1002"}
    assert listing.split_rule is not None and listing.split_rule.test_fraction == 0.2
    args = parse_prepare("cremad", raw, tmp_path / "c", "--seed", "4", "--test-fraction", "0.5")
    options = options_from_args(args, cremad)
    assert cremad.list_clips(raw, options).split_rule.seed == 4 and options.test_fraction == 0.5


def test_voxceleb_evaluation_set(tmp_path):
    raw = make_voxceleb_eval(tmp_path / "raw")
    write_wav(raw / "wav" / "id10271" / "zzzz" / "00001.wav", tone(1.0, 16000), 16000)  # no face: a failure
    out = tmp_path / "vox1-test"
    assert prepare("voxceleb", raw, out, "--eval-set", "--size", "8", "--seconds", "1") == 0
    clips = read_prepared_clips(out)
    speakers = ["id10270", "id10271"]
    expected = [f"{s}/{v}/{u}" for s in speakers for v in ("5r0dWxy17C8", "8jEAjG6SegY") for u in ("00001", "00002")]
    assert clips.ids == expected  # the trial lists' names less '.wav'; iden_split.txt is not used
    assert "no face video or frame folder" in (out / "failures.csv").read_text()
    assert clips.labels == [clip_id.split("/")[0] for clip_id in expected]
    assert Counter(clips.splits) == {"test": 8} and clips.class_names == speakers
    with pytest.raises(ConfigError, match="evaluation set"):
        build_dataset("voxceleb", str(out))
    with pytest.raises(ConfigError, match="give no --split-file"):
        prepare("voxceleb", raw, tmp_path / "other", "--eval-set", "--split-file", str(raw / "iden_split.txt"))
    # without --eval-set the same folder is an identification set: its split file decides
    assert prepare("voxceleb", raw, tmp_path / "iden", "--size", "8", "--seconds", "1") == 0
    assert Counter(read_prepared_clips(tmp_path / "iden").splits) == {"train": 1, "test": 1}
    with pytest.raises(DataError, match="no such cache folder"):
        read_prepared_clips(tmp_path / "none")


def earlier_settings(fps: float, size: int, audio: str, sample_rate: int, seconds: float) -> dict:
    """A settings record as the prepare command wrote it before the options became models (the keys
    not given here had the same value for every dataset)."""
    recipe = {"name": audio, "sample_rate": sample_rate, "seconds": seconds, "n_fft": 512, "hop": 353, "mel_bins": 128}
    fixed = {"waveform": False, "folder_fps": 25.0, "min_seconds": 0.1, "allow_missing_audio": False}
    return {"fps": fps, "size": size, **fixed, "audio": recipe}


# A cache prepared with the earlier command must resume, so the same flags must give exactly these settings.
EARLIER_SETTINGS = {
    ("esc50",): earlier_settings(1.0, 224, "ogm", 22050, 5.0),
    ("grid", "--size", "16"): earlier_settings(25.0, 16, "fbank", 16000, 1.0),
    ("voxceleb", "--size", "16"): earlier_settings(1.0, 16, "fbank", 16000, 4.0),
}


@pytest.mark.parametrize("argv", list(EARLIER_SETTINGS), ids=lambda argv: argv[0])
def test_settings_are_those_of_earlier_caches(argv, tmp_path):
    args = parse_prepare(argv[0], tmp_path, tmp_path / "c", *argv[1:])
    declaration = get_dataset(argv[0])
    assert declaration.settings(options_from_args(args, declaration)).to_dict() == EARLIER_SETTINGS[argv]
