"""Freed CPU memory is kept for the next step (glibc), and the trainer option switches it."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from avbalance.engine import run as engine_run
from avbalance.engine.config import RunConfig

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Allocates and frees a 64 MiB tensor ten times, counting the minor page faults of the last five.
PROBE = """
import json, resource, sys, torch
from avbalance.engine.cpu_memory import keep_freed_cpu_memory
took = keep_freed_cpu_memory() if sys.argv[1] == "keep" else None
for step in range(10):
    if step == 5:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(16 * 1024 * 1024)  # 64 MiB, written: every page touched
    del block
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"took": took, "faults": faults}))
"""


def probe(mode: str) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


@pytest.mark.skipif(not GLIBC, reason="the allocator settings are glibc's")
def test_kept_memory_is_reused_without_page_faults():
    pages = 64 * 1024 * 1024 // 4096
    default, kept = probe("default"), probe("keep")
    assert default["faults"] >= 4 * pages  # mapped afresh and faulted in at every allocation
    assert kept["took"] is True and kept["faults"] < pages // 10


@pytest.mark.parametrize("keep", [True, False])
def test_the_trainer_option_decides(monkeypatch, tmp_path, keep):
    calls = []
    monkeypatch.setattr(engine_run, "keep_freed_cpu_memory", lambda: calls.append(True))
    config = RunConfig.model_validate(
        {"out": str(tmp_path), "trainer": {"epochs": 1, "keep_cpu_memory": keep, "accelerator": "cpu"}}
    )
    run = engine_run.build_run(config)
    engine_run.build_trainer(config, run.method, tmp_path, callbacks=[], loggers=[])
    assert calls == ([True] if keep else [])
