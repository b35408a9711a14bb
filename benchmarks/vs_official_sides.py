"""The avbalance side of ``benchmarks/vs_official.py``, one measurement per process.

Each run prints nothing but writes one JSON file (``--result``): the kept per-step timings, their
medians, samples per second and the process's peak RSS. Sides:

* ``lightning``: the engine as ``avbalance train`` builds it (same callbacks and loggers), with a
  callback timing every training batch: ``data`` is the wall time from the previous batch's end
  (or the epoch's start) to this batch's start (Lightning fetches the next batch there), ``compute``
  from batch start to batch end (forward, loss, backward, the method's gradient work, optimizer
  step), ``total`` their sum;
* ``bare``: the same model, data loader, optimizer and method in a plain PyTorch loop (no
  Lightning), timed the same way: the engine's overhead is the ratio of the two;
* loader speed: samples per second of the training set read serially in one process (what one
  DataLoader worker delivers): the cache loader as the engine's loaders read it (uint8 frames, the
  normalisation left to the batch on the model's device; ``bare`` with ``--samples N``, before its
  loop) or the official ``CramedDataset`` on the official layout of the same clips
  (``official-loader``, which decodes, augments and normalises in float per sample).

    python benchmarks/vs_official_sides.py --side lightning --config ogm_ge-f1 --cache CACHE \\
        --work DIR --result out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from avbalance.engine.callbacks import EpochHistory, GeneratorStates, NonFiniteGuard
from avbalance.engine.config import RunConfig
from avbalance.engine.cpu_memory import keep_freed_cpu_memory
from avbalance.engine.datamodule import UInt8Frames
from avbalance.engine.epoch_data import to_device
from avbalance.engine.module import to_channels_last
from avbalance.engine.optim import build_optimizer
from avbalance.engine.run import (
    TrainingRun,
    best_checkpoint,
    build_run,
    build_trainer,
    latest_checkpoint,
    quiet_lightning,
)
from step_time import SGD_SETTINGS, synchronise, training_step  # the sibling benchmark (its directory is on sys.path)

# config name -> (avbalance method, official --modulation, frames per clip)
CONFIGS = {
    "baseline-f1": ("baseline", "Normal", 1),
    "ogm_ge-f1": ("ogm_ge", "OGM_GE", 1),
    "baseline-f3": ("baseline", "Normal", 3),
    "ogm_ge-f3": ("ogm_ge", "OGM_GE", 3),
}
# alpha and the window: the official defaults; noise drawn on 8 streams at once (the CPU option of
# docs/methods.md: the same distribution, not the numbers of one stream)
OGM_GE_PARAMS = {"alpha": 0.8, "modulation_starts": 0, "modulation_ends": 50, "noise_streams": 8}
perf, cpu = time.perf_counter, time.process_time


#: The official OGM-GE model: a ResNet-18 per modality
OFFICIAL_WIDTH, OFFICIAL_LAYERS = 64, [2, 2, 2, 2]


def run_config(
    method: str,
    frames: int,
    cache: str,
    out: str,
    batch_size: int,
    epochs: int,
    workers: int,
    accelerator: str = "cpu",
    width: int = OFFICIAL_WIDTH,
    layers: list[int] = OFFICIAL_LAYERS,
) -> RunConfig:
    """The official OGM-GE setting: ResNet-18 pair (width 64, [2, 2, 2, 2]), concat fusion, SGD
    lr 1e-3 momentum 0.9 weight decay 1e-4, on the prepared CREMA-D cache with ``frames`` frames,
    on ``accelerator`` (``cpu`` or ``cuda``). ``width`` and ``layers`` make a smaller ResNet pair:
    with little to compute, the engine's own cost per step stands out."""
    return RunConfig.model_validate(
        {
            "out": out,
            "data": {
                "dataset": "cremad",
                "root": cache,
                "options": {"frames": frames},
                "batch_size": batch_size,
                "num_workers": workers,
            },
            "model": {"fusion": "concat", "width": width, "layers": list(layers)},
            "method": {"name": method, "params": OGM_GE_PARAMS if method == "ogm_ge" else {}},
            "optim": {"name": "sgd", **SGD_SETTINGS},
            "trainer": {"epochs": epochs, "accelerator": accelerator, "devices": 1, "progress_bar": False},
        }
    )


