"""avbalance against the official OGM-GE training loop, side by side on the same clips and machine.

1. Generates a CREMA-D look-alike with the refbench harness's ``make_data.py`` (the official
   layout: ``AudioWAV/*.wav``, ``Image-0K-FPS/<id>/*.jpg``, CSV splits), and from the same clips the
   raw layout ``avbalance prepare cremad`` reads: each ``Image-0K-FPS/<id>/`` folder encoded as a
   K frames-per-second ``VideoFlash/<id>.flv``, so that preparing at ``--fps K`` keeps exactly the
   official frames; the WAV files are shared. Then prepares one cache per frame rate with the
   official train/test lists.
2. Times, for every configuration (method x frames per clip), with batch 16, the same torch
   threads, DataLoader workers, epochs and warm-up steps left out:
   * ``official``: the authors' ``main.py``, unmodified, through the harness's ``bench.py`` (needs
     ``REF_OGM_REPO`` and the harness's own Python, ``--ref-python``; without the repository the
     official side is skipped); with ``--accelerator cuda`` through ``refbench_on_cuda.py``, which
     keeps the script's device moves on the GPU (the harness alone maps them to the CPU);
   * ``avbalance``: the Lightning engine as ``avbalance train`` builds it;
   * ``bare_loop``: avbalance's model, loader and method in a plain PyTorch loop.
   Each avbalance side runs in its own process (``vs_official_sides.py``), so that its peak RSS is
   its own.
3. Measures the data path: samples per second of one loader process, for avbalance's cache loader
   and the official ``CramedDataset`` on the same clips.

Prints a table and writes ``benchmarks/vs_official.json`` (``--out``): samples per second of each
side per configuration, ``ratio`` = avbalance / official, ``engine_overhead`` = bare loop /
avbalance samples per second (1.0: the engine costs nothing), ``peak_rss_mib`` per side,
``loader_samples_per_s`` per worker and ``loader_ratio``, every median in ``details``, what each
key means in ``keys`` and whether the targets are met in ``targets_met``.

    REF_OGM_REPO=<OGM-GE git dir> REFBENCH_VENV=<harness venv> python benchmarks/vs_official.py \
        --epochs 3 --repeats 4 --max-foreign 0.25     # the recorded measurement
    python benchmarks/vs_official.py --quick          # a few steps of baseline-f1
    REF_OGM_REPO=... python benchmarks/vs_official.py --accelerator cuda --num-workers 8 \
        --ref-python "$(which python)"   # both loops on a GPU

``--width`` and ``--layers`` train a smaller ResNet pair on the avbalance sides alone (without the
official repository): with little to compute, what the engine adds to each step stands out from the
machine's spread (``engine_overhead``, and the bare loop's and ``avbalance train``'s milliseconds per
step in ``details``)::

    python benchmarks/vs_official.py --width 8 --layers 1,1,1,1 --configs baseline-f1,ogm_ge-f1 \
        --epochs 30 --repeats 4 --max-foreign 0.25 --out benchmarks/results/engine_cost.json

``--repeats N`` makes N rounds; a round runs every configuration's sides once each, in turn
(official, ``avbalance train``, bare loop; the other way round every other round), so that the
machine's drift hits every configuration and side alike, and pools each side's steps;
``--max-foreign C`` leaves out, on every side, steps during which other processes used more than C
cores. The ratios of each round's runs alone (``ratio_by_round``, ``engine_overhead_by_round``) show
how far the machine's drift moves them. Every run's result stays in ``--work`` when it is given (a
temporary folder otherwise, removed at the end); ``--from-work`` with the same settings rebuilds
the report from them without measuring anything.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from avbalance.errors import AvbalanceError, ConfigError, DataError
from avbalance.prepare_cli import add_parser as add_prepare_parser
from avbalance.prepare_cli import run as run_prepare

HERE = Path(__file__).resolve().parent
SIDES = HERE / "vs_official_sides.py"
sys.path.insert(0, str(HERE))
from refbench_on_cuda import cuda_overlay  # noqa: E402
from vs_official_sides import CONFIGS, OFFICIAL_LAYERS, OFFICIAL_WIDTH, add_model_size_args  # noqa: E402
from vs_official_sides import summarise as summarise_steps  # noqa: E402

DEFAULT_REFBENCH = "/work/shared/refbench"
SAMPLE_RATE = 16000  # the WAV rate of CREMA-D and of make_data.py's default
VIDEO_SIZE = (480, 360)  # make_data.py's frames
QUICK = {"configs": "baseline-f1", "epochs": 2, "n_train": 48, "n_test": 16}


# -- the data ---------------------------------------------------------------------------------------


def load_module(path: Path, name: str):
    if not path.is_file():
        raise ConfigError(f"{path}: not found; point --refbench (or $REFBENCH_DIR) at the refbench harness")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def encode_flv(frames: list[Path], out: Path, fps: int) -> None:
    """``frames`` as an FLV1 video at ``fps``, each frame at its exact time in milliseconds."""
    images = [np.asarray(Image.open(path).convert("RGB")) for path in frames]
    millis = Fraction(1, 1000)  # FLV's time base: every frame time is set exactly, in ms
    times = [round(i * 1000 / fps) for i in range(len(images))]
    tmp = out.with_suffix(".part")
    with av.open(str(tmp), "w", format="flv") as container:
        stream = container.add_stream("flv", rate=fps)
        stream.width, stream.height, stream.pix_fmt = *VIDEO_SIZE, "yuv420p"
        stream.bit_rate = 8_000_000  # near-lossless at 480x360
        stream.codec_context.time_base = millis
        for pts, image in zip(times, images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = pts, millis
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    tmp.rename(out)


def raw_layout(official: Path, fps: int) -> Path:
    """``<official>/avbalance/raw-fK``: ``VideoFlash/<id>.flv`` from ``Image-0K-FPS/<id>/`` and the
    official ``AudioWAV`` (linked)."""
    raw = official / "avbalance" / f"raw-f{fps}"
    videos = raw / "VideoFlash"
    videos.mkdir(parents=True, exist_ok=True)
    if not (raw / "AudioWAV").exists():
        (raw / "AudioWAV").symlink_to(official / "AudioWAV")
    for folder in sorted((official / f"Image-{fps:02d}-FPS").iterdir()):
        target = videos / f"{folder.name}.flv"
        if not target.exists():
            encode_flv(sorted(folder.glob("*.jpg")), target, fps)
    return raw


def prepare_command(argv: list[str]) -> int:
    """``avbalance prepare ...`` in this process (without the rest of the command line's modules)."""
    parser = argparse.ArgumentParser(prog="avbalance")
    add_prepare_parser(parser.add_subparsers(dest="command"))
    return run_prepare(parser.parse_args(argv))


def prepare_cache(official: Path, fps: int, workers: int) -> Path:
    """The avbalance cache of the clips at ``fps`` frames per second, with the official split."""
    raw, cache = raw_layout(official, fps), official / "avbalance" / f"cache-f{fps}"
    train, test = (str(official / "data" / "CREMAD" / f"{split}.csv") for split in ("train", "test"))
    command = ["prepare", "cremad", "--root", str(raw), "--out", str(cache), "--fps", str(fps), "--strict"]
    command += ["--workers", str(workers), "--train-list", train, "--test-list", test]
    status = prepare_command(command)  # resumes: clips already in the cache are skipped
    if status != 0:
        raise DataError(f"{cache}: 'avbalance {' '.join(command)}' failed with status {status}")
    return cache


def make_data(args: argparse.Namespace, frame_rates: list[int]) -> dict[int, Path]:
    """The official layout (regenerated only when its parameters change) and one cache per rate."""
    generator = load_module(Path(args.refbench) / "make_data.py", "refbench_make_data")
    official = Path(args.data).resolve()
    generator.generate(str(official), args.n_train, args.n_test, SAMPLE_RATE, sorted(set(frame_rates) | {1}), 0)
    return {fps: prepare_cache(official, fps, args.prepare_workers) for fps in frame_rates}


# -- the sides --------------------------------------------------------------------------------------


def run_side(args: argparse.Namespace, side: str, label: str, extra: list[str]) -> dict:
    """One measurement of ``vs_official_sides.py`` in its own process; its JSON result."""
    work = Path(args.work) / f"{side}-{label}"
    result = work / "result.json"
    work.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(SIDES), "--side", side, "--work", str(work), "--result", str(result)]
    command += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    command += ["--num-workers", str(args.num_workers), "--warmup", str(args.warmup), *extra]
    command += ["--accelerator", args.accelerator, "--max-foreign", str(args.max_foreign)]
    command += ["--width", str(args.width), "--layers", ",".join(map(str, args.layers))]
    if not args.from_work:
        print(f"[vs_official] {side} {label} ...", flush=True)
        subprocess.run(command, check=True)
    return saved_result(result)


