"""Model cost: parameter counts, FLOPs by the 2 x MAC convention, a method's step cost and timing."""

import torch
from torch import nn

from avb_testing import tiny_batch, tiny_spec
from avbalance.analysis.cost import forward_flops_per_sample, model_cost, parameter_counts
from avbalance.methods import get_method
from avbalance.models import build_model


def test_parameter_counts_are_numel_sums_per_part():
    torch.manual_seed(0)
    model = build_model(tiny_spec())
    counts = parameter_counts(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    for modality in model.modalities:
        assert counts["encoders"][modality] == sum(p.numel() for p in model.encoders[modality].parameters())
    assert counts["head"] == sum(p.numel() for p in model.head.parameters())
    assert counts["total"] == sum(counts["encoders"].values()) + counts["head"]
    assert parameter_counts(nn.Linear(7, 3)) == {"total": 7 * 3 + 3}


def test_linear_layer_costs_two_flops_per_multiply_accumulate():
    layer = nn.Linear(12, 5)
    for batch in (1, 8):
        assert forward_flops_per_sample(layer, torch.randn(batch, 12)) == 2 * 12 * 5
    stack = nn.Sequential(nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3))
    assert forward_flops_per_sample(stack, torch.randn(4, 12)) == 2 * (12 * 5 + 5 * 3)


def test_model_flops_sum_encoders_and_head():
    torch.manual_seed(0)
    model = build_model(tiny_spec())
    batch = tiny_batch(batch_size=4)
    total = forward_flops_per_sample(model, batch)
    with torch.no_grad():
        features = model.encode({m: batch[m] for m in model.modalities})
    parts = sum(forward_flops_per_sample(model.encoders[m], batch[m]) for m in model.modalities)
    head = forward_flops_per_sample(model.head, features)
    assert total == parts + head > 0


def test_agm_step_costs_more_than_baseline_and_the_model_is_untouched():
    torch.manual_seed(0)
    model = build_model(tiny_spec())
    batch = tiny_batch(batch_size=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    baseline = model_cost(model, batch, get_method("baseline"), steps=2)
    agm = model_cost(model, batch, get_method("agm"), steps=2)
    # a training step is at least forward + backward (backward ~ 2 forwards for the counted layers)
    assert baseline["step_flops_per_sample"] >= 2 * baseline["flops_per_sample"]
    # AGM's coalition passes (one per single modality, with gradients under the official preset)
    assert agm["step_flops_per_sample"] > 1.3 * baseline["step_flops_per_sample"]
    assert agm["flops_per_sample"] == baseline["flops_per_sample"]
    for result in (baseline, agm):
        assert result["ms_per_step"] > 0 and result["peak_memory_mb"] > 0
        assert result["batch_size"] == 4 and result["timed_steps"] == 2
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def benchmark_result(acc, missing=None, cost=None):
    result = {"test": {"acc": acc, "f1_macro": acc}, "val": {"acc": acc, "f1_macro": acc}, "train_seconds": 1.0}
    if missing is not None:
        result["robustness"] = {"missing": missing}
    if cost is not None:
        result["cost"] = cost
    return result


def test_benchmark_table_shows_missing_and_cost_columns_only_when_runs_hold_them():
    from avbalance.benchmark.aggregate import aggregate
    from avbalance.benchmark.report import markdown_table

    cost = {"parameters": {"total": 2_500_000}, "flops_per_sample": 3.0e7, "ms_per_step": 12.0}
    runs = {
        "baseline": {
            0: benchmark_result(0.8, {"audio": 0.5, "visual": 0.3}, cost),
            1: benchmark_result(0.7, {"audio": 0.7, "visual": 0.1}, {**cost, "ms_per_step": 14.0}),
        }
    }
    table = markdown_table(aggregate(runs), runs).splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    row = dict(zip(header, (c.strip() for c in table[2].strip("|").split("|"))))
    assert row["acc with audio missing"].startswith("60.0 ± 14.1")
    assert row["acc with visual missing"].startswith("20.0 ± 14.1")
    assert row["params"] == "2.50 M" and row["MFLOPs/sample"] == "30.0" and row["ms/step"] == "13"

    older = {"baseline": {0: benchmark_result(0.8)}}
    header = markdown_table(aggregate(older), older).splitlines()[0]
    assert "missing" not in header and "params" not in header and "ms/step" not in header


def test_report_cost_table_measures_a_run_without_stored_cost(baseline_run):
    from avbalance.analysis.groups import group_runs
    from avbalance.analysis.report import cost_table
    from avbalance.analysis.runs import load_run, read_run

    warnings = []
    groups = group_runs([read_run(baseline_run)])
    assert cost_table(groups, measure=False, warn=warnings.append) is None
    table = cost_table(groups, measure=True, warn=warnings.append)
    assert not warnings
    ((group, cells),) = table.rows
    row = dict(zip(table.columns[1:], cells))
    model = load_run(baseline_run).model
    assert row["n"] == "1"
    assert row["params (M)"] == f"{sum(p.numel() for p in model.parameters()) / 1e6:.3f}"
    assert float(row["MFLOPs/sample"]) > 0 and float(row["ms/step"]) > 0
    assert float(row["step MFLOPs/sample"]) > 2 * float(row["MFLOPs/sample"]) * 0.99
