"""Speed of ``avbalance prepare`` and of the cache loader, against the model's training speed.

Prepares GRID clips from ../shared/data/grid (the word-level digit task and whole sentences) with
1 and 2 worker processes and reports clips per second, in all and per worker; times the decoding of
a clip's video and audio from one opening of its container (what ``prepare`` does) against two
separate reads; then reads each cache through a DataLoader as the engine's loaders do (training
mode: random frames, crop + flip on uint8 frames, normalised per batch) and reports samples per
second, next to the training samples per second (forward, backward, SGD step) of the model the
engine builds for that dataset on this machine.

    python benchmarks/prepare_speed.py [--clips 100] [--out /tmp/prepare_speed]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from avbalance.data import build_dataset
from avbalance.data.prepare.audio import audio_from_frames, read_audio
from avbalance.data.prepare.video import read_video_frames, read_video_with_audio
from avbalance.engine.datamodule import FrameNormaliser, UInt8Frames, frame_statistics
from avbalance.models import build_model, model_spec
from avbalance.prepare_cli import add_parser, run

GRID = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "grid"


def prepare_grid(task: str, clips: int, workers: int, out: Path) -> float:
    """Clips per second of one prepare run (imports excluded)."""
    shutil.rmtree(out, ignore_errors=True)
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "prepare",
            "grid",
            "--root",
            str(GRID),
            "--out",
            str(out),
            "--task",
            task,
            "--limit",
            str(clips),
            "--workers",
            str(workers),
        ]
    )
    start = time.perf_counter()
    assert run(args) == 0
    return clips / (time.perf_counter() - start)


def decode_rates(clips: int, repeats: int = 3) -> tuple[float, float]:
    """Clips per second decoding GRID clips' frames (25 fps, 96 px) and 16 kHz audio: from one
    opening of each container, and with two separate reads, alternating clip by clip (so that other
    load hits both alike) over ``repeats`` passes."""
    files = sorted((GRID / "s1").glob("*.mp4"))[:clips]

    def once(path: Path) -> None:
        _, _, audio = read_video_with_audio(path, 25, 96)
        audio_from_frames(audio, path, 16000)

    def twice(path: Path) -> None:
        read_video_frames(path, 25, 96)
        read_audio(path, 16000)

    once(files[0])  # warm-up: lazy imports, resampler set-up
    twice(files[0])
    seconds = {once: 0.0, twice: 0.0}
    for repeat in range(repeats):
        for path in files:
            for decode in (once, twice) if repeat % 2 == 0 else (twice, once):
                start = time.perf_counter()
                decode(path)
                seconds[decode] += time.perf_counter() - start
    return repeats * len(files) / seconds[once], repeats * len(files) / seconds[twice]


def loader_rate(dataset, batch_size: int, workers: int, samples: int) -> float:
    """Samples per second over several epochs as the engine's loaders serve them (uint8 frames,
    normalised per batch in the main process); workers persist across epochs, as in the engine."""
    normalise = FrameNormaliser(frame_statistics(dataset))
    loader = DataLoader(
        UInt8Frames(dataset),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )

    def endless():
        while True:
            yield from loader

    batches = endless()
    for _ in range(max(workers, 1)):  # the first batches pay the worker start-up
        next(batches)
    start, seen = time.perf_counter(), 0
    while seen < samples:
        seen += len(normalise(next(batches))["label"])
    return seen / (time.perf_counter() - start)


def training_rate(info, batch: dict, steps: int, device: torch.device) -> float:
    """Samples per second of forward + backward + SGD step of the model the engine builds."""
    advice = info.recommended_encoder
    width, layers = advice.get("width", 64), advice.get("layers", [2, 2, 2, 2])
    model = build_model(model_spec(info.input_shapes, info.num_classes, width=width, layers=layers)).to(device)
    batch = {key: value.to(device) for key, value in batch.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()

    def step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(model(batch).logits, batch["label"]).backward()
        optimizer.step()

    step()  # warm-up
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    return steps * len(batch["label"]) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=100, help="GRID clips to prepare (default: %(default)s)")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="batch size of loader and training (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device of the model")
    parser.add_argument("--loader-samples", type=int, default=800, help="samples per loader measurement")
    args = parser.parse_args()
    device = torch.device(args.device)
    if not GRID.is_dir():
        raise SystemExit(f"GRID not found at {GRID.resolve()}")
    scratch = args.out or Path(tempfile.mkdtemp(prefix="prepare_speed-"))
    print(f"torch threads: {torch.get_num_threads()}, model on {device}, ", end="")
    print(f"GRID clips: {args.clips}, batch: {args.batch_size}")

    prepare_rows = []
    for task in ("digit", "sentence"):
        for workers in (1, 2):
            rate = prepare_grid(task, args.clips, workers, scratch / f"{task}-{workers}")
            prepare_rows.append((task, workers, rate))
    decode_once, decode_twice = decode_rates(min(args.clips, 20))

    loader_rows = []
    cases = [
        ("digit", {"frames": 3}),
        ("sentence", {"task": "colour", "frames": 3}),
        ("sentence", {"task": "colour", "frames": 3, "image_size": 224}),
    ]
    for task, options in cases:
        splits = build_dataset("grid", str(scratch / f"{task}-1"), **options)
        rates = {
            workers: loader_rate(splits.train, args.batch_size, workers, args.loader_samples) for workers in (0, 2)
        }
        batch = next(iter(DataLoader(splits.train, batch_size=args.batch_size, shuffle=True, drop_last=True)))
        train = training_rate(splits.info, batch, steps=3 if device.type == "cpu" else 50, device=device)
        shapes = ", ".join(f"{m} {tuple(s)}" for m, s in splits.info.input_shapes.items())
        encoder = splits.info.recommended_encoder or {"width": 64, "layers": [2, 2, 2, 2]}
        loader_rows.append((task, shapes, encoder, rates[0], rates[2], train))

    print("\n| GRID task | workers | prepare clips/s | clips/s per worker |\n|---|---|---|---|")
    for task, workers, rate in prepare_rows:
        print(f"| {task} | {workers} | {rate:.1f} | {rate / workers:.1f} |")
    print("\n| decoding a clip's video + audio | clips/s |\n|---|---|")
    print(f"| one opening of the container (prepare) | {decode_once:.1f} |")
    print(f"| two separate reads | {decode_twice:.1f} |")
    columns = [
        "cache",
        "inputs",
        "encoder",
        "loader samples/s, 0 workers",
        "loader samples/s, 2 workers",
        "training samples/s",
        "loader share of a step (0 workers)",
    ]
    print("\n| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|")
    for task, shapes, encoder, rate0, rate2, train in loader_rows:
        share = train / (rate0 + train) * 100
        model = f"width {encoder['width']}, layers {encoder['layers']}"
        print(f"| {task} | {shapes} | {model} | {rate0:.0f} | {rate2:.0f} | {train:.1f} | {share:.0f} % |")
    if args.out is None:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
