"""The refbench harness's launcher with the official script's device moves left on CUDA.

The harness (``../shared/refbench``) runs the authors' training loop unmodified and times each
step; its ``launch.py`` maps every CUDA device to the CPU. ``vs_official.py --accelerator cuda``
runs the harness's ``bench.py`` from a folder (:func:`cuda_overlay`) where ``launch.py`` is this
file: it loads the harness's own ``launch.py`` (from ``$REFBENCH_DIR``), installs the same patches
(DataLoader worker cap, timing probes, CPU-load probe) and puts torch's device moves back, so the
official loop trains on the GPU. A step's end is marked when the script asks for the next batch,
after its ``loss.item()`` (a host synchronisation): step totals are GPU times; the phases inside a
step (forward, backward, ...) are not synchronised and only the total is compared.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

HARNESS_FILES = ("bench.py", "make_data.py")  # what bench.py needs beside launch.py


def harness_launcher(refbench: str | os.PathLike) -> ModuleType:
    """The harness's ``launch.py`` as a module (not run)."""
    path = Path(refbench) / "launch.py"
    spec = importlib.util.spec_from_file_location("refbench_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def keeping_devices(install):
    """``install`` (the harness's ``install_torch_patches``) followed by torch's own ``to`` and
    ``cuda`` again, on tensors and modules: every other patch stays."""

    def install_keeping_devices(num_workers: int, threads: int) -> None:
        import torch

        owners = (torch.Tensor, torch.nn.Module)
        saved = {(owner, name): getattr(owner, name) for owner in owners for name in ("to", "cuda")}
        install(num_workers, threads)
        for (owner, name), original in saved.items():
            setattr(owner, name, original)

    return install_keeping_devices


def cuda_overlay(refbench: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """A folder holding the harness's ``bench.py`` and ``make_data.py`` (links) and this file as its
    ``launch.py``: ``bench.py`` run from there launches the official script on CUDA. Give the harness
    folder to the run as ``$REFBENCH_DIR``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in [*((n, Path(refbench).resolve() / n) for n in HARNESS_FILES), ("launch.py", Path(__file__))]:
        link = folder / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target.resolve())
    return folder


def main() -> None:
    refbench = os.environ.get("REFBENCH_DIR")
    if not refbench or not (Path(refbench) / "launch.py").is_file():
        sys.exit(f"refbench_on_cuda: REFBENCH_DIR={refbench!r} holds no launch.py (the harness folder)")
    launcher = harness_launcher(refbench)
    launcher.install_torch_patches = keeping_devices(launcher.install_torch_patches)
    launcher.main()


if __name__ == "__main__":
    main()