def official_side(args: argparse.Namespace, name: str, repeat: int = 0) -> dict:
    """One run of the official loop for one configuration through the harness; the harness's
    document (every step's record under ``runs``). On CUDA the harness's ``bench.py`` runs from an
    overlay whose launcher leaves the script on the GPU."""
    _, mode, fps = CONFIGS[name]
    out = Path(args.work) / f"official-{name}-r{repeat}.json"
    harness, env = Path(args.refbench), {**os.environ, "REF_OGM_REPO": args.ref_repo}
    if args.accelerator == "cuda":
        harness = cuda_overlay(args.refbench, Path(args.work) / "refbench-cuda")
        env["REFBENCH_DIR"] = str(Path(args.refbench).resolve())
    command = [args.ref_python, str(harness / "bench.py"), "--which", "ogm", "--fps", str(fps)]
    command += ["--ogm-modes", mode, "--epochs", str(args.epochs), "--repeats", "1", "--alpha", "0.8"]
    command += ["--batch-size", str(args.batch_size), "--num-workers", str(args.num_workers)]
    command += ["--threads", str(args.threads), "--warmup", str(args.warmup), "--seed", "0"]
    command += ["--max-foreign", str(args.max_foreign), "--wait-idle", str(args.wait_idle)]
    command += ["--n-train", str(args.n_train), "--n-test", str(args.n_test), "--sr", str(SAMPLE_RATE)]
    command += ["--data", str(Path(args.data).resolve()), "--work", str(Path(args.work) / f"official-{name}-r{repeat}")]
    command += ["--out", str(out)]
    if not args.from_work:
        print(f"[vs_official] official {name}-r{repeat} ({args.accelerator}) ...", flush=True)
        subprocess.run(command, check=True, env=env)
    return saved_result(out)


