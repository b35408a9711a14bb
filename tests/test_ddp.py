"""Distributed training (CPU, gloo, two processes): replicas stay identical and statistics are global."""

import json
import subprocess
import sys

import pytest
import torch

from ddp_workers import no_norm_model, ogm_batches, ogm_run, ogm_sharded, run_workers, train_steps

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is unavailable")


@pytest.mark.parametrize(
    "method, params",
    [("ogm_ge", {"alpha": 0.8}), ("ogm", {"alpha": 0.8}), ("ogm_ge", {"alpha": 0.5, "modulate": "all"})],
)
def test_modulated_replicas_stay_bit_identical(tmp_path, method, params):
    first, second = run_workers(train_steps, 2, tmp_path, method_name=method, method_params=params, steps=4)
    assert torch.equal(first, second)


def test_two_ranks_equal_one_process_with_the_doubled_batch(tmp_path):
    (rank0, logs0), (rank1, _) = run_workers(ogm_sharded, 2, tmp_path, steps=3, batch_size=8, alpha=0.6)
    single, logs = ogm_run(no_norm_model(), ogm_batches(3, 8), alpha=0.6)
    assert torch.equal(rank0, rank1)
    torch.testing.assert_close(rank0, single, rtol=1e-5, atol=1e-6)
    for key in logs:  # the coefficients came from the global scores
        torch.testing.assert_close(logs0[key], logs[key], rtol=1e-5, atol=1e-6)
    assert float(min(logs["coeff/audio"], logs["coeff/visual"])) < 1.0


DDP_TRAIN = (
    "train --method ogm_ge --alpha 0.5 --epochs 2 --accelerator cpu --devices 2 --strategy ddp --batch-size 16 "
    "--set data.options.train_size=200 --set data.options.test_size=81 --set trainer.progress_bar=false"
)


def test_two_process_cli_training_counts_every_test_sample_once(tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "avbalance.cli", *DDP_TRAIN.split(), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["samples"] == 81 and metrics["val"]["samples"] == 20
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "avbalance.cli",
            "test",
            "--ckpt",
            str(out / "checkpoints" / "best.ckpt"),
            "--accelerator",
            "cpu",
            "--devices",
            "1",
            "--out",
            str(tmp_path / "single"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    reference = json.loads((tmp_path / "single" / "metrics.json").read_text())["test"]
    assert reference["samples"] == 81
    for key in ("acc", "acc_audio", "acc_visual", "f1_macro", "map"):
        assert metrics["test"][key] == pytest.approx(reference[key], abs=1e-6), key
