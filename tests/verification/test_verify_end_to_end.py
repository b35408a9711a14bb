"""``avbalance verify`` end to end: generated VoxCeleb-layout media, prepared, trained through the
command line, verified on a generated trial list; outputs, reuse, report and one-line errors."""

import csv
import json
import os

import numpy as np
import pytest

from avbalance.cli import main
from avbalance.errors import AvbalanceError
from avbalance.verification import embeddings as embeddings_module
from avbalance.verification.metrics import equal_error_rate


@pytest.fixture(scope="module")
def trial_list(vox, tmp_path_factory):
    out = tmp_path_factory.mktemp("lists")
    assert (
        main(["verify", "--data", str(vox.eval_cache), "--trials-from-cache", "48", "--seed", "0", "--out", str(out)])
        == 0
    )
    return out / "trials.txt"


def verify_command(checkpoint, data, trials, out, *extra) -> list[str]:
    return [
        "verify",
        "--ckpt",
        str(checkpoint),
        "--data",
        str(data),
        "--trials",
        str(trials),
        "--out",
        str(out),
        *extra,
    ]


def verify(checkpoint, data, trials, out, *extra) -> dict:
    assert main(verify_command(checkpoint, data, trials, out, *extra)) == 0
    return json.loads((out / "verification.json").read_text())


