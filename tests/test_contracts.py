"""Contracts every registered method and every preparable dataset keeps.

The tests are parametrised over the registries (``method_names()``, ``dataset_names()``), so a new
method or dataset is tested the moment it registers. A method: a short command-line run with one, two
and three modalities (or its one-line refusal), hooks free of host synchronisation, a state that
survives ``state_dict`` / ``load_state_dict``, one-line refusals of unsuitable fusion heads. A
dataset: its generated raw layout -> ``avbalance prepare`` -> ``build_dataset`` -> samples of the
declared shapes; a dataset without a raw-layout fixture fails.
"""

import functools
import io
import json
from contextlib import redirect_stderr, redirect_stdout

import fixture_datasets
import pytest
import torch

from avb_testing import (
    SMALL_DATA,
    THREE,
    TWO,
    ListData,
    assert_same_state,
    early_method,
    forbid_host_sync,
    indexed_batches,
    tiny_spec,
    train_briefly,
)
from avbalance.cli import main
from avbalance.data import build_dataset, dataset_names
from avbalance.methods import method_names
from avbalance.methods.base import PlainStep
from avbalance.models import HEADS, build_model, load_model

MODALITIES = {"one": ("visual",), "two": TWO, "three": THREE}


def modality_refusal(name: str, modalities) -> str | None:
    """The method's own one-line refusal of this many modalities, or None when it accepts them."""
    try:
        early_method(name).check_modalities(tuple(modalities))
    except ValueError as error:
        return str(error)
    return None


# -- methods -----------------------------------------------------------------------------------------
# One, two and three modalities: the synthetic dataset's optional third is "flow".


@pytest.mark.filterwarnings("ignore:Average precision score")  # a class absent from the 16 test samples
@pytest.mark.parametrize("count", MODALITIES)
@pytest.mark.parametrize("name", method_names())
def test_short_run_ends_with_metrics_or_one_line_refusal(name, count, tmp_path, capsys):
    """Two epochs through ``avbalance train``: the test metrics of every output, and a checkpoint that
    loads back as the model the method trains -- or the method's one-line refusal of the modalities."""
    modalities = MODALITIES[count]
    flow_strength = 0.3 if "flow" in modalities else 0.0
    chosen = ["--modalities", ",".join(modalities), "--set", f"data.options.flow_strength={flow_strength}"]
    code = train_briefly(name, tmp_path / "run", *chosen)
    refusal = modality_refusal(name, modalities)
    if refusal is not None:
        assert code == 2
        assert capsys.readouterr().err == f"avbalance: error: {refusal}\n"
        return
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert set(metrics) == {
        "samples",
        *(f"{kind}{suffix}" for kind in ("acc", "f1_macro", "map") for suffix in ("", *(f"_{m}" for m in modalities))),
        *(("min_branch_acc", "branch_hmean") if len(modalities) > 1 else ()),
    }
    assert metrics["samples"] == SMALL_DATA["test_size"] and 0.0 <= metrics["acc"] <= 1.0
    trained = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    expected = build_model(early_method(name).adapt_model_spec(tiny_spec(modalities=modalities)))
    assert type(trained) is type(expected) and type(trained.head) is type(expected.head)


@functools.cache
def train_plainly(name: str, count: str):
    """3 epochs of 2 tiny batches in a plain loop with epoch data, calling the hooks as the engine
    does, with every tensor -> Python conversion forbidden inside ``loss`` and ``after_backward``
    (or the method's own ``training_step``). Returns the trained method (cached: two tests read it)."""
    modalities = MODALITIES[count]
    method = early_method(name)
    torch.manual_seed(0)
    model = build_model(method.adapt_model_spec(tiny_spec(modalities=modalities)))
    batches = indexed_batches(2, 6, modalities)
    data = ListData(batches, indexed_batches(2, 5, modalities, seed=50))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    method.setup(model, optimizer, data)
    for epoch in range(3):
        method.on_epoch_start(epoch, model, data)
        for index, batch in enumerate(batches):
            plain_step(method, model, batch, PlainStep(optimizer, epoch, index, len(batches)))
        method.on_epoch_end(epoch, model, data)
    return method