def saved_result(path: Path) -> dict:
    """A run's JSON result; a one-line error when the run left none (``--from-work`` reads earlier runs)."""
    if not path.is_file():
        raise DataError(f"{path}: no saved result (that run did not finish); measure again without --from-work")
    return json.loads(path.read_text())


def official_summary(documents: list[dict], warmup: int, max_foreign: float) -> dict:
    """The official runs' steps pooled as the avbalance sides' are: each run's first ``warmup`` steps
    and the steps that shared the CPU with more than ``max_foreign`` cores of other work left out;
    median seconds, samples per second, OGM-GE's modulation window, peak RSS (``/usr/bin/time -v``)."""
    runs = [run for document in documents for run in document.get("runs", []) if run.get("rc") == 0]
    steps = []
    for run in runs:
        records = [record for record in run["records"] if record.get("type") == "step"]
        steps += records[warmup:]
    summary = summarise_steps(steps, 0, max_foreign)
    rss = [run["time_v"]["maxrss_kb"] for run in runs if run.get("time_v", {}).get("maxrss_kb")]
    summary.update(n_warmup=warmup, n_runs=len(runs), peak_rss_mib=max(rss) / 1024 if rss else None)
    return summary


def extract_official(args: argparse.Namespace) -> Path:
    """The official repository's HEAD as files (for its dataset class), as the harness extracts it."""
    bench = load_module(Path(args.refbench) / "bench.py", "refbench_bench")
    dest = Path(args.work) / "official-src"
    bench.extract(args.ref_repo, str(dest))
    return dest


SIDES_IN_TURN = ("official", "avbalance", "bare_loop")


def sides_in_turn(repeat: int, sides: tuple[str, ...] = SIDES_IN_TURN) -> tuple[str, ...]:
    """The order of ``sides`` in round ``repeat``: reversed every other round, so that the machine's
    drift over a round favours no side."""
    return sides if repeat % 2 == 0 else sides[::-1]


