"""The verification protocol on real speech (FSDD, ../shared/data; skipped when it is absent):
identities trained on some recordings of each speaker, verified on held-out recordings."""

import json
from pathlib import Path

import pytest

from avbalance.cli import main

RAW = Path(__file__).resolve().parents[2].parent / "shared" / "data"
RECORDINGS = RAW / "fsdd" / "recordings"
AUDIO = ["--audio", "fbank", "--sample-rate", "8000", "--mel-bins", "40", "--seconds", "1", "--workers", "1"]


def write_manifest(path: Path, indices: range, split_of) -> Path:
    """Digits 0-4 of every speaker: the recordings with the given indices, labelled by speaker."""
    lines = ["id,label,split,audio"]
    for wav in sorted(RECORDINGS.glob("*.wav")):
        digit, speaker, index = wav.stem.split("_")
        if int(index) in indices and int(digit) < 5:
            lines.append(f"{wav.stem},{speaker},{split_of(int(index))},{wav}")
    path.write_text("\n".join(lines) + "\n")
    return path


TRAIN = (
    "--dataset manifest --method mmcosine --fusion cosine --epochs 3 --batch-size 16 --optimizer adam --lr 0.003 "
    "--set model.width=8 --set model.layers=[1,1,1] --set optim.scheduler=none --set trainer.progress_bar=false "
    "--accelerator cpu"
).split()


def test_fsdd_speakers_verified_on_held_out_recordings(tmp_path):
    if not RECORDINGS.is_dir():
        pytest.skip(f"real data absent: {RECORDINGS} not found (see ../shared/data/README.md)")
    train_csv = write_manifest(tmp_path / "train.csv", range(5, 12), lambda i: "test" if i < 7 else "train")
    eval_csv = write_manifest(tmp_path / "eval.csv", range(0, 2), lambda i: "test")
    for name, csv in (("train", train_csv), ("eval", eval_csv)):
        prepare = ["prepare", "manifest", "--root", str(tmp_path), "--csv", str(csv), "--out", str(tmp_path / name)]
        assert main([*prepare, *AUDIO]) == 0
    run = tmp_path / "run"
    assert main(["train", *TRAIN, "--data", str(tmp_path / "train"), "--out", str(run)]) == 0
    verify = ["verify", "--ckpt", str(run), "--data", str(tmp_path / "eval"), "--trials-from-cache", "100"]
    assert main([*verify, "--seed", "0"]) == 0
    result = json.loads((run / "verification.json").read_text())
    assert result["trials"] == 200 and set(result) >= {"fused", "audio"}
    assert result["fused"]["eer"] < 0.3, result  # six speakers, 60 held-out recordings
    assert (run / "trials.txt").is_file() and (run / "det.png").is_file()
