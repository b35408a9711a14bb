"""Robustness: corruptions against independent computations, missing modalities as in the Shapley
analysis, and `avbalance test --robustness`."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from avb_testing import SHAPES, tiny_spec
from avbalance.analysis.features import extract_features
from avbalance.analysis.robustness import (
    BLUR_SIGMAS,
    FRAME_DROP_RATES,
    NOISE_SNR_DB,
    add_noise,
    blur,
    corrupted_accuracy,
    drop_frames,
    robustness,
)
from avbalance.analysis.shapley import modality_contributions
from avbalance.cli import main
from avbalance.data.base import TensorDictDataset
from avbalance.models import build_model


def test_noise_reaches_the_snr_of_each_sample():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 64, 64, generator=generator) * torch.tensor([1.0, 10.0, 0.1]).view(3, 1, 1, 1)
    for snr in (20.0, 0.0, -5.0):
        noisy = add_noise(x, snr, torch.Generator().manual_seed(1))
        for sample in range(3):
            signal = float(x[sample].pow(2).mean())
            noise = float((noisy[sample] - x[sample]).pow(2).mean())
            assert 10 * math.log10(signal / noise) == pytest.approx(snr, abs=0.2)
    silent = torch.zeros(2, 5)
    assert torch.equal(add_noise(silent, 0.0, torch.Generator().manual_seed(0)), silent)
    again = add_noise(x, 5.0, torch.Generator().manual_seed(1))
    assert torch.equal(again, add_noise(x, 5.0, torch.Generator().manual_seed(1)))


def test_dropped_frames_repeat_the_last_kept_frame():
    frames = 40
    clips = torch.arange(frames, dtype=torch.float32).view(1, 1, frames, 1, 1).repeat(200, 2, 1, 3, 3)
    dropped = drop_frames(clips, 0.5, torch.Generator().manual_seed(0))
    shown = dropped[:, 0, :, 0, 0]  # which original frame each output frame shows
    assert torch.equal(dropped, shown.view(200, 1, frames, 1, 1).expand_as(clips))  # whole frames repeated
    assert bool((shown[:, 0] == 0).all())
    steps = shown[:, 1:] - shown[:, :-1]
    assert bool(((steps == 0) | (shown[:, 1:] == torch.arange(1, frames))).all())  # frozen, or the true frame
    rate = float((steps == 0).float().mean())
    assert rate == pytest.approx(0.5, abs=0.03)
    assert torch.equal(drop_frames(clips, 0.0, torch.Generator().manual_seed(0)), clips)
    assert bool((drop_frames(clips, 1.0, torch.Generator().manual_seed(0)) == 0).all())


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_blur_matches_scipy_gaussian_filter(sigma):
    image = torch.randn(2, 3, 4, 17, 13, generator=torch.Generator().manual_seed(3))
    expected = gaussian_filter(image.numpy(), sigma=(0, 0, 0, sigma, sigma), mode="nearest", truncate=3.0)
    np.testing.assert_allclose(blur(image, sigma).numpy(), expected, rtol=1e-4, atol=1e-5)
    flat = torch.full((1, 1, 9, 9), 2.5)
    torch.testing.assert_close(blur(flat, sigma), flat)


def dataset(count=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tensors = {m: torch.randn(count, *SHAPES[m], generator=generator) for m in ("audio", "visual")}
    return TensorDictDataset(tensors, torch.randint(0, 5, (count,), generator=generator))


@pytest.mark.parametrize("removal", ["zero", "mean"])
def test_missing_modality_is_the_shapley_coalition_accuracy(removal):
    torch.manual_seed(0)
    model = build_model(tiny_spec()).eval()
    test, train = dataset(seed=1), dataset(seed=2)
    result = robustness(model, test, batch_size=16, removal=removal, train_dataset=train)
    features = extract_features(model, test, 16)
    shapley = modality_contributions(model.head, features, removal, extract_features(model, train, 16))
    assert result["missing"] == {
        "audio": shapley["coalition_accuracy"]["visual"],
        "visual": shapley["coalition_accuracy"]["audio"],
    }
    assert result["clean"] == shapley["full"]


def test_curves_cover_each_modality_by_its_input_kind_and_repeat_exactly():
    torch.manual_seed(0)
    model = build_model(tiny_spec()).eval()
    test = dataset()
    first = robustness(model, test, batch_size=16, seed=4)
    assert set(first["noise"]) == {"audio", "visual"}
    assert list(first["noise"]["audio"]) == [f"{level:g}" for level in NOISE_SNR_DB]
    assert set(first["frame_drop"]) == {"visual"} and set(first["blur"]) == {"visual"}  # clips only
    assert list(first["frame_drop"]["visual"]) == [f"{level:g}" for level in FRAME_DROP_RATES]
    assert list(first["blur"]["visual"]) == [f"{level:g}" for level in BLUR_SIGMAS]
    assert robustness(model, test, batch_size=16, seed=4) == first
    values = [a for curve in first["noise"].values() for a in curve.values()]
    assert all(0.0 <= a <= 1.0 for a in values)


def test_corrupted_accuracy_counts_correct_fused_predictions():
    torch.manual_seed(0)
    model = build_model(tiny_spec()).eval()
    test = dataset(count=20)
    loader = torch.utils.data.DataLoader(test, batch_size=8)
    with torch.no_grad():
        batch = {m: test.tensors[m] for m in ("audio", "visual")}
        clean = float((model(batch).logits.argmax(1) == test.labels).float().mean())
        zeroed = {**batch, "audio": torch.zeros_like(batch["audio"])}
        without_audio = float((model(zeroed).logits.argmax(1) == test.labels).float().mean())
    assert corrupted_accuracy(model, loader, "audio", lambda x: x, torch.device("cpu")) == pytest.approx(clean)
    got = corrupted_accuracy(model, loader, "audio", torch.zeros_like, torch.device("cpu"))
    assert got == pytest.approx(without_audio)


def test_cli_writes_robustness_into_metrics_json(baseline_run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["test", "--ckpt", str(baseline_run), "--robustness", "--out", str(out)]) == 0
    written = json.loads((out / "metrics.json").read_text())
    result = written["robustness"]
    assert result["clean"] == pytest.approx(written["shapley"]["full"])
    assert result["missing"]["audio"] == pytest.approx(written["shapley"]["coalition_accuracy"]["visual"])
    assert set(result["noise"]) == {"audio", "visual"}
    assert "robustness on test" in capsys.readouterr().out
    # the strongest noise hurts at least one modality's curve on a trained model
    assert min(min(curve.values()) for curve in result["noise"].values()) < result["clean"]
    assert json.loads((baseline_run / "robustness.json").read_text()) == result

    from avbalance.analysis.report import write_report

    page = write_report([str(baseline_run)], out=tmp_path / "report", analysis=False, warn=lambda m: None)
    html = page.read_text()
    assert 'id="robustness"' in html and 'src="robustness.png"' in html
    assert (tmp_path / "report" / "robustness.png").read_bytes()[:4] == b"\x89PNG"


def test_report_figure_panels_follow_the_stored_results():
    from avbalance.analysis.report_robustness import panel_points, robustness_panels

    stored = {
        "clean": 0.9,
        "missing": {"audio": 0.4, "visual": 0.6},
        "noise": {"audio": {"20": 0.8, "-5": 0.2}},
        "blur": {"visual": {"1": 0.7}},
    }
    benchmark = {"missing": {"audio": 0.5, "visual": 0.5}}
    assert robustness_panels([stored, benchmark]) == [("missing", ""), ("noise", "audio"), ("blur", "visual")]
    assert panel_points(stored, "noise", "audio") == (["clean", "20", "-5"], [0.9, 0.8, 0.2])
    assert panel_points(stored, "missing", "") == (["clean", "no audio", "no visual"], [0.9, 0.4, 0.6])
    assert panel_points(benchmark, "noise", "audio") == ([], [])