def measure_all(args: argparse.Namespace, names: list[str], caches: dict[int, Path], official_src: Path | None):
    """Every configuration's sides, in ``--repeats`` rounds; a round runs every configuration's sides
    once each -- the official loop (through the harness), ``avbalance train``, the bare loop -- so that
    the machine's drift hits every configuration and side alike. Also the loaders' samples per
    second per frame rate: the cache loader (in the first bare run of that rate) and, with the
    official repository, the official CramedDataset on the same clips."""
    runs = {name: {side: [] for side in SIDES_IN_TURN} for name in names}
    loaders: dict[str, dict] = {"avbalance": {}, "official": {}}
    for repeat in range(args.repeats):
        for name in names:
            fps = CONFIGS[name][2]
            for side in sides_in_turn(repeat):
                if side == "official" and not args.ref_repo:
                    continue
                time_loader = side == "bare_loop" and f"f{fps}" not in loaders["avbalance"]
                result = measure_side(args, name, side, repeat, caches[fps], time_loader)
                runs[name][side].append(result)
                if time_loader and result.get("loader"):
                    loaders["avbalance"][f"f{fps}"] = result["loader"]["samples_per_s"]
    details = {name: config_summary(args, runs[name]) for name in names}
    for fps in caches if official_src is not None else ():
        extra = ["--frames", str(fps), "--samples", str(args.loader_samples), "--official-src", str(official_src)]
        extra += ["--official-data", str(Path(args.data).resolve())]
        loaders["official"][f"f{fps}"] = run_side(args, "official-loader", f"f{fps}", extra)["loader"]["samples_per_s"]
    return details, loaders


def measure_side(args: argparse.Namespace, name: str, side: str, repeat: int, cache: Path, time_loader: bool) -> dict:
    """One run of one side of configuration ``name`` in round ``repeat``: its saved result."""
    if side == "official":
        return official_side(args, name, repeat)
    extra = ["--config", name, "--cache", str(cache)]
    if time_loader:
        extra += ["--samples", str(args.loader_samples)]
    return run_side(args, "lightning" if side == "avbalance" else "bare", f"{name}-r{repeat}", extra)


def config_summary(args: argparse.Namespace, runs: dict[str, list[dict]]) -> dict:
    """Each side's medians over the steps of its runs pooled (each run's warm-up left out), and each
    run's samples per second."""
    official = runs["official"]
    results = {"official": None}
    if args.ref_repo:
        results["official"] = official_summary(official, args.warmup, args.max_foreign)
        by_run = [official_summary([document], args.warmup, args.max_foreign) for document in official]
        results["official"]["samples_per_s_by_run"] = [summary.get("samples_per_s") for summary in by_run]
    for key in ("avbalance", "bare_loop"):
        side_runs = runs[key]
        steps = [step for run in side_runs for step in run["steps"][args.warmup :]]
        summary = summarise_steps(steps, 0, args.max_foreign)
        summary.update(n_warmup=args.warmup, n_runs=len(side_runs))
        by_run = [summarise_steps(run["steps"], args.warmup, args.max_foreign) for run in side_runs]
        summary["samples_per_s_by_run"] = [run_summary.get("samples_per_s") for run_summary in by_run]
        results[key] = {**summary, "peak_rss_mib": max(run["peak_rss_mib"] for run in side_runs)}
    return results


# -- the report -------------------------------------------------------------------------------------


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


SIDE_KEYS = ("official", "avbalance", "bare_loop")
#: What each key of the JSON document holds (written into it, so that the file explains itself).
KEYS = {
    "official / avbalance / bare_loop": "training samples per second (median step) per configuration: the "
    "authors' main.py, 'avbalance train' (the Lightning engine), avbalance's model/loader/method in a plain loop",
    "ratio": "avbalance / official training samples per second (target >= 1.25)",
    "engine_overhead": "bare_loop / avbalance samples per second: 1.0 = the engine costs nothing (target <= 1.03)",
    "peak_rss_mib": "peak resident memory per side and configuration (MiB; official: /usr/bin/time -v)",
    "loader_samples_per_s": "samples per second one loader process (one DataLoader worker) delivers, per frame rate: "
    "avbalance's cache loader as its loaders read it vs the official CramedDataset",
    "loader_ratio": "avbalance / official loader samples per second per worker (target >= 10)",
    "ratio_by_round / engine_overhead_by_round": "the same ratios of each round's runs alone (one run per side "
    "and configuration in a round), which shows how far the machine's drift moves them",
    "details": "every median (seconds: data wait, compute, total step) per side and configuration, and each "
    "run's samples per second (samples_per_s_by_run, in round order)",
}
TARGETS = {"ratio": 1.25, "engine_overhead": 1.03, "loader_ratio": 10.0}