def plain_step(method, model, batch, step: PlainStep) -> None:
    if method.overrides_step:
        with forbid_host_sync():
            method.training_step(model, batch, step)
        return
    output = model(batch)
    with forbid_host_sync():
        loss = method.loss(output, batch)
    step.zero_grad()
    step.backward(loss)
    with forbid_host_sync():
        method.after_backward(model, output, batch)
    step.optimizer.step()


ACCEPTED = [
    (name, count)
    for name in method_names()
    for count, modalities in MODALITIES.items()
    if modality_refusal(name, modalities) is None
]


@pytest.mark.parametrize("name, count", ACCEPTED)
def test_step_hooks_never_synchronise_with_the_host(name, count):
    """``loss`` and ``after_backward`` (or the method's own ``training_step``) keep every value on
    the device: a tensor -> Python conversion inside them raises."""
    assert train_plainly(name, count).epoch == 2


@pytest.mark.parametrize("name, count", ACCEPTED)
def test_state_dict_round_trip(name, count):
    """A method's state after some steps, loaded into a fresh instance, gives the same state."""
    state = train_plainly(name, count).state_dict()
    assert state["epoch"] == 2
    fresh = early_method(name)
    fresh.load_state_dict(state)
    assert_same_state(fresh.state_dict(), state)


def head_refusals(name: str) -> dict[str, str]:
    """Fusion head -> the method's refusal of it, for every head the method cannot train."""
    refused = {}
    for head in HEADS.names():
        try:
            build_model(early_method(name).adapt_model_spec(tiny_spec(head)))
        except ValueError as error:
            refused[head] = str(error)
    return refused


@pytest.mark.parametrize("name", method_names())
def test_unsuitable_heads_are_refused_in_one_line(name, tmp_path, capsys):
    refused = head_refusals(name)
    for head, message in refused.items():
        assert f"method {name!r}" in message and repr(head) in message and "\n" not in message, message
    if not refused:
        return
    head = sorted(refused)[0]
    assert train_briefly(name, tmp_path / "run", "--fusion", head) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"avbalance: error: method {name!r}") and repr(head) in err and err.count("\n") == 1


# -- datasets ----------------------------------------------------------------------------------------

# Prepare options a fixture needs beyond the defaults (its layout is smaller than the real one).
FIXTURE_OPTIONS = {"voxceleb": ["--test-fraction", "0.34", "--val-fraction", "0.34"]}


def prepare_offers(dataset: str) -> bool:
    """Whether ``avbalance prepare DATASET`` exists (asked through the command line)."""
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        return main(["prepare", dataset, "--help"]) == 0


@pytest.mark.parametrize("dataset", [name for name in dataset_names() if prepare_offers(name)])
def test_dataset_prepares_from_its_raw_layout_and_loads(dataset, tmp_path):
    make_raw = getattr(fixture_datasets, f"make_{dataset}", None)
    if make_raw is None:
        pytest.fail(f"no fixture for dataset {dataset}: add make_{dataset}(root) to tests/data/fixture_datasets.py")
    raw = make_raw(tmp_path / "raw")
    cache = tmp_path / "cache"
    options = FIXTURE_OPTIONS.get(dataset, [])
    assert main(["prepare", dataset, "--root", str(raw), "--out", str(cache), "--workers", "1", *options]) == 0
    splits = build_dataset(dataset, str(cache))
    assert len(splits.info.class_names) == splits.info.num_classes
    for split in (splits.train, splits.test):
        sample = split[0]
        assert {key: tuple(value.shape) for key, value in sample.items() if key != "label"} == splits.info.input_shapes
        assert sample["label"].dtype == torch.int64 and 0 <= int(sample["label"]) < splits.info.num_classes
