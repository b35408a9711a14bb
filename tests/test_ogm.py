"""OGM / OGM-GE against independent computations of the official rule."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avb_testing import DEVICES, tiny_batch
from avbalance.errors import ConfigError
from avbalance.methods import get_method
from avbalance.methods.ogm import ogm_coefficients


def official_two_modality(out_a, out_v, labels, alpha):
    """The official OGM-GE rule written as the official training loop does: a Python loop over the
    batch, then ``1 - tanh(alpha * relu(ratio))`` for the modality ahead (ratio > 1), else 1. At an
    exact tie the official ``else`` branch slows audio; avbalance keeps both at 1 there (the stated
    rule, documented), so this reference takes ``elif ratio_a > 1``."""
    score_a = sum(F.softmax(out_a, dim=1)[i][labels[i]] for i in range(len(labels)))
    score_v = sum(F.softmax(out_v, dim=1)[i][labels[i]] for i in range(len(labels)))
    ratio_v = float(score_v / score_a)
    ratio_a = 1 / ratio_v
    coeff_a = coeff_v = 1.0
    if ratio_v > 1:
        coeff_v = 1 - math.tanh(alpha * max(ratio_v, 0.0))
    elif ratio_a > 1:
        coeff_a = 1 - math.tanh(alpha * max(ratio_a, 0.0))
    return coeff_a, coeff_v


def independent_many(logits: dict, labels, alpha):
    scores = {m: sum(float(F.softmax(z, 1)[i, labels[i]]) for i in range(len(labels))) for m, z in logits.items()}
    result = {}
    for m, s in scores.items():
        others = [scores[n] for n in scores if n != m]
        ratio = s / (sum(others) / len(others))
        result[m] = 1 - math.tanh(alpha * ratio) if ratio > 1 else 1.0
    return result


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_two_modalities_match_official_rule(seed, batch_size):
    generator = torch.Generator().manual_seed(seed)
    out_a = torch.randn(batch_size, 6, generator=generator) * 3
    out_v = torch.randn(batch_size, 6, generator=generator)
    labels = torch.randint(0, 6, (batch_size,), generator=generator)
    alpha = 0.1 + seed * 0.2
    coefficients = ogm_coefficients({"audio": out_a, "visual": out_v}, labels, alpha)
    expected_a, expected_v = official_two_modality(out_a, out_v, labels, alpha)
    assert coefficients["audio"].item() == pytest.approx(expected_a, abs=1e-6)
    assert coefficients["visual"].item() == pytest.approx(expected_v, abs=1e-6)
    assert min(coefficients["audio"].item(), coefficients["visual"].item()) <= 1.0
    assert max(coefficients["audio"].item(), coefficients["visual"].item()) == 1.0


def test_tie_leaves_both_unmodulated():
    logits = torch.randn(5, 4)
    labels = torch.randint(0, 4, (5,))
    coefficients = ogm_coefficients({"audio": logits, "visual": logits.clone()}, labels, alpha=0.8)
    assert coefficients["audio"].item() == 1.0 and coefficients["visual"].item() == 1.0


def test_ahead_modality_gets_one_minus_tanh():
    labels = torch.tensor([0, 1])
    strong = torch.tensor([[10.0, 0.0], [0.0, 10.0]])  # p(y) ~ 1
    weak = torch.zeros(2, 2)  # p(y) = 0.5
    coefficients = ogm_coefficients({"audio": strong, "visual": weak}, labels, alpha=0.5)
    ratio = float(F.softmax(strong, 1)[[0, 1], labels].sum() / 1.0)
    assert coefficients["audio"].item() == pytest.approx(1 - math.tanh(0.5 * ratio), abs=1e-6)
    assert coefficients["visual"].item() == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_three_modalities_use_mean_of_other_scores(seed):
    generator = torch.Generator().manual_seed(seed)
    logits = {m: torch.randn(9, 5, generator=generator) * (1 + i) for i, m in enumerate(["audio", "visual", "flow"])}
    labels = torch.randint(0, 5, (9,), generator=generator)
    coefficients = ogm_coefficients(logits, labels, alpha=0.3)
    expected = independent_many(logits, labels, alpha=0.3)
    for m in logits:
        assert coefficients[m].item() == pytest.approx(expected[m], abs=1e-6)


def _model_with_gradients(tiny_model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for p in tiny_model.parameters():
        p.grad = torch.randn(p.shape, generator=generator).to(p.device)
    return {name: p.grad.clone() for name, p in tiny_model.named_parameters()}


def test_ogm_scales_exactly_the_convolution_kernels(tiny_model):
    batch = tiny_batch()
    output = tiny_model(batch)
    method = get_method("ogm", alpha=0.7)
    method.on_epoch_start(0)
    before = _model_with_gradients(tiny_model)
    expected = ogm_coefficients(output.unimodal_logits, batch["label"], 0.7)
    method.after_backward(tiny_model, output, batch)
    for name, p in tiny_model.named_parameters():
        modality = name.split(".")[1] if name.startswith("encoders.") else None
        if modality is not None and p.dim() == 4:
            assert torch.equal(p.grad, before[name] * expected[modality]), name
        else:
            assert torch.equal(p.grad, before[name]), name  # BN, head: untouched
    assert any(expected[m].item() < 1 for m in expected)


def test_ogm_all_option_scales_every_encoder_tensor(tiny_model):
    batch = tiny_batch(seed=3)
    output = tiny_model(batch)
    method = get_method("ogm", alpha=0.7, modulate="all")
    before = _model_with_gradients(tiny_model)
    expected = ogm_coefficients(output.unimodal_logits, batch["label"], 0.7)
    method.after_backward(tiny_model, output, batch)
    for name, p in tiny_model.named_parameters():
        if name.startswith("encoders."):
            assert torch.equal(p.grad, before[name] * expected[name.split(".")[1]]), name
        else:
            assert torch.equal(p.grad, before[name]), name


def test_ogm_uses_scores_accumulated_in_loss(tiny_model):
    """With gradient accumulation, coefficients come from all micro-batches of the step."""
    first, second = tiny_batch(seed=4), tiny_batch(seed=5)
    method = get_method("ogm", alpha=0.5)
    out1, out2 = tiny_model(first), tiny_model(second)
    method.loss(out1, first)
    method.loss(out2, second)
    merged = {m: torch.cat([out1.unimodal_logits[m], out2.unimodal_logits[m]]) for m in out1.unimodal_logits}
    expected = ogm_coefficients(merged, torch.cat([first["label"], second["label"]]), 0.5)
    method.after_backward(tiny_model, out2, second)
    for m in expected:
        assert method.logs()[f"coeff/{m}"].item() == pytest.approx(expected[m].item(), abs=1e-6)


def test_outside_window_nothing_changes(tiny_model):
    batch = tiny_batch()
    output = tiny_model(batch)
    for name in ("ogm", "ogm_ge"):
        method = get_method(name, alpha=0.9, modulation_starts=2, modulation_ends=4)
        for epoch in (0, 1, 5):
            method.on_epoch_start(epoch)
            before = _model_with_gradients(tiny_model, seed=epoch)
            method.after_backward(tiny_model, output, batch)
            for n, p in tiny_model.named_parameters():
                assert torch.equal(p.grad, before[n]), (name, epoch, n)


def test_window_bounds_are_inclusive(tiny_model):
    batch = tiny_batch(seed=7)
    output = tiny_model(batch)
    method = get_method("ogm", alpha=0.9, modulation_starts=2, modulation_ends=4)
    conv = tiny_model.encoders["audio"].conv1.weight
    for epoch in (2, 4):
        method.on_epoch_start(epoch)
        _model_with_gradients(tiny_model)
        before = conv.grad.clone()
        method.after_backward(tiny_model, output, batch)
        k = method.logs()["coeff/audio"]
        assert torch.equal(conv.grad, before * k)


def seeded_streams(seed, count, device="cpu"):
    """Generators on ``device``: 0 seeded with the seed, k > 0 with the 64-bit seed NumPy's
    SeedSequence spawns from (seed, k)."""
    spawned = [np.random.SeedSequence(seed, spawn_key=(k,)).generate_state(1, np.uint64)[0] for k in range(1, count)]
    return [torch.Generator(device).manual_seed(int(s)) for s in [seed, *spawned]]


def stream_of_each(sizes, streams):
    """The noise rule's split: the tensors, in order, cut into one part per stream, cut k where the
    elements before it come closest to k/streams of all (the later index on a tie, never before the
    previous cut); part k drawn from stream k."""
    parts, starts = len(streams), [0]
    for k in range(1, parts):
        share = sum(sizes) * k / parts
        best = starts[-1]
        for index in range(starts[-1], len(sizes) + 1):
            if abs(sum(sizes[:index]) - share) <= abs(sum(sizes[:best]) - share):
                best = index
        starts.append(best)
    part_of = [max(k for k in range(parts) if starts[k] <= index) for index in range(len(sizes))]
    return [streams[k] for k in part_of]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("streams", [1, 8])
@pytest.mark.parametrize("channels_last", [False, True])
def test_ogm_ge_noise_is_the_official_draw_from_seeded_streams(tiny_model, channels_last, streams, device):
    """k * g + N(0, (std(g) + 1e-8)^2), drawn in tensor order from the method's seeded generator or,
    with ``noise_streams``, each modality's kernels cut into that many parts of about equal size, each
    drawn from its own seeded stream (the streams go on from one modality to the next); channels-last kernels (the
    engine's default layout) get the same numbers element for element, in the kernels' logical
    order, and keep their layout. On a GPU the generators are the device's."""
    from avbalance.engine.epoch_data import to_device
    from avbalance.engine.module import to_channels_last

    tiny_model.to(device)
    if channels_last:
        to_channels_last(tiny_model)
    batch = to_device(tiny_batch(seed=2), torch.device(device))
    output = tiny_model(batch)
    method = get_method("ogm_ge", alpha=0.4, seed=123, noise_streams=streams)
    before = _model_with_gradients(tiny_model)
    for p in tiny_model.parameters():
        p.grad = torch.empty_like(p).copy_(p.grad)  # in the parameter's layout, as autograd leaves it
    k = ogm_coefficients(output.unimodal_logits, batch["label"], 0.4)
    method.after_backward(tiny_model, output, batch)
    laid_out_channels_last = 0
    generators = seeded_streams(123, streams, device)  # drawn on, modality after modality
    used = set()
    for modality in tiny_model.modalities:
        named = list(tiny_model.encoders[modality].named_parameters())
        kernels = [(name, p) for name, p in named if p.dim() == 4]
        for name, p in named:
            full = f"encoders.{modality}.{name}"
            if p.dim() != 4:
                assert torch.equal(p.grad, before[full])
        for (name, p), generator in zip(kernels, stream_of_each([p.numel() for _, p in kernels], generators)):
            used.add(id(generator))
            g = before[f"encoders.{modality}.{name}"]
            noise = torch.randn(g.shape, generator=generator, device=device) * (g.std() + 1e-8)
            torch.testing.assert_close(p.grad, g * k[modality] + noise, rtol=1e-5, atol=1e-6)
            assert p.grad.stride() == p.stride()
            laid_out_channels_last += not p.grad.is_contiguous()
    assert (laid_out_channels_last > 0) == channels_last
    assert len(used) == 1 if streams == 1 else len(used) >= 4  # several streams draw


def test_ogm_ge_noise_does_not_depend_on_the_thread_count(tiny_model):
    """The streams are drawn at once on several threads and in order on one: the same numbers."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = ge_noise(tiny_model, seed=5, noise_streams=8)
        torch.set_num_threads(2)
        together = ge_noise(tiny_model, seed=5, noise_streams=8)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, together)


def test_ogm_ge_noise_is_standard_normal_per_element():
    """Over many elements of gradients split across the streams, noise / sigma has mean 0, variance 1
    and no correlation between the streams' parts."""
    from avbalance.methods.ogm_ge import OGMGE

    method = OGMGE(seed=9, noise_streams=8)
    generator = torch.Generator().manual_seed(0)
    before = [torch.randn(100_000, generator=generator) * scale for scale in (1.0, 2.0, 0.5, 3.0)]
    grads = [grad.clone() for grad in before]
    method.perturb_gradients(grads)
    noise = torch.cat([(after - grad) / grad.std() for after, grad in zip(grads, before)])
    assert abs(noise.mean().item()) < 0.01 and abs(noise.var().item() - 1) < 0.01
    first, second = noise[:200_000], noise[200_000:]
    assert abs(torch.corrcoef(torch.stack([first, second]))[0, 1].item()) < 0.01


def test_ogm_ge_split_cuts_where_the_parts_balance():
    from avbalance.methods.ogm_ge import split_in_order

    assert split_in_order([5, 1, 1, 1, 2], 2, int) == [[5], [1, 1, 1, 2]]
    assert split_in_order([1, 1, 1, 1, 8], 2, int) == [[1, 1, 1, 1], [8]]
    assert split_in_order([3], 2, int) == [[3], []]  # a tie: the later cut
    assert split_in_order([], 2, int) == [[], []]
    assert split_in_order([2, 2, 2, 2, 2, 2], 3, int) == [[2, 2], [2, 2], [2, 2]]


def ge_noise(model, run_seed=None, **hparams):
    """The noise OGM-GE adds to the convolution kernels in one step (after ``set_run_seed``)."""
    method = get_method("ogm_ge", alpha=0.4, **hparams)
    if run_seed is not None:
        method.set_run_seed(run_seed)
    batch = tiny_batch(seed=2)
    output = model(batch)
    before = _model_with_gradients(model)
    k = ogm_coefficients(output.unimodal_logits, batch["label"], 0.4)
    method.after_backward(model, output, batch)
    return torch.cat(
        [
            (p.grad - before[name] * k[name.split(".")[1]]).flatten()
            for name, p in model.named_parameters()
            if name.startswith("encoders.") and p.dim() == 4
        ]
    )


def test_ogm_ge_noise_follows_the_run_seed_unless_the_method_has_its_own(tiny_model):
    first, again, second = ge_noise(tiny_model, 1), ge_noise(tiny_model, 1), ge_noise(tiny_model, 2)
    assert torch.equal(first, again)
    assert not torch.allclose(first, second)
    assert torch.equal(ge_noise(tiny_model, 1, seed=9), ge_noise(tiny_model, 2, seed=9))
    assert not torch.allclose(ge_noise(tiny_model, 1, seed=9), first)
    # without set_run_seed the run seed is 0; the method's stream is derived from it, not equal to it
    method = get_method("ogm_ge")
    assert method.draw_seed == (0 * 1_000_033 + 0x6D657468) % 2**32
    method.set_run_seed(3)
    assert method.draw_seed == (3 * 1_000_033 + 0x6D657468) % 2**32
    assert torch.equal(ge_noise(tiny_model), ge_noise(tiny_model, 0))


def test_ogm_ge_seed_hyperparameter_defaults_to_none_and_accepts_none():
    assert get_method("ogm_ge").seed is None
    assert get_method("ogm_ge", seed=None).draw_seed == get_method("ogm_ge").draw_seed
    with pytest.raises(ConfigError, match="seed"):
        get_method("ogm_ge", seed="x")


def test_ogm_ge_noise_standard_deviation_statistically():
    """Large tensors: the added noise has mean 0 and the unbiased std of the unmodulated gradient."""
    torch.manual_seed(0)
    from avb_testing import tiny_spec
    from avbalance.models import build_model

    model = build_model(tiny_spec())
    batch = tiny_batch(seed=11)
    output = model(batch)
    method = get_method("ogm_ge", alpha=0.3, seed=5)
    scale = {}
    for name, p in model.named_parameters():
        scale[name] = 0.01 * (1 + len(name) % 5)
        p.grad = torch.randn(p.shape) * scale[name]
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    k = ogm_coefficients(output.unimodal_logits, batch["label"], 0.3)
    method.after_backward(model, output, batch)
    checked = 0
    for name, p in model.named_parameters():
        if name.startswith("encoders.") and p.dim() == 4 and p.numel() >= 500:
            noise = p.grad - before[name] * k[name.split(".")[1]]
            expected_std = before[name].std().item()
            tolerance = 4 * expected_std / math.sqrt(2 * p.numel())  # 4 sigma of the std estimate
            assert abs(noise.std().item() - expected_std) < tolerance, name
            assert abs(noise.mean().item()) < 4 * expected_std / math.sqrt(p.numel()), name
            checked += 1
    assert checked >= 3


def test_ogm_refuses_one_modality():
    from avb_testing import tiny_spec
    from avbalance.models import build_model

    model = build_model(tiny_spec(modalities=("audio",)))
    with pytest.raises(ValueError, match="needs 2\\+ modalities"):
        get_method("ogm").setup(model)


def test_ogm_ge_state_restores_every_stream(tiny_model):
    """A resumed method draws, on both streams, what the uninterrupted one draws next."""
    from avbalance.methods.ogm_ge import OGMGE

    method = OGMGE(seed=4, noise_streams=8)
    grads = [torch.zeros(3000) for _ in range(2)]  # two tensors: two streams draw, the others do not
    method.perturb_gradients(grads)  # their states moved on
    state = method.state_dict()
    assert sum(saved is not None for saved in [state.get("generator"), *state["generator_streams"]]) == 2
    assert len(state["generator_streams"]) == 7
    tensors = [3000] * 8  # now every stream draws
    following = [torch.zeros(n) for n in tensors]
    method.perturb_gradients(following)
    resumed = OGMGE(seed=4, noise_streams=8)
    resumed.load_state_dict(state)
    again = [torch.zeros(n) for n in tensors]
    resumed.perturb_gradients(again)
    assert all(torch.equal(a, b) for a, b in zip(again, following))
    assert not any(torch.equal(a, b) for a in again for b in grads)


BAD_STREAMS = [
    (0, "noise_streams must be >= 1, got 0"),
    (-2, "noise_streams must be >= 1, got -2"),
    (1.5, "noise_streams: .*integer"),
]


@pytest.mark.parametrize("streams, message", BAD_STREAMS)
def test_ogm_ge_noise_streams_must_be_a_whole_number(streams, message):
    with pytest.raises(ConfigError, match=f"method 'ogm_ge': {message}"):
        get_method("ogm_ge", noise_streams=streams)


def test_parallel_draws_end_before_an_error_is_raised():
    """A failing job is raised once every other job has finished (none still writes after the call)."""
    import threading
    import time

    from avbalance.methods.randomness import run_at_once

    finished = []

    def slow():
        time.sleep(0.2)
        finished.append(threading.get_ident())

    def failing():
        raise RuntimeError("draw failed")

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="draw failed"):
            run_at_once([failing, slow, slow], torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    assert len(finished) == 2


def test_ogm_ge_noise_waves_keep_each_streams_order_within_their_limit():
    from avbalance.methods.ogm_ge import in_waves

    sizes = [[4, 4, 4], [10], [1, 1, 1, 1], []]
    parts = [[torch.zeros(n) for n in part] for part in sizes]
    waves = list(in_waves(parts, 24))  # a share of 6 elements per stream and wave
    assert [[[t.numel() for t in taken] for taken in wave] for wave in waves] == [
        [[4], [10], [1, 1, 1, 1], []],  # a tensor larger than the share goes alone
        [[4], [], [], []],
        [[4], [], [], []],
    ]
    for stream, part in enumerate(parts):  # every tensor once, in its stream's order
        dealt = [t for wave in waves for t in wave[stream]]
        assert len(dealt) == len(part) and all(a is b for a, b in zip(dealt, part))
    assert list(in_waves([[], []], 8)) == []


@pytest.mark.parametrize("streams", [1, 8])
def test_ogm_ge_noise_does_not_depend_on_the_wave_size(monkeypatch, streams):
    """Drawn in many small waves or in one: the same numbers (each stream draws its tensors in order)."""
    from avbalance.methods import ogm_ge

    generator = torch.Generator().manual_seed(1)
    before = [torch.randn(n, generator=generator) for n in (700, 50, 3000, 20, 900, 1200)]
    results = []
    for limit in (64, 1 << 23):
        monkeypatch.setattr(ogm_ge, "NOISE_WAVE_ELEMENTS", limit)
        grads = [grad.clone() for grad in before]
        ogm_ge.OGMGE(seed=2, noise_streams=streams).modulate_gradients(grads, torch.tensor(0.5))
        results.append(grads)
    assert all(torch.equal(a, b) for a, b in zip(*results))
    assert not any(torch.equal(a, b * 0.5) for a, b in zip(results[0], before))  # noise was added