def per_side(details: dict[str, dict], key: str) -> dict[str, dict[str, float]]:
    """``{side: {config: details[config][side][key]}}`` where measured."""
    values = {side: {} for side in SIDE_KEYS}
    for name, sides in details.items():
        for side in SIDE_KEYS:
            if sides.get(side) and sides[side].get(key):
                values[side][name] = sides[side][key]
    return values


def by_round(details: dict[str, dict], numerator: str, denominator: str) -> dict[str, list[float | None]]:
    """``{config: [numerator side / denominator side samples per second, round by round]}``."""
    ratios = {}
    for name, sides in details.items():
        tops, bottoms = ((sides.get(side) or {}).get("samples_per_s_by_run", []) for side in (numerator, denominator))
        ratios[name] = [ratio(top, bottom) for top, bottom in zip(tops, bottoms)]
    return ratios


def targets_met(document: dict) -> dict[str, bool | None]:
    """Whether every measured value of each targeted ratio meets its target (None: nothing measured)."""
    met = {}
    for key, target in TARGETS.items():
        values = [v for v in document[key].values() if v is not None]
        if not values:
            met[key] = None
        elif key == "engine_overhead":
            met[key] = max(values) <= target
        else:
            met[key] = min(values) >= target
    return met


def report(details: dict[str, dict], loaders: dict, args: argparse.Namespace) -> dict:
    """The JSON document: samples per second per side and configuration, the ratios, memory and
    loader speed (see ``KEYS``)."""
    rate = per_side(details, "samples_per_s")
    loader_ratio = {fps: ratio(value, loaders["official"].get(fps)) for fps, value in loaders["avbalance"].items()}
    document = {
        **rate,
        "ratio": {name: ratio(rate["avbalance"].get(name), rate["official"].get(name)) for name in details},
        "engine_overhead": {name: ratio(rate["bare_loop"].get(name), rate["avbalance"].get(name)) for name in details},
        "ratio_by_round": by_round(details, "avbalance", "official"),
        "engine_overhead_by_round": by_round(details, "bare_loop", "avbalance"),
        "peak_rss_mib": per_side(details, "peak_rss_mib"),
        "loader_samples_per_s": loaders,
        "loader_ratio": loader_ratio,
        "details": details,
        "machine": machine(args),
        "command": command_line(__file__, args.argv),
        "keys": KEYS,
        "targets": TARGETS,
    }
    document["targets_met"] = targets_met(document)
    return document


def command_line(script: str, argv: list[str]) -> str:
    """The command that ran ``script`` with ``argv``, as a shell would take it."""
    return " ".join(shlex.quote(part) for part in [sys.executable, script, *argv])


def host() -> dict:
    """The machine and software a measurement ran on."""
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def machine(args: argparse.Namespace) -> dict:
    return {
        **host(),
        "threads": args.threads or torch.get_num_threads(),
        "accelerator": torch.cuda.get_device_name() if args.accelerator == "cuda" else "cpu",
        "num_workers": args.num_workers,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "warmup_steps": args.warmup,
        "repeats": args.repeats,
        "clips": {"train": args.n_train, "test": args.n_test},
        "model": {"width": args.width, "layers": args.layers},
        "official_repository": args.ref_repo,
    }