class StepTimer(Callback):
    """Per training batch: data wait (previous batch end, or epoch start, to batch start) and
    compute (batch start to batch end), the CPU time this process spent computing, and the
    compute's phases (:func:`step_phases`) from the backward hooks and the method's clock."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self._mark = self._start = self._start_cpu = 0.0
        self._sample = None
        self._backwards: list[tuple[float, float]] = []  # (start, end) of each backward in the step
        self._gradient_work: GradientWorkClock | None = None

    def on_fit_start(self, trainer, module) -> None:
        self._gradient_work = GradientWorkClock(module.method)

    def on_train_epoch_start(self, trainer, module) -> None:
        self._mark, self._sample = perf(), machine_sample()

    def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None:
        synchronise(module.device)
        self._start, self._start_cpu, self._backwards = perf(), cpu(), []

    def on_before_backward(self, trainer, module, loss) -> None:
        self._backwards.append((perf(), math.nan))

    def on_after_backward(self, trainer, module) -> None:
        self._backwards[-1] = (self._backwards[-1][0], perf())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        synchronise(module.device)
        end = perf()
        data, compute = self._start - self._mark, end - self._start
        compute_cpu, sample = cpu() - self._start_cpu, machine_sample()  # sampled outside the timed windows
        load = other_load(self._sample, sample)
        record = step_record(data, compute, compute_cpu, len(batch["label"]), *load)
        method_seconds = self._gradient_work.take() if self._gradient_work else 0.0
        self.steps.append(record | step_phases(self._start, self._backwards, end, method_seconds))
        self._mark, self._sample = perf(), sample


class GradientWorkClock:
    """The seconds ``method.after_backward`` (the method's gradient work) takes, on either side:
    wraps it on the method instance and adds up its calls until :meth:`take`. A later clock on the
    same method (the next side training a shared model) replaces this one instead of wrapping it."""

    def __init__(self, method) -> None:
        self.seconds = 0.0
        work = type(method).after_backward.__get__(method)  # the method's own, not an earlier clock

        def timed(*args, **kwargs):
            start = perf()
            try:
                return work(*args, **kwargs)
            finally:
                self.seconds += perf() - start

        method.after_backward = timed

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def step_phases(
    start: float, backwards: list[tuple[float, float]], end: float, method_seconds: float = 0.0
) -> dict[str, float]:
    """A step's compute in four phases (seconds, unsynchronised on a GPU): ``forward`` from the
    step's start to its first backward (zeroing gradients, the model's forward, the loss, and on the
    engine's side its training-step bookkeeping), ``backward`` (every backward pass of the step),
    ``method`` (the method's gradient work, ``method_seconds``) and ``step``: the rest, from the last
    backward's end to the step's end (the non-finite guard, the optimizer step, Lightning's hooks).
    The model's and the method's own work are in ``forward``, ``backward`` and ``method``, the same
    code on both sides; what the engine adds is mostly in ``data`` and ``step``. Empty when the step
    made no backward."""
    if not backwards or any(math.isnan(finish) for _, finish in backwards):
        return {}
    return {
        "forward": backwards[0][0] - start,
        "backward": sum(finish - begin for begin, finish in backwards),
        "method": method_seconds,
        "step": end - backwards[-1][1] - method_seconds,
    }


def step_record(
    data: float,
    compute: float,
    compute_cpu: float,
    batch_size: int,
    cpu_foreign: float | None = None,
    cpu_steal: float | None = None,
) -> dict[str, float]:
    """One step's seconds; ``compute_cpu`` (CPU seconds of all this process's threads) tells a
    slower step from a step that shared the cores with other work; ``cpu_foreign`` (cores other
    processes used during the step) and ``cpu_steal`` (cores the hypervisor took), as the harness
    records them for the official loop."""
    record = {"data": data, "compute": compute, "total": data + compute, "compute_cpu": compute_cpu, "bs": batch_size}
    if cpu_foreign is not None:
        record.update(cpu_foreign=cpu_foreign, cpu_steal=cpu_steal)
    return record


def _process_ticks(pid: int | str) -> tuple[int, int]:
    """(user + system ticks of the process and its waited-for children, parent pid); (0, -1) when gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return sum(int(value) for value in fields[11:15]), int(fields[1])
    except (OSError, IndexError, ValueError):
        return 0, -1


def machine_sample() -> tuple[float, int, int, int] | None:
    """(wall seconds, the machine's busy ticks, steal ticks, ticks of this process and its loader
    workers) from ``/proc``, the quantities the harness samples around the official steps; None
    where there is no ``/proc/stat``."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:9]]
    except OSError:
        return None
    me = os.getpid()
    own = _process_ticks(me)[0]
    for pid in (name for name in os.listdir("/proc") if name.isdigit() and int(name) != me):
        ticks_of_pid, parent = _process_ticks(pid)
        own += ticks_of_pid if parent == me else 0  # loader workers
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]  # user nice system irq softirq
    return perf(), busy, ticks[7], own


def other_load(before, after) -> tuple[float | None, float | None]:
    """(cores used by other processes, cores taken by the hypervisor) between two samples."""
    if before is None or after is None:
        return None, None
    seconds = max(after[0] - before[0], 1e-9) * os.sysconf("SC_CLK_TCK")
    return max(0.0, (after[1] - before[1]) - (after[3] - before[3])) / seconds, (after[2] - before[2]) / seconds


def time_lightning(config: RunConfig, run: TrainingRun | None = None) -> list[dict[str, float]]:
    """Fit ``config`` (``run``, or a run built from it) with the callbacks and loggers of
    ``avbalance.engine.train`` plus a StepTimer (the final validation and test of ``train`` are left
    out: they are not training steps)."""
    quiet_lightning()
    # two or three validation clips per class leave some classes without a positive: not the point here
    warnings.filterwarnings("ignore", message=".*Average precision score.*")
    out = Path(config.out)
    run = run or build_run(config)
    guard, timer = NonFiniteGuard(config.trainer.nonfinite, config.trainer.precision), StepTimer()
    callbacks = [guard, EpochHistory(guard), GeneratorStates(), best_checkpoint(out)]
    callbacks += [latest_checkpoint(out, every_n_epochs=1), timer]
    loggers = [TensorBoardLogger(str(out), name="", version=""), CSVLogger(str(out), name="", version="")]
    trainer = build_trainer(config, run.method, out, callbacks, loggers)
    out.mkdir(parents=True, exist_ok=True)
    trainer.fit(run.module, datamodule=run.datamodule)
    return timer.steps


def time_bare(run: TrainingRun, config: RunConfig) -> list[dict[str, float]]:
    """The engine's model (channels-last and CPU memory reuse as the engine sets them), loader
    (uint8 frames normalised per batch by the data module's transform), optimizer and method in a
    plain loop: zero_grad, forward, the method's loss, backward, the method's gradient work, SGD step;
    after each epoch an untimed validation pass (no checkpoints, logs or metrics). A step's data
    window holds the batch's fetch, its move to the device and the batch transform, as Lightning's
    does; its phases are :func:`step_phases`."""
    device = torch.device("cuda" if config.trainer.accelerator == "cuda" else "cpu")
    model, method = run.module.model.to(device).train(), run.method
    if config.trainer.channels_last:
        to_channels_last(model)
    if config.trainer.keep_cpu_memory:
        keep_freed_cpu_memory()
    optimizer = build_optimizer(config, model.parameters())
    method.setup(model, optimizer)
    loader, gradient_work = run.datamodule.train_dataloader(), GradientWorkClock(method)
    steps = []
    for epoch in range(config.trainer.epochs):
        loader.sampler.set_epoch(epoch)
        method.on_epoch_start(epoch, model)
        batches, sample = iter(loader), machine_sample()
        while True:
            requested = perf()
            batch = next(batches, None)
            if batch is None:
                break
            batch = run.datamodule.batch_transform(to_device(batch, device))  # in Lightning's data window too
            synchronise(device)
            got, got_cpu, marks = perf(), cpu(), {}
            training_step(model, optimizer, method, batch, marks)
            synchronise(device)
            end, compute_cpu = perf(), cpu() - got_cpu
            previous, sample = sample, machine_sample()  # this step's end is the next one's start
            load = other_load(previous, sample)
            record = step_record(got - requested, end - got, compute_cpu, len(batch["label"]), *load)
            backwards = [(marks["backward_start"], marks["backward_end"])]
            steps.append(record | step_phases(got, backwards, end, gradient_work.take()))
        validate(model, run.datamodule, device)
    return steps


@torch.no_grad()
def validate(model: torch.nn.Module, datamodule, device: torch.device) -> None:
    """An untimed pass over the validation split after each epoch, as ``avbalance train`` and the
    official loop make: the next epoch's steps start from the same state on every side."""
    model.eval()
    for batch in datamodule.val_dataloader():
        batch = to_device(batch, device)
        model(datamodule.batch_transform(batch))
    model.train()


def loader_rate(dataset, samples: int, passes: int = 5, min_seconds: float = 0.5) -> dict[str, float]:
    """Samples per second of ``dataset[i]`` read one after the other (one loader worker's work), the
    median of ``passes`` passes, after one untimed pass over the first ``samples`` samples (the
    operating system's file cache, lazy imports: both sides read warm files). A pass reads those
    samples again and again until ``min_seconds`` have gone by, so that a fast loader is not timed
    over a few milliseconds, where one stall of the machine decides its figure."""
    count = min(samples, len(dataset))
    for index in range(count):
        dataset[index]
    timed = range(1, count) if count > 1 else range(count)
    rates, reads = [], []
    for _ in range(passes):
        start, read = perf(), 0
        while timed and (not read or perf() - start < min_seconds):
            for index in timed:
                dataset[index]
            read += len(timed)
        elapsed = perf() - start
        rates.append(read / elapsed if elapsed else 0.0)
        reads.append(read)
    return {
        "samples": len(timed),
        "passes": passes,
        "reads": reads,
        "rates": rates,
        "samples_per_s": statistics.median(rates),
    }


def official_loader(src: str, data_root: str, frames: int, samples: int) -> dict[str, float]:
    """The official ``CramedDataset`` (train mode) on the official layout; it reads its clip list
    from ``./data/CREMAD/train.csv``, hence the working directory."""
    sys.path.insert(0, src)
    from dataset.CramedDataset import CramedDataset  # the extracted official repository

    args = argparse.Namespace(
        dataset="CREMAD", fps=frames, visual_path=data_root, audio_path=os.path.join(data_root, "AudioWAV")
    )
    previous = os.getcwd()
    os.chdir(data_root)
    try:
        dataset = CramedDataset(args, mode="train")
    finally:
        os.chdir(previous)
    return loader_rate(dataset, samples)


#: step record key -> summary key (the median over the kept steps)
SUMMARISED = {
    "data": "data",
    "compute": "compute",
    "total": "total",
    "compute_cpu": "compute_cpu",
    "forward": "forward",
    "backward": "backward",
    "method": "method",
    "step": "step",
    "modulation": "modulation",
    "cpu_foreign": "other_load_cores",  # cores other processes used during a step
}


def summarise(steps: list[dict[str, float]], warmup: int, max_foreign: float = float("inf")) -> dict:
    """Medians (seconds) of the steps after the first ``warmup``, and samples per second; steps during
    which other processes used more than ``max_foreign`` cores are left out (the harness's rule for
    the official loop)."""
    timed = [s for s in steps[warmup:] if s["bs"] > 0]
    kept = [s for s in timed if s.get("cpu_foreign", 0.0) <= max_foreign]
    if not kept:
        return {"n_steps": 0, "n_warmup": min(warmup, len(steps)), "n_excluded": len(timed)}
    # medians of what every kept step records: the harness's steps have no compute_cpu, only they have
    # OGM-GE's modulation window, and cpu_foreign only where /proc was sampled
    keys = [key for key in SUMMARISED if all(key in s for s in kept)]
    summary = {SUMMARISED[key]: statistics.median(s[key] for s in kept) for key in keys}
    batch = statistics.median(s["bs"] for s in kept)
    summary.update(n_steps=len(kept), n_warmup=warmup, n_excluded=len(timed) - len(kept), batch_size=batch)
    summary["samples_per_s"] = batch / summary["total"]
    return summary


def peak_rss_mib() -> float:
    """Peak RSS of this process and, if larger, of its largest finished child (loader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def time_side(side: str, config: RunConfig, loader_samples: int) -> dict:
    """The steps of the ``lightning`` or ``bare`` side; the bare side first times the cache loader
    alone over ``loader_samples`` samples (when not 0)."""
    if side == "lightning":
        return {"steps": time_lightning(config)}
    run = build_run(config)
    served = UInt8Frames(run.datamodule.train_set)  # what the engine's loader workers read
    loader = loader_rate(served, loader_samples) if loader_samples else None
    return {"steps": time_bare(run, config), "loader": loader}


def time_config(args: argparse.Namespace, out: str) -> dict:
    method, _, frames = CONFIGS[args.config]
    config = run_config(
        method,
        frames,
        args.cache,
        out,
        args.batch_size,
        args.epochs,
        args.num_workers,
        args.accelerator,
        width=args.width,
        layers=args.layers,
    )
    return time_side(args.side, config, args.samples)


def measure(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.side == "official-loader":
        result = {"loader": official_loader(args.official_src, args.official_data, args.frames, args.samples)}
    else:
        with contextlib.ExitStack() as stack:
            out = args.work or stack.enter_context(tempfile.TemporaryDirectory(prefix="vs_official_"))
            result = time_config(args, out)
        result["summary"] = summarise(result["steps"], args.warmup, args.max_foreign)
    result.update(side=args.side, config=args.config, threads=torch.get_num_threads(), peak_rss_mib=peak_rss_mib())
    if args.accelerator == "cuda" and args.side != "official-loader":
        result.update(accelerator=torch.cuda.get_device_name(), peak_cuda_mib=torch.cuda.max_memory_allocated() / 2**20)
    return result


def layer_counts(text: str) -> list[int]:
    """``2,2,2,2`` -> [2, 2, 2, 2], for argparse (which prints the error in one line)."""
    parts = text.split(",")
    if not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"blocks per stage as positive whole numbers, e.g. 2,2,2,2; got {text!r}")
    return [int(part) for part in parts]


def add_model_size_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--width", type=int, default=OFFICIAL_WIDTH, help="ResNet base width (official: 64)")
    p.add_argument(
        "--layers", type=layer_counts, default=OFFICIAL_LAYERS, help="blocks per ResNet stage (official: 2,2,2,2)"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", choices=["lightning", "bare", "official-loader"], required=True)
    p.add_argument("--config", choices=sorted(CONFIGS), default="baseline-f1", help="method and frames")
    p.add_argument("--frames", type=int, default=1, help="frames per clip (official-loader)")
    p.add_argument("--cache", help="prepared CREMA-D cache (avbalance sides)")
    p.add_argument("--work", default=None, help="run folder, kept (default: a temp dir, removed at the end)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--accelerator", choices=["cpu", "cuda"], default="cpu", help="where the avbalance sides train")
    add_model_size_args(p)
    p.add_argument("--warmup", type=int, default=1, help="steps left out at the start of the run")
    p.add_argument(
        "--max-foreign", type=float, default=float("inf"), help="leave out steps with more other load (cores)"
    )
    p.add_argument("--samples", type=int, default=0, help="samples read by the loader measurement (0: none)")
    p.add_argument("--official-src", default=None, help="extracted official repository (official-loader)")
    p.add_argument("--official-data", default=None, help="official layout of the clips (official-loader)")
    p.add_argument("--result", required=True, help="JSON file to write")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(args)
    Path(args.result).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
