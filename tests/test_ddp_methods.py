"""Every registered method under DDP (CPU, gloo, two processes running one shared worker): the
replicas stay identical, and what a method computes from all ranks' data is global -- two ranks with
half batches end where one process with the whole batches ends."""

import pytest
import torch

from avb_testing import EARLY_SCHEDULES, assert_same_state
from avbalance.methods import get_method, method_names
from avbalance.models import build_model
from ddp_method_workers import no_norm_spec, train_method, train_methods
from ddp_workers import run_workers

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is unavailable")

# Settings for the small MLP model: PMR's prototypes from every sample (by default from a tenth of
# each rank's batches, another subset with two ranks than with one); OGM modulating the weights (its
# default, the convolution kernels, selects nothing in an MLP).
MLP_SETTINGS = {"pmr": {"subset_fraction": 1.0}, "ogm": {"modulate": "weights"}, "ogm_ge": {"modulate": "weights"}}

# Methods whose two-rank run cannot equal one process, and why.
NOT_ONE_PROCESS = {
    "gblending": "trains model copies on each rank's own epoch-data batches",
    "umt": "pre-trains its teachers on each rank's own epoch-data batches",
    "greedy": "its MMTM blocks need ResNet encoders, whose BatchNorm sees half batches",
}


def run_settings(name: str) -> dict:
    params = {**EARLY_SCHEDULES.get(name, {}), **MLP_SETTINGS.get(name, {})}
    try:
        build_model(no_norm_spec(get_method(name, **params)))
        no_norm = True
    except ValueError:  # a method that needs convolutional encoders
        no_norm = False
    return {"name": name, "params": params, "no_norm": no_norm}


# Update scaling under an adaptive optimizer (modulate_via=lr): the same coefficient on every rank.
ADAMW_RUNS = {
    f"{name}-adamw-lr": {
        **run_settings(name),
        "params": {**run_settings(name)["params"], "modulate_via": "lr"},
        "optimizer": "adamw",
    }
    for name in ("ogm", "ogm_ge", "agm")
}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every method trained once on two ranks, in one pair of processes."""
    runs = {name: run_settings(name) for name in method_names()} | ADAMW_RUNS
    return run_workers(train_methods, 2, tmp_path_factory.mktemp("ddp"), runs=runs)


@pytest.mark.parametrize("key", ADAMW_RUNS)
def test_update_scaling_under_adamw_is_identical_on_both_ranks_and_equals_one_process(two_ranks, key):
    first, second = two_ranks[0][key], two_ranks[1][key]
    assert torch.equal(first["params"], second["params"])
    single = train_method(0, 1, **ADAMW_RUNS[key])
    torch.testing.assert_close(first["params"], single["params"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", method_names())
def test_replicas_stay_identical(two_ranks, name):
    first, second = two_ranks[0][name], two_ranks[1][name]
    assert torch.equal(first["params"], second["params"])
    assert_same_state(second["state"], first["state"])  # statistics, generators, teachers


@pytest.mark.parametrize("name", [name for name in method_names() if name not in NOT_ONE_PROCESS])
def test_two_ranks_equal_one_process(two_ranks, name):
    """Parameters, and every logged value that both ranks share (a global statistic), equal those of
    one process; values that differ between the ranks describe a rank's own batch."""
    first, second = two_ranks[0][name], two_ranks[1][name]
    single = train_method(0, 1, **run_settings(name))
    torch.testing.assert_close(first["params"], single["params"], rtol=1e-5, atol=1e-6)
    for step, (mine, theirs, alone) in enumerate(zip(first["logs"], second["logs"], single["logs"])):
        for key in mine:
            if torch.equal(mine[key], theirs[key]):
                torch.testing.assert_close(mine[key], alone[key], rtol=1e-5, atol=1e-6, msg=f"{key} at {step}")