def table(document: dict) -> str:
    """| config | side | steps (left out) | data ms | total ms | samples/s | vs official | peak RSS MiB |"""
    header = "| config | side | steps (left out) | data ms | total ms | samples/s | vs official | peak RSS MiB |"
    lines = [header, "|---" * 8 + "|"]
    for name, sides in document["details"].items():
        official = document["official"].get(name)
        for side, summary in sides.items():
            if not summary or not summary.get("n_steps"):
                lines.append(f"| {name} | {side} | 0 | - | - | - | - | - |")
                continue
            steps = f"{summary['n_steps']} ({summary.get('n_excluded', 0)})"
            versus = ratio(summary["samples_per_s"], official)
            rss = summary.get("peak_rss_mib")
            lines.append(
                f"| {name} | {side} | {steps} | {1000 * summary['data']:.0f} | {1000 * summary['total']:.0f} "
                f"| {summary['samples_per_s']:.2f} | {f'{versus:.2f}x' if versus else '-'} "
                f"| {f'{rss:.0f}' if rss else '-'} |"
            )
    loaders = document["loader_samples_per_s"]
    for fps, value in loaders["avbalance"].items():
        official = loaders["official"].get(fps)
        versus = f"{value / official:.2f}x" if official else "-"
        lines.append(f"| loader {fps} | avbalance cache, 1 worker | - | - | - | {value:.1f} | {versus} | - |")
        if official:
            lines.append(
                f"| loader {fps} | official CramedDataset, 1 worker | - | - | - | {official:.1f} | 1.00x | - |"
            )
    for name, overhead in document["engine_overhead"].items():
        if overhead:
            lines.append(
                f"| {name} | engine overhead (bare loop / avbalance samples/s) | - | - | - | {overhead:.3f} | - | - |"
            )
    met = ", ".join(
        f"{key} {'met' if ok else 'NOT met' if ok is False else 'not measured'}"
        for key, ok in document["targets_met"].items()
    )
    lines += round_lines(document)
    return "\n".join(lines) + f"\n\ntargets (ratio >= 1.25, engine_overhead <= 1.03, loader_ratio >= 10): {met}"


def round_lines(document: dict) -> list[str]:
    """One line per configuration and ratio with each round's value, where there were several rounds."""
    lines = []
    for key, label in (("ratio_by_round", "vs official"), ("engine_overhead_by_round", "engine overhead")):
        for name, values in document[key].items():
            if len(values) > 1:
                shown = " ".join(f"{value:.3f}" if value else "-" for value in values)
                lines.append(f"{name} {label}, round by round: {shown}")
    return [""] + lines if lines else []


# -- the command ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few steps of baseline-f1 on a smaller set")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma list of " + ", ".join(CONFIGS))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=0, help="torch threads on every side (0: torch's default)")
    p.add_argument(
        "--accelerator",
        choices=["auto", "cpu", "cuda"],
        default="cpu",
        help="where every side trains (auto: cuda when available); on cuda the official loop runs through "
        "the harness with its device moves left on the GPU (refbench_on_cuda.py)",
    )
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers on every side")
    add_model_size_args(p)
    p.add_argument("--warmup", type=int, default=1, help="steps left out at the start of every run")
    p.add_argument("--repeats", type=int, default=1, help="runs per side and configuration, steps pooled")
    add_data_args(p)
    p.add_argument(
        "--loader-samples", type=int, default=64, help="samples each loader pass reads (5 passes of >= 0.5 s)"
    )
    p.add_argument(
        "--max-foreign",
        type=float,
        default=1e9,
        help="leave out steps (of every side) that shared the CPU with more than this many cores of "
        "other work (default: keep every step)",
    )
    p.add_argument("--wait-idle", type=int, default=0, help="harness: wait up to this many s for an idle machine")
    p.add_argument("--work", default=None, help="scratch folder, kept (default: a temp dir, removed at the end)")
    p.add_argument(
        "--from-work",
        action="store_true",
        help="measure nothing: rebuild the report from the runs an earlier run with the same settings saved in --work",
    )
    p.add_argument("--out", default=str(HERE / "vs_official.json"))
    p.add_argument("--ref-repo", default=os.environ.get("REF_OGM_REPO"), help="official OGM-GE repository")
    p.add_argument("--ref-python", default=None, help="the harness's Python (default: $REFBENCH_VENV/bin/python)")
    argv = sys.argv[1:] if argv is None else argv
    if p.parse_args(argv).quick:  # the quick settings replace the defaults, not what is given
        p.set_defaults(**QUICK)
    p.set_defaults(argv=argv)
    return p.parse_args(argv)


