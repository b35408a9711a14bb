"""Cost of every registered method relative to the baseline, measured through the method protocol.

For each method: the median time of a training step (forward, loss, backward, the method's
gradient work and the optimizer step -- or the method's own ``training_step``) over the steps of
the second epoch, and the time its epoch hooks take (prototypes, re-initialisation diagnostics,
weight estimation, valuation, teacher pre-training in ``setup``), on the built-in ``synthetic``
data with the demo's small model, in one process on the CPU.

    python benchmarks/method_cost.py                 # every method, two modalities
    python benchmarks/method_cost.py --methods baseline ogm_ge agm --modalities 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader

from avbalance.data import build_dataset
from avbalance.engine.datamodule import ResampledDataset
from avbalance.engine.epoch_data import LoaderEpochData
from avbalance.methods import get_method, method_names
from avbalance.methods.base import PlainStep
from avbalance.models import build_model, model_spec


def measure(name: str, splits, steps_per_epoch: int, batch_size: int) -> dict[str, float]:
    torch.manual_seed(0)
    method = get_method(name)
    info = splits.info
    spec = method.adapt_model_spec(model_spec(info.input_shapes, info.num_classes, width=8, layers=[1, 1, 1]))
    model = build_model(spec)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data = LoaderEpochData(splits.train, splits.test, batch_size, torch.device("cpu"))
    hook_time = 0.0
    start = time.perf_counter()
    method.setup(model, optimizer, data)
    hook_time += time.perf_counter() - start
    train_set = splits.train
    step_times = []
    for epoch in range(2):
        start = time.perf_counter()
        method.on_epoch_start(epoch, model, data)
        hook_time += time.perf_counter() - start
        model.train()
        loader = DataLoader(
            train_set,
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(epoch),
        )
        for index, batch in enumerate(loader):
            if index >= steps_per_epoch:
                break
            start = time.perf_counter()
            if method.overrides_step:
                method.training_step(model, batch, PlainStep(optimizer, epoch, index, steps_per_epoch))
            else:
                output = model(batch)
                loss = method.loss(output, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                method.after_backward(model, output, batch)
                optimizer.step()
            if epoch == 1:
                step_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        method.on_epoch_end(epoch, model, data)
        hook_time += time.perf_counter() - start
        entries = method.train_entries() if method.resamples_data else None
        train_set = ResampledDataset(splits.train, entries) if entries is not None else splits.train
    return {"step": statistics.median(step_times), "hooks": hook_time / 2, "samples": len(train_set)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--modalities", type=int, default=2, choices=[2, 3])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    options = {"train_size": 1600, "test_size": 320}
    if args.modalities == 3:
        options["flow_strength"] = 0.3
    splits = build_dataset("synthetic", **options)
    names = args.methods or ["baseline"] + [n for n in method_names() if n != "baseline"]
    print(
        f"synthetic, {args.modalities} modalities, batch {args.batch_size}, small ResNet (width 8, layers 1-1-1), "
        f"CPU {torch.get_num_threads()} threads; median step over {args.steps} steps of epoch 2"
    )
    print("| method | step (ms) | step / baseline | epoch hooks per epoch (s) | training samples next epoch |")
    print("|---|---|---|---|---|")
    measure("baseline", splits, 3, args.batch_size)  # warm-up: thread pools, allocator, first-call costs
    baseline = None
    for name in names:
        try:
            result = measure(name, splits, args.steps, args.batch_size)
        except Exception as error:  # a method that cannot run this set-up is reported, not fatal
            print(f"| {name} | - | - | - | refused: {str(error).splitlines()[0][:80]} |", flush=True)
            continue
        baseline = baseline or result["step"]
        print(
            f"| {name} | {1e3 * result['step']:.1f} | {result['step'] / baseline:.2f} | {result['hooks']:.2f} "
            f"| {result['samples']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
