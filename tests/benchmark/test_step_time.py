"""``benchmarks/step_time.py``'s alternating comparisons: each variant trains in turn, under
autocast only where asked, and its steps are timed after one warm-up round."""

import torch

from avb_testing import load_benchmark, tiny_batch, tiny_spec
from avbalance.methods import get_method
from avbalance.models import build_model

step_time = load_benchmark("step_time")


def tiny_variant():
    torch.manual_seed(0)
    model = build_model(tiny_spec()).train()
    return model, torch.optim.SGD(model.parameters(), lr=0.1), get_method("baseline")


def test_alternate_runs_each_variant_in_turn_under_its_own_autocast():
    seen = []
    variants = {"32-true": tiny_variant(), "bf16-mixed": tiny_variant()}
    for name, (model, _, _) in variants.items():
        model.register_forward_hook(
            lambda module, args, output, name=name: seen.append(
                (name, torch.is_autocast_enabled("cpu"), output.logits.dtype)
            )
        )
    before = {name: variant[0].encoders.audio.conv1.weight.clone() for name, variant in variants.items()}
    result = step_time.alternate(
        variants, tiny_batch(), steps=2, device=torch.device("cpu"), autocast={"bf16-mixed": torch.bfloat16}
    )

    # a warm-up round, then two timed ones; float32 first in every round
    assert [name for name, _, _ in seen] == ["32-true", "bf16-mixed"] * 3
    assert {(name, enabled) for name, enabled, _ in seen} == {("32-true", False), ("bf16-mixed", True)}
    assert {name: dtype for name, _, dtype in seen} == {"32-true": torch.float32, "bf16-mixed": torch.bfloat16}
    assert set(result) == {"32-true", "bf16-mixed"}
    for timing in result.values():
        assert set(timing) == {"wall", "cpu"} and timing["wall"] > 0
    for name, (model, _, _) in variants.items():  # every step trained its own model
        assert not torch.equal(model.encoders.audio.conv1.weight, before[name])
        assert model.encoders.audio.conv1.weight.dtype == torch.float32


def test_alternate_calls_reverses_the_order_every_other_round_and_leaves_out_the_warm_up():
    calls = []
    result = step_time.alternate_calls({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert calls == ["b", "a", "a", "b", "b", "a", "a", "b"]  # warm-up round first
    assert set(result) == {"a", "b"} and all(seconds >= 0 for seconds in result.values())


def test_parts_times_both_stems_and_both_sgd_steps_on_the_official_size_model():
    result = step_time.parts_benchmark(frames=1, batch_size=2, repeats=1)
    assert list(result) == ["audio stem", "visual stem", "SGD step"]
    for timing in result.values():
        assert set(timing) == {"official", "avbalance"} and min(timing.values()) > 0


def test_the_official_stem_order_gives_the_same_values_as_the_encoders():
    torch.manual_seed(0)
    encoder = build_model(tiny_spec()).encoders.audio.train()
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(step_time.official_stem(encoder, x), encoder.stem(x))
