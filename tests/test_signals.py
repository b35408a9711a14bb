"""SIGTERM and SIGINT: ``train`` saves the state to resume from and says where it stopped, exiting
with 128 + the signal's number; ``prepare`` and ``benchmark`` keep what they finished."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import avbalance.benchmark.runner as benchmark_runner
import avbalance.data.prepare.runner as prepare_runner
from avbalance.cli import main
from avbalance.engine.module import BalancedModule
from avbalance.models.checkpoint import read_checkpoint

RUN = (
    "train --method ogm_ge --alpha 0.5 --epochs 2 --batch-size 32 --set data.options.train_size=200 "
    "--set data.options.test_size=40 --set trainer.progress_bar=false --set "
    "trainer.deterministic=true --set optim.step_size=1"
).split()
STEPS_PER_EPOCH = 5  # 180 training samples (200 less the validation tenth) in full batches of 32


def last_state(run):
    return read_checkpoint(run / "checkpoints" / "last.ckpt")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("signals") / "full"
    assert main([*RUN, "--out", str(out)]) == 0
    return last_state(out)


def signal_at_step(monkeypatch, signum, step, times=1):
    """Send ``signum`` to this process ``times`` times while the training step ``step`` runs."""
    original = BalancedModule.training_step

    def training_step(self, batch, batch_idx):
        for _ in range(times if self.trainer.global_step == step else 0):
            os.kill(os.getpid(), signum)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(BalancedModule, "training_step", training_step)


@pytest.mark.parametrize("signum, status, step", [(signal.SIGTERM, 143, 3), (signal.SIGINT, 130, 8)])
def test_train_saves_and_resumes_bit_identically(tmp_path, capsys, monkeypatch, uninterrupted, signum, status, step):
    out = tmp_path / "run"
    signal_at_step(monkeypatch, signum, step)
    assert main([*RUN, "--out", str(out)]) == status
    err = capsys.readouterr().err.strip().splitlines()
    epoch = step // STEPS_PER_EPOCH
    assert err[-1] == f"avbalance: interrupted at epoch {epoch} step {step + 1}; resume with --resume auto"
    assert last_state(out)["global_step"] == step + 1  # the step under way finished, then was saved
    assert signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL)  # handlers given back

    monkeypatch.undo()
    assert main([*RUN, "--out", str(out), "--resume", "auto"]) == 0
    resumed, expected = last_state(out), uninterrupted
    assert resumed["global_step"] == expected["global_step"] == 2 * STEPS_PER_EPOCH
    for key, value in expected["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key


def test_train_interrupted_before_its_first_checkpoint_keeps_it(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    signal_at_step(monkeypatch, signal.SIGTERM, 0)
    assert main([*RUN, "--out", str(out)]) == 143
    assert "interrupted at epoch 0 step 1" in capsys.readouterr().err
    assert last_state(out)["global_step"] == 1 and (out / "config.yaml").is_file()


def test_a_second_signal_stops_at_once(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    signal_at_step(monkeypatch, signal.SIGINT, STEPS_PER_EPOCH + 2, times=2)
    assert main([*RUN, "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "avbalance: stopped at once by a second signal; resume with --resume auto"
    assert last_state(out)["global_step"] == STEPS_PER_EPOCH  # the end of epoch 0: the last checkpoint


def npy_dataset(root, clips=6):
    (root / "arrays").mkdir(parents=True)
    lines = ["id,label,split,audio"]
    for index in range(clips):
        np.save(root / "arrays" / f"c{index}.npy", np.full((4, 6), index, dtype=np.float32))
        lines.append(f"c{index},{'xy'[index % 2]},{['train', 'train', 'val', 'test'][index % 4]},arrays/c{index}.npy")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_prepare_stops_and_resumes(tmp_path, capsys, monkeypatch, signum, status):
    raw, out = npy_dataset(tmp_path / "raw"), tmp_path / "cache"
    command = ["prepare", "manifest", "--root", str(raw), "--out", str(out), "--workers", "1"]
    original, calls = prepare_runner.prepare_and_store, []

    def prepare_and_store(clip, settings, folder):
        calls.append(clip.id)
        if len(calls) == 3:
            os.kill(os.getpid(), signum)
        return original(clip, settings, folder)

    monkeypatch.setattr(prepare_runner, "prepare_and_store", prepare_and_store)
    assert main(command) == status
    err = capsys.readouterr().err
    assert re.search(r"interrupted: prepared 2, skipped 0 \(already in the cache\), failed 0; rerun the same", err)
    monkeypatch.undo()
    assert main(command) == 0
    assert "prepared 4, skipped 2 (already in the cache), failed 0" in capsys.readouterr().err


def test_benchmark_stops_and_keeps_finished_runs(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench"
    original, trained = benchmark_runner.train_one, []

    def train_one(overrides, folder):
        if len(trained) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        trained.append(folder)
        return original(overrides, folder)

    monkeypatch.setattr(benchmark_runner, "train_one", train_one)
    command = [
        "benchmark",
        "synthetic",
        "--quick",
        "--methods",
        "baseline",
        "--no-references",
        "--seeds",
        "2",
        "--jobs",
        "1",
        "--out",
        str(out),
    ]
    assert main(command) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "avbalance: interrupted; finished runs are kept: rerun the same command to go on"
    assert (trained[0] / "run.json").is_file()  # the finished run is kept
    assert not (out / "README.md").exists()


def test_sigterm_from_outside_stops_a_training_process(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "avbalance.cli", *RUN, "--epochs", "30", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "last.ckpt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-2000:]
    assert re.fullmatch(
        r"avbalance: interrupted at epoch \d+ step \d+; resume with --resume auto", err.strip().splitlines()[-1]
    )
    assert "Traceback" not in err
