"""Step-time benchmark of OGM / OGM-GE modulation on the official-size audio-visual ResNet-18.

Times, separately and as the median of repeated steps:
  * forward + backward of the model (batch 16, audio 1x257x188, visual 3xTx224x224);
  * OGM's gradient scaling (``ogm``'s after_backward);
  * OGM-GE's scaling + noise (``ogm_ge``'s after_backward), with its noise drawn from one generator
    (the default) and from 8 (``noise_streams=8``: drawn at once on the CPU threads torch may use);
  * ``torch.randn`` over the same number of elements as the modulated tensors, in the same run.
It also checks that the modulation makes no host synchronisation (no tensor is converted to a
Python number) and prints a Markdown table.

``--ab`` times whole training steps (forward, loss, backward, the method's gradient work, SGD step)
of the engine's fast settings (channels-last convolutions, fused SGD) against the plain ones
(contiguous weights, torch's default SGD, as the official loop runs), alternating the two step by
step in one process so that other load on the machine hits both alike. ``--precision`` alternates
the fast settings' steps in float32 and under ``torch.autocast`` to bfloat16 (``trainer.precision:
bf16-mixed``) the same way, on one model.

    python benchmarks/step_time.py                    # frames 1 and 3, batch 16, CPU
    python benchmarks/step_time.py --frames 1 --repeats 3 --device cuda
    python benchmarks/step_time.py --ab --frames 1 3 --repeats 6
    python benchmarks/step_time.py --memory --frames 1 3 --repeats 3
    python benchmarks/step_time.py --precision --frames 1 3 --repeats 6

``--parts`` times two parts of the fast step against the way torch or the official code does them,
alternating the two in one process (median of ``--repeats``): each encoder's stem (conv1, bn1,
ReLU and max-pool, forward + backward) with max-pool before ReLU (avbalance) and after (the
official order); and the SGD step of the official-size channels-last model, torch's fused SGD
against avbalance's (the same kernel, given views in memory order).

    python benchmarks/step_time.py --parts --frames 1 3 --repeats 30

``--memory`` times whole fast training steps with ``trainer.keep_cpu_memory``'s allocator settings
against glibc's defaults, each in its own process (the settings are process-wide), alternating the
two ``--repeats`` times: median step and minor page faults per step after two warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from functools import partial

import torch

from avbalance.engine.cpu_memory import keep_freed_cpu_memory
from avbalance.engine.module import to_channels_last
from avbalance.engine.optim import fused_sgd
from avbalance.methods import get_method
from avbalance.methods.ogm import select_tensors
from avbalance.models import build_model, model_spec
from avbalance.models.encoders import fold_frames


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(function, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        synchronise(device)
        start = time.perf_counter()
        function()
        synchronise(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextmanager
def forbid_host_sync():
    """Raise if anything converts a tensor to a Python value while active."""

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation inside the modulation")

    saved = {name: getattr(torch.Tensor, name) for name in ("item", "tolist", "__bool__", "__float__", "__int__")}
    for name in saved:
        setattr(torch.Tensor, name, forbidden)
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


def official_size_spec(frames: int) -> dict:
    """The official OGM-GE model on CREMA-D: audio 1x257x188, ``frames`` visual frames of 224², 6 classes."""
    return model_spec({"audio": (1, 257, 188), "visual": (3, frames, 224, 224)}, num_classes=6)


def random_batch(frames: int, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A batch of random inputs of the official sizes."""
    return {
        "audio": torch.randn(batch_size, 1, 257, 188, device=device),
        "visual": torch.randn(batch_size, 3, frames, 224, 224, device=device),
        "label": torch.randint(0, 6, (batch_size,), device=device),
    }


