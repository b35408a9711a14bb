"""Small shared helpers for the tests (tiny models and batches, epoch data, plain training loops, paths)."""

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
import torch

from avbalance.methods import get_method
from avbalance.models import model_spec

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BENCHMARKS = REPO / "benchmarks"
SHAPES = {"audio": (1, 16, 16), "visual": (3, 2, 16, 16), "flow": (2, 2, 16, 16)}
TWO, THREE = ("audio", "visual"), ("audio", "visual", "flow")

#: Devices a test runs on: the CPU, and a CUDA GPU where torch sees one (never in CI).
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]

# Hyperparameters that move a method's schedule (a start epoch, a warm-up, a stage length) into the
# first epochs, so that short runs exercise what the method does; a method not listed runs with its
# defaults.
EARLY_SCHEDULES = {
    "gblending": {"super_epoch": 1, "estimate_batches": 2},
    "greedy": {"starting_epoch": 0},
    "opm": {"modulation_starts": 0},
    "reconboost": {"stage_epochs": 1, "correct_epochs": 1},
    "relearning": {"reinit_epoch": 1},
    "umt": {"pretrain_epochs": 1},
    "valuation": {"warmup": 1},
}


def tiny_spec(fusion: str = "concat", num_classes: int = 5, modalities=TWO, **fusion_options):
    return model_spec(
        {m: SHAPES[m] for m in modalities},
        num_classes,
        fusion=fusion,
        fusion_options=fusion_options,
        width=4,
        layers=[1, 1],
    )


def tiny_batch(batch_size: int = 6, num_classes: int = 5, modalities=TWO, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    batch = {m: torch.randn(batch_size, *SHAPES[m], generator=generator) for m in modalities}
    batch["label"] = torch.randint(0, num_classes, (batch_size,), generator=generator)
    return batch


def indexed_batches(count: int, batch_size: int, modalities=TWO, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``count`` tiny batches whose ``index`` entries number the samples 0, 1, ... across the batches."""
    batches = []
    for number in range(count):
        batch = tiny_batch(batch_size, modalities=modalities, seed=seed + number)
        batch["index"] = torch.arange(number * batch_size, (number + 1) * batch_size)
        batches.append(batch)
    return batches


@contextmanager
def registered(registry, builder):
    """``builder`` registered in ``registry`` under ``builder.name`` inside the block, removed after it."""
    registry.add(builder.name, builder)
    try:
        yield builder
    finally:
        registry.remove(builder.name)


class TinySamples(torch.utils.data.Dataset):
    """``size`` tiny samples for a DataLoader: sample ``i`` is drawn with seed ``i``, labelled ``i % 5``."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        sample = {key: value[0] for key, value in tiny_batch(1, seed=index).items()}
        return {**sample, "label": torch.tensor(index % 5)}


class ListData:
    """:class:`~avbalance.methods.base.EpochData` over fixed lists of batches (one process)."""

    device = torch.device("cpu")

    def __init__(self, batches, val=None):
        self.batches, self.val = batches, val or batches

    def train_batches(self, limit=None, shuffle=False):
        return iter(self.batches[:limit])

    def val_batches(self, limit=None):
        return iter(self.val[:limit])

    def num_train_samples(self):
        return sum(len(b["label"]) for b in self.batches)


def assert_same_state(got, expected, where="state"):
    assert type(got) is type(expected), where
    if isinstance(expected, torch.Tensor):
        assert torch.equal(got, expected), where
    elif isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key in expected:
            assert_same_state(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), where
        for index, (a, b) in enumerate(zip(got, expected)):
            assert_same_state(a, b, f"{where}[{index}]")
    else:
        assert got == expected, where


#: Tensor -> Python conversions: each waits for the device (a host synchronisation).
HOST_CONVERSIONS = ("item", "tolist", "__bool__", "__float__", "__int__")


def refuse_conversion(*args, **kwargs):
    raise AssertionError("host synchronisation (.item / .tolist / bool / float / int of a tensor)")


def forbid_host_sync():
    """A context manager inside which every tensor -> Python conversion raises."""
    return mock.patch.multiple(torch.Tensor, **dict.fromkeys(HOST_CONVERSIONS, refuse_conversion))


def train_on_synthetic(method: str, out, *extra: str, **data_options) -> int:
    """``avbalance train`` of ``method`` for 2 epochs (batch 32) on synthetic data shaped by
    ``data_options``; ``extra`` command-line arguments come last. Returns the exit status."""
    from avbalance.cli import main  # imported here: DDP worker processes need not load the engine

    sets = [arg for key, value in data_options.items() for arg in ("--set", f"data.options.{key}={value}")]
    command = ["train", "--method", method, "--epochs", "2", "--batch-size", "32", "--out", str(out)]
    return main([*command, *sets, "--set", "trainer.progress_bar=false", *extra])


# Synthetic data for runs of about a second: 45 training samples (a tenth kept for validation), 16 test.
SMALL_DATA = dict(train_size=45, test_size=16, image_size=16, freq_bins=16, time_steps=16, num_classes=4)


def early_method(name: str):
    """``name`` with :data:`EARLY_SCHEDULES`' hyperparameters (its schedule within a short run)."""
    return get_method(name, **EARLY_SCHEDULES.get(name, {}))


def train_briefly(name: str, out, *extra: str) -> int:
    """``avbalance train`` of ``name`` (early schedule) for 2 epochs of :data:`SMALL_DATA`, batch 16."""
    early = [f"method.params.{key}={value}" for key, value in EARLY_SCHEDULES.get(name, {}).items()]
    sets = [arg for setting in early for arg in ("--set", setting)]
    return train_on_synthetic(name, out, "--batch-size", "16", *sets, *extra, **SMALL_DATA)


def load_benchmark(name: str):
    """The module of ``benchmarks/<name>.py`` (the folder put on ``sys.path`` for its sibling imports)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