def add_data_args(p: argparse.ArgumentParser) -> None:
    """Where the generated clips go and how many (shared with ``engine_overhead.py``)."""
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-test", type=int, default=32)
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "vs_official_data"))
    p.add_argument(
        "--refbench",
        default=os.environ.get("REFBENCH_DIR", DEFAULT_REFBENCH),
        help="the refbench harness folder (make_data.py, bench.py)",
    )
    p.add_argument("--prepare-workers", type=int, default=2)


def config_names(configs: str) -> list[str]:
    """``--configs`` as a list of configuration names; a one-line error for an unknown or no name."""
    names = [name for name in configs.split(",") if name]
    unknown = [name for name in names if name not in CONFIGS]
    if unknown or not names:
        raise ConfigError(
            f"--configs: unknown configuration {unknown[0] if unknown else ''!r}; choose from {', '.join(CONFIGS)}"
        )
    return names


def check_args(args: argparse.Namespace) -> list[str]:
    """The configurations to run; one-line errors for settings that cannot work."""
    names = config_names(args.configs)
    if args.from_work and not (args.work and Path(args.work).is_dir()):
        where = f"--work {args.work} is not a folder" if args.work else "give --work"
        raise ConfigError(f"--from-work reads the runs an earlier run saved in its --work folder: {where}")
    if args.repeats < 1 or args.epochs < 1:
        raise ConfigError(f"--repeats and --epochs must be at least 1, got {args.repeats} and {args.epochs}")
    if args.accelerator == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--accelerator cuda: torch sees no CUDA device on this machine; use cpu or auto")
    if args.ref_repo and (args.width, args.layers) != (OFFICIAL_WIDTH, OFFICIAL_LAYERS):
        raise ConfigError(
            f"--width/--layers: the official loop trains the official-size model (width {OFFICIAL_WIDTH}, "
            f"layers {','.join(map(str, OFFICIAL_LAYERS))}); a smaller model times avbalance's sides alone: "
            "leave REF_OGM_REPO unset"
        )
    if args.ref_repo and not Path(args.ref_repo).is_dir():
        raise ConfigError(f"REF_OGM_REPO={args.ref_repo} is not a directory")
    if args.ref_repo:
        venv = os.environ.get("REFBENCH_VENV")
        args.ref_python = args.ref_python or (os.path.join(venv, "bin", "python") if venv else None)
        if not args.ref_python or not os.access(args.ref_python, os.X_OK):
            raise ConfigError(
                f"the harness's Python {args.ref_python or '$REFBENCH_VENV/bin/python'} is not an "
                "executable: set REFBENCH_VENV (see the harness's README, 'Setup') or --ref-python"
            )
    return names


def run(args: argparse.Namespace) -> dict:
    names = check_args(args)
    if args.accelerator == "auto":
        args.accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.ref_repo:
        print("[vs_official] REF_OGM_REPO is not set: timing avbalance alone (no official side)", flush=True)
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        return measure_and_report(args, names)
    # Caches and run folders take hundreds of MB: a scratch folder of our own goes when we are done.
    with tempfile.TemporaryDirectory(prefix="vs_official_") as work:
        args.work = work
        return measure_and_report(args, names)


def measure_and_report(args: argparse.Namespace, names: list[str]) -> dict:
    frame_rates = sorted({CONFIGS[name][2] for name in names})
    if args.from_work:  # the runs saved in --work are read, nothing is measured
        caches, official_src = dict.fromkeys(frame_rates), Path(args.work) / "official-src" if args.ref_repo else None
    else:
        caches = make_data(args, frame_rates)
        official_src = extract_official(args) if args.ref_repo else None
    details, loaders = measure_all(args, names, caches, official_src)
    document = report(details, loaders, args)
    Path(args.out).write_text(json.dumps(document, indent=1))
    print(table(document))
    print(f"[vs_official] results: {args.out}")
    return document


def exit_status(prog: str, measure: Callable[[], object]) -> int:
    """Run ``measure``: 0, or 2 after a one-line error for a setting or data that cannot work."""
    try:
        measure()
    except AvbalanceError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    return exit_status("vs_official", lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