def benchmark(frames: int, batch_size: int, repeats: int, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(official_size_spec(frames)).to(device).train()
    batch = random_batch(frames, batch_size, device)
    state = {}

    def forward_backward():
        model.zero_grad(set_to_none=False)
        output = model(batch)
        torch.nn.functional.cross_entropy(output.logits, batch["label"]).backward()
        state["output"] = output

    forward_backward()  # warm-up; leaves gradients in place for the modulation timings
    step = median_time(forward_backward, repeats, device)
    output = state["output"]
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    def restore():
        for n, p in model.named_parameters():
            p.grad.copy_(grads[n])

    results = {"step": step}
    variants = {"ogm": ("ogm", {}), "ogm_ge": ("ogm_ge", {}), "ogm_ge_streams": ("ogm_ge", {"noise_streams": 8})}
    for key, (name, params) in variants.items():
        method = get_method(name, alpha=0.5, **params)
        method.loss(output, batch)
        with forbid_host_sync():
            method.after_backward(model, output, batch)  # warm-up + no-sync check

        def modulate(method=method):
            method.after_backward(model, output, batch)

        timings = []
        for _ in range(repeats):
            restore()
            timings.append(median_time(modulate, 1, device))
        results[key] = statistics.median(timings)

    elements = sum(p.numel() for m in model.modalities for p in select_tensors(model.encoders[m], "conv"))
    generator = torch.Generator(device=device).manual_seed(0)
    results["randn"] = median_time(lambda: torch.randn(elements, generator=generator, device=device), repeats, device)
    results["elements"] = elements
    return results


def training_step(model, optimizer, method, batch: dict, marks: dict[str, float] | None = None) -> None:
    """One plain step; ``marks`` (when given) gets the clock at ``backward_start`` and ``backward_end``."""
    marks = {} if marks is None else marks
    optimizer.zero_grad(set_to_none=True)
    output = model(batch)
    loss = method.loss(output, batch)
    marks["backward_start"] = time.perf_counter()
    loss.backward()
    marks["backward_end"] = time.perf_counter()
    method.after_backward(model, output, batch)
    optimizer.step()


#: SGD as the official OGM-GE recipe sets it
SGD_SETTINGS = {"lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4}


def recipe_method(name: str):
    """``name`` with the official recipe's OGM-GE alpha (0.8); other methods with their defaults."""
    return get_method(name, **({"alpha": 0.8} if name == "ogm_ge" else {}))


def fast_training(frames: int, method_name: str, device: torch.device):
    """``(model, optimizer, method)`` with the engine's fast settings: the official-size model with
    channels-last convolutions, fused SGD."""
    model = build_model(official_size_spec(frames)).to(device).train()
    to_channels_last(model)
    return model, fused_sgd(model.parameters(), **SGD_SETTINGS), recipe_method(method_name)


def ab_benchmark(frames: int, method_name: str, batch_size: int, steps: int, device: torch.device) -> dict:
    """Median seconds (wall and CPU) of alternating training steps: plain vs fast settings."""
    torch.manual_seed(0)
    fast = fast_training(frames, method_name, device)
    plain = build_model(official_size_spec(frames)).to(device).train()
    plain.load_state_dict(fast[0].state_dict())  # a state dict loads whatever the memory format
    variants = {
        "plain": (plain, torch.optim.SGD(plain.parameters(), **SGD_SETTINGS), recipe_method(method_name)),
        "fast": fast,
    }
    return alternate(variants, random_batch(frames, batch_size, device), steps, device)


def precision_benchmark(frames: int, method_name: str, batch_size: int, steps: int, device: torch.device) -> dict:
    """Median seconds (wall and CPU) of alternating fast training steps in float32 and under
    ``torch.autocast`` to bfloat16 (what ``trainer.precision: bf16-mixed`` runs): one model, one
    optimizer, one method, so that only the precision differs between the two."""
    torch.manual_seed(0)
    training = fast_training(frames, method_name, device)
    variants = {"32-true": training, "bf16-mixed": training}
    autocast = {"bf16-mixed": torch.bfloat16}
    return alternate(variants, random_batch(frames, batch_size, device), steps, device, autocast)


def alternate(variants: dict, batch: dict, steps: int, device: torch.device, autocast: dict | None = None) -> dict:
    """Each variant's ``(model, optimizer, method)`` trains on ``batch`` in turn, ``steps + 1`` times
    (the first round a warm-up), under ``torch.autocast`` to ``autocast[name]`` where given: the
    median wall and CPU seconds of each variant's step."""
    autocast = autocast or {}
    for model, optimizer, method in variants.values():
        method.setup(model, optimizer)
    timings = {name: {"wall": [], "cpu": []} for name in variants}
    for index in range(steps + 1):
        for name, (model, optimizer, method) in variants.items():
            synchronise(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            with torch.autocast(device.type, dtype=autocast.get(name), enabled=name in autocast):
                training_step(model, optimizer, method, batch)
            synchronise(device)
            if index:
                timings[name]["wall"].append(time.perf_counter() - start)
                timings[name]["cpu"].append(time.process_time() - start_cpu)
    return {name: {kind: statistics.median(v) for kind, v in t.items()} for name, t in timings.items()}


def official_stem(encoder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The official (torchvision) stem order: ReLU before max-pool."""
    return encoder.maxpool(encoder.relu(encoder.bn1(encoder.conv1(x))))


def alternate_calls(calls: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each of ``calls`` (name -> function), called in turn ``repeats + 1`` times
    (the first round a warm-up), the order reversed every other round."""
    names, times = list(calls), {name: [] for name in calls}
    for index in range(repeats + 1):
        for name in names if index % 2 else reversed(names):
            start = time.perf_counter()
            calls[name]()
            if index:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def parts_benchmark(frames: int, batch_size: int, repeats: int) -> dict[str, dict[str, float]]:
    """Seconds of each stem (official order against avbalance's) and of the SGD step (torch's fused
    SGD against avbalance's) on the official-size channels-last model, on the CPU."""
    torch.manual_seed(0)
    model, optimizer, _ = fast_training(frames, "baseline", torch.device("cpu"))
    batch = random_batch(frames, batch_size, torch.device("cpu"))
    results = {}
    for modality, encoder in model.encoders.items():
        x = batch[modality]
        if x.dim() == 5:  # clips: frames folded into the batch, as the clip encoder does
            x = fold_frames(x)
        grad = torch.randn_like(encoder.stem(x))

        def stem_step(stem, encoder=encoder, x=x, grad=grad):
            encoder.zero_grad(set_to_none=True)
            stem(x).backward(grad)

        calls = {
            "official": partial(stem_step, partial(official_stem, encoder)),
            "avbalance": partial(stem_step, encoder.stem),
        }
        results[f"{modality} stem"] = alternate_calls(calls, repeats)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    torch_sgd = torch.optim.SGD(model.parameters(), **SGD_SETTINGS, fused=True)
    for parameter in model.parameters():  # as fused_sgd starts them: no first-step special case
        torch_sgd.state[parameter]["momentum_buffer"] = torch.zeros_like(parameter)
    results["SGD step"] = alternate_calls({"official": torch_sgd.step, "avbalance": optimizer.step}, repeats)
    return results


def main_parts(args: argparse.Namespace) -> None:
    print("| visual frames | part | official order / torch's fused SGD (ms) | avbalance (ms) | saved (ms) |")
    print("|---|---|---|---|---|")
    for frames in args.frames:
        for part, r in parts_benchmark(frames, args.batch_size, args.repeats).items():
            official, ours = 1e3 * r["official"], 1e3 * r["avbalance"]
            print(f"| {frames} | {part} | {official:.1f} | {ours:.1f} | {official - ours:.1f} |", flush=True)


def memory_child(frames: int, batch_size: int, steps: int, keep: bool) -> dict:
    """Fast training steps (channels-last, fused SGD, baseline) in this process, with or without the
    kept-memory settings: median seconds and minor page faults per step after two warm-up steps."""
    if keep:
        keep_freed_cpu_memory()
    torch.manual_seed(0)
    model, optimizer, method = fast_training(frames, "baseline", torch.device("cpu"))
    method.setup(model, optimizer)
    batch = random_batch(frames, batch_size, torch.device("cpu"))
    seconds, faults = [], []
    for index in range(steps + 2):
        before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        training_step(model, optimizer, method, batch)
        if index >= 2:
            seconds.append(time.perf_counter() - start)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {"step": statistics.median(seconds), "faults": statistics.median(faults)}


def main_memory(args: argparse.Namespace) -> None:
    print("| visual frames | round | default step (s) | default faults/step | kept step (s) | kept faults/step |")
    print("|---|---|---|---|---|---|")
    for frames in args.frames:
        for round_ in range(args.repeats):
            row = {}
            for mode in ("default", "keep"):
                command = [sys.executable, __file__, "--memory-child", mode, "--frames", str(frames)]
                command += ["--batch-size", str(args.batch_size), "--steps", str(args.steps)]
                row[mode] = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
            default, kept = row["default"], row["keep"]
            print(
                f"| {frames} | {round_ + 1} | {default['step']:.3f} | {default['faults']:.0f} "
                f"| {kept['step']:.3f} | {kept['faults']:.0f} |",
                flush=True,
            )


def main_ab(args: argparse.Namespace, device: torch.device) -> None:
    if args.precision:
        compare, first, second = precision_benchmark, "32-true", "bf16-mixed"
    else:
        compare, first, second = ab_benchmark, "plain", "fast"
    print(
        f"| method | visual frames | {first} step (s) | {second} step (s) | {first} / {second} (wall) "
        f"| {first} / {second} (CPU time) |"
    )
    print("|---|---|---|---|---|---|")
    for method in ("baseline", "ogm_ge"):
        for frames in args.frames:
            r = compare(frames, method, args.batch_size, args.repeats, device)
            a, b = r[first], r[second]
            print(
                f"| {method} | {frames} | {a['wall']:.3f} | {b['wall']:.3f} "
                f"| {a['wall'] / b['wall']:.3f} | {a['cpu'] / b['cpu']:.3f} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ab", action="store_true", help="whole steps: fast settings against plain ones")
    parser.add_argument(
        "--precision", action="store_true", help="whole fast steps: float32 against bf16-mixed (torch.autocast)"
    )
    parser.add_argument("--memory", action="store_true", help="whole steps: kept CPU memory against the default")
    parser.add_argument("--parts", action="store_true", help="the stems and the SGD step against the official ways")
    parser.add_argument("--steps", type=int, default=7, help="timed steps per process (--memory)")
    parser.add_argument("--memory-child", choices=["default", "keep"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.frames[0], args.batch_size, args.steps, args.memory_child == "keep")))
        return
    device = torch.device(args.device)
    print(
        f"device: {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
        f"torch {torch.__version__}, batch {args.batch_size}, median of {args.repeats}"
    )
    if args.ab or args.precision:
        main_ab(args, device)
        return
    if args.memory:
        main_memory(args)
        return
    if args.parts:
        keep_freed_cpu_memory()  # as the engine trains
        main_parts(args)
        return
    print(
        "| visual frames | forward+backward (s) | OGM scaling (ms) | OGM share of step | OGM-GE (ms) "
        "| OGM-GE, 8 noise streams (ms) | randn same elements (ms) | OGM-GE / randn | modulated elements | host syncs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for frames in args.frames:
        r = benchmark(frames, args.batch_size, args.repeats, device)
        print(
            f"| {frames} | {r['step']:.3f} | {1e3 * r['ogm']:.2f} | {100 * r['ogm'] / r['step']:.2f} % "
            f"| {1e3 * r['ogm_ge']:.1f} | {1e3 * r['ogm_ge_streams']:.1f} | {1e3 * r['randn']:.1f} "
            f"| {r['ogm_ge'] / r['randn']:.2f} "
            f"| {r['elements'] / 1e6:.1f} M | none |",
            flush=True,
        )


if __name__ == "__main__":
    main()