def read_scores(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_trained_model_separates_speakers_and_untrained_does_not(vox, trial_list, tmp_path):
    trained = verify(vox.trained / "checkpoints" / "last.ckpt", vox.eval_cache, trial_list, tmp_path / "trained")
    untrained = verify(vox.untrained, vox.eval_cache, trial_list, tmp_path / "untrained")
    assert trained["trials"] == 96 and trained["targets"] == 48
    assert set(trained) >= {"fused", "audio", "visual"}
    assert trained["fused"]["eer"] < 0.25 and trained["audio"]["eer"] < 0.25, trained
    assert 0.3 < untrained["fused"]["eer"] < 0.7, untrained
    assert 0.0 <= trained["fused"]["min_dcf"] <= untrained["fused"]["min_dcf"]


def test_outputs_agree_with_each_other(vox, trial_list, tmp_path):
    result = verify(vox.trained / "checkpoints" / "last.ckpt", vox.eval_cache, trial_list, tmp_path)
    rows = read_scores(tmp_path / "scores.csv")
    assert len(rows) == 96 and list(rows[0]) == ["target", "enrol", "test", "fused", "visual", "audio"]
    scores = {name: np.array([float(r[name]) for r in rows]) for name in ("fused", "audio", "visual")}
    targets = np.array([r["target"] == "1" for r in rows])
    # the fused embedding concatenates unit-length modality embeddings: its cosine is their mean
    np.testing.assert_allclose(scores["fused"], (scores["audio"] + scores["visual"]) / 2, atol=2e-6)
    for name, values in scores.items():
        assert result[name]["eer"] == pytest.approx(equal_error_rate(values, targets), abs=1e-4)
    assert (tmp_path / "det.png").stat().st_size > 5000
    with np.load(tmp_path / "embeddings.npz") as saved:
        assert len(saved["ids"]) == 24  # every clip of the evaluation cache, once
        assert saved["embedding/audio"].shape[0] == 24


def test_embeddings_are_reused_until_the_checkpoint_changes(vox, trial_list, tmp_path, monkeypatch):
    checkpoint = vox.trained / "checkpoints" / "last.ckpt"
    verify(checkpoint, vox.eval_cache, trial_list, tmp_path)
    raw = [float(row["fused"]) for row in read_scores(tmp_path / "scores.csv")]

    def refuse(*args, **kwargs):
        raise AvbalanceError("the model was loaded again")

    monkeypatch.setattr(embeddings_module, "load_run", refuse)
    normalised = verify(checkpoint, vox.eval_cache, trial_list, tmp_path, "--norm", "asnorm", "--top-n", "5")
    assert normalised["settings"]["norm"] == "asnorm"
    assert not np.allclose([float(row["fused"]) for row in read_scores(tmp_path / "scores.csv")], raw)
    stat = checkpoint.stat()
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert main(verify_command(checkpoint, vox.eval_cache, trial_list, tmp_path)) == 2


def test_audio_only_cache_uses_the_shared_modality(vox, audio_only_cache, tmp_path):
    assert (
        main(
            [
                "verify",
                "--ckpt",
                str(vox.trained / "checkpoints" / "last.ckpt"),
                "--data",
                str(audio_only_cache),
                "--trials-from-cache",
                "10",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "verification.json").read_text())
    assert {k for k, v in result.items() if isinstance(v, dict) and "eer" in v} == {"fused", "audio"}
    assert result["fused"] == result["audio"]  # one modality: the fused score is its cosine
    assert result["settings"]["fused"] == "audio"


def test_report_shows_verification(vox, trial_list, tmp_path):
    verify(vox.untrained, vox.eval_cache, trial_list, vox.untrained)  # --out RUN, as by default
    assert main(["report", str(vox.untrained), "--no-analysis", "--out", str(tmp_path)]) == 0
    html = (tmp_path / "index.html").read_text()
    eer = json.loads((vox.untrained / "verification.json").read_text())["fused"]["eer"]
    assert "Speaker verification" in html and f"{100 * eer:.2f}" in html


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "Traceback" not in error
    return error


def test_user_mistakes_give_one_line(vox, speech_cache, trial_list, tmp_path, capsys):
    base = ["verify", "--ckpt", str(vox.untrained), "--data", str(vox.eval_cache), "--out", str(tmp_path)]
    bad = tmp_path / "bad.txt"
    bad.write_text("1 id10001/xxxx/00001.wav id10001/yyyy/00001.wav\n1 id10001/xxxx/00001.wav\n")
    assert one_line_error(capsys, [*base, "--trials", str(bad)]).endswith(
        f"{bad}: line 2 is not '<1|0> <enrol utterance> <test utterance>': '1 id10001/xxxx/00001.wav'"
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert f"{empty}: the trial list is empty" in one_line_error(capsys, [*base, "--trials", str(empty)])
    missing = tmp_path / "missing.txt"
    missing.write_text("1 id10001/xxxx/00001.wav id10001/qqqq/00001.wav\n0 id10009/a/1.wav id10001/xxxx/00002.wav\n")
    assert (
        f"{missing}: 2 utterance(s) of the trial list are not in the cache {vox.eval_cache} "
        f"(first: id10001/qqqq/00001.wav)"
    ) in one_line_error(capsys, [*base, "--trials", str(missing)])
    mismatch = one_line_error(
        capsys,
        [
            "verify",
            "--ckpt",
            str(vox.untrained),
            "--data",
            str(speech_cache),
            "--trials-from-cache",
            "5",
            "--out",
            str(tmp_path / "speech"),
        ],
    )
    assert mismatch.endswith(
        f"{speech_cache}: the cache holds speech, but {vox.untrained / 'checkpoints' / 'best.ckpt'} "
        f"encodes visual, audio: no modality in common"
    )
    too_many = one_line_error(capsys, [*base, "--trials-from-cache", "1000"])
    assert too_many.endswith(
        f"{vox.eval_cache}: --trials-from-cache 1000: the cache allows only 60 distinct target pairs"
    )
    assert "--ckpt is needed" in one_line_error(
        capsys, ["verify", "--data", str(vox.eval_cache), "--trials", str(trial_list)]
    )


def test_cohort_from_another_cache(vox, audio_only_cache, trial_list, tmp_path, capsys):
    checkpoint = vox.trained / "checkpoints" / "last.ckpt"
    result = verify(
        checkpoint, vox.eval_cache, trial_list, tmp_path, "--norm", "snorm", "--cohort", str(vox.train_cache)
    )
    assert result["settings"]["cohort"] == str(vox.train_cache)
    with np.load(tmp_path / "cohort_embeddings.npz") as cohort:
        assert len(cohort["ids"]) == 48 and cohort["embedding/visual"].shape[0] == 48  # every training clip
    error = one_line_error(
        capsys,
        [
            "verify",
            "--ckpt",
            str(checkpoint),
            "--data",
            str(vox.eval_cache),
            "--trials",
            str(trial_list),
            "--norm",
            "snorm",
            "--cohort",
            str(audio_only_cache),
            "--out",
            str(tmp_path / "mismatch"),
        ],
    )
    assert error.endswith(
        f"{audio_only_cache}: the cohort cache gives embeddings of audio, the evaluation cache of "
        f"visual, audio; use a cohort with the same modalities"
    )
