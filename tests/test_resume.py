"""Exact resume after SIGKILL, and checkpoints that survive a kill while being written."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from avbalance.cli import main
from avbalance.engine import evaluate
from avbalance.models.checkpoint import atomic_torch_save, read_checkpoint

RUN = (
    "train --method ogm_ge --alpha 0.5 --epochs 4 --batch-size 32 --set data.options.train_size=300 "
    "--set data.options.test_size=40 --set trainer.progress_bar=false --set "
    "trainer.deterministic=true --set trainer.checkpoint_every_n_steps=3 --set optim.step_size=2"
).split()


def final_weights(run):
    return read_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]


def validation_by_epoch(run):
    history = json.loads((run / "history.json").read_text())
    return {r["epoch"]: {k: v for k, v in r.items() if k.startswith("val/")} for r in history}


def _start(out, *extra):
    # Every run in its own process, so all see the same threading (and so the same float results).
    return subprocess.Popen(
        [sys.executable, "-m", "avbalance.cli", *RUN, "--out", str(out), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(out, *extra):
    process = _start(out, *extra)
    _, errors = process.communicate(timeout=600)
    assert process.returncode == 0, errors[-3000:]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    _finish(out)
    return out


@pytest.mark.parametrize("seed", [0])
def test_killed_run_resumes_to_identical_weights(tmp_path, uninterrupted, seed):
    out = tmp_path / "run"
    process = _start(out)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(seed).uniform(0.0, 2.0))  # somewhere in the middle of training
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert last.exists()
    interrupted_at = read_checkpoint(last)["global_step"]
    _finish(out, "--resume", "auto")
    resumed = final_weights(out)
    assert interrupted_at <= read_checkpoint(last)["global_step"] == 32  # 4 epochs x 8 batches
    for key, value in final_weights(uninterrupted).items():
        assert torch.equal(resumed[key], value), key
    # The history survives the kill: each epoch recorded once, from the same weights. (An epoch whose
    # validation had already begun when the last checkpoint was written is not validated again.)
    history, reference = validation_by_epoch(out), validation_by_epoch(uninterrupted)
    assert 3 in history and len(json.loads((out / "history.json").read_text())) == len(history)
    assert all(history[epoch] == reference[epoch] for epoch in history)


def test_checkpoint_written_before_engine_callbacks_still_evaluates(tmp_path, uninterrupted):
    """Earlier checkpoints kept the history, skipped steps and generator states in ``avbalance`` and
    had no engine callback states: ``avbalance test`` reads them all the same."""
    checkpoint = read_checkpoint(uninterrupted / "checkpoints" / "best.ckpt")
    callbacks = checkpoint.pop("callbacks")
    checkpoint["callbacks"] = {k: v for k, v in callbacks.items() if k.startswith("ModelCheckpoint")}
    checkpoint["avbalance"].update(skipped_steps=0, rng=callbacks["GeneratorStates"])
    checkpoint["hyper_parameters"] = {
        "config": checkpoint["avbalance"]["config"],
        "model_spec": checkpoint["avbalance"]["model_spec"],
    }
    atomic_torch_save(checkpoint, tmp_path / "old.ckpt")
    expected = json.loads((uninterrupted / "metrics.json").read_text())["test"]
    assert evaluate(str(tmp_path / "old.ckpt"), accelerator="cpu", devices=1) == pytest.approx(expected, abs=1e-6)


def test_resume_auto_without_checkpoint_starts_fresh(tmp_path):
    out = tmp_path / "fresh"
    assert main(RUN[:-2] + ["--epochs", "1", "--out", str(out), "--resume", "auto"]) == 0
    assert (out / "checkpoints" / "last.ckpt").exists()


def test_kill_during_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.ones(3)}, "global_step": 7}, target)
    writer = (
        "import sys, torch; from avbalance.models.checkpoint import atomic_torch_save;"
        "atomic_torch_save({'state_dict': {'w': torch.zeros(60_000_000)}, 'global_step': 8}, sys.argv[1])"
    )
    process = subprocess.Popen([sys.executable, "-c", writer, str(target)])
    deadline = time.time() + 120
    while not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()) and time.time() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    checkpoint = read_checkpoint(target)  # still the complete previous checkpoint
    assert checkpoint["global_step"] == 7 and torch.equal(checkpoint["state_dict"]["w"], torch.ones(3))


def test_killed_write_leaves_no_partial_checkpoint_for_resume(tmp_path):
    """A run folder with only a half-written temporary file resumes from scratch, not from it."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / ".last.ckpt.abc123.tmp").write_bytes(b"PK\x03\x04 truncated")
    assert main(RUN[:-2] + ["--epochs", "1", "--out", str(out), "--resume", "auto"]) == 0
    assert read_checkpoint(out / "checkpoints" / "last.ckpt")["epoch"] == 0
