"""The ``verify`` sub-command: speaker verification of a trained model on a trial list."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..commands import add_command
from ..errors import ConfigError, DataError
from ..outputs import check_output_folder
from .scoring import NORMS

VERIFY_HELP = "speaker verification: embeddings, cosine scoring of trials, EER and minDCF"
VERIFY_EXAMPLES = """examples:
  avbalance verify --ckpt runs/vox2_mmcosine --data cache/vox1-test --trials veri_test2.txt --out runs/vox2_mmcosine
  avbalance verify --ckpt runs/vox2_mmcosine --data cache/vox1-test --trials veri_test2.txt --norm asnorm --top-n 300
  avbalance verify --data cache/held-out --trials-from-cache 500 --seed 0 --out runs/lists   (only write trials.txt)
  avbalance verify --ckpt runs/fsdd --data cache/fsdd-eval --trials-from-cache 500 --out runs/fsdd

Writes DIR/verification.json (EER and minDCF of the fused and per-modality embeddings), DIR/scores.csv,
DIR/det.png and DIR/embeddings.npz (reused while the checkpoint and the cache are unchanged)."""

TRIALS_FILE = "trials.txt"


def add_parser(commands) -> argparse.ArgumentParser:
    parser = add_command(commands, "verify", VERIFY_HELP, VERIFY_EXAMPLES, run)
    parser.add_argument(
        "--ckpt",
        metavar="RUN",
        help="run folder (its checkpoints/best.ckpt) or checkpoint file; without it only the "
        "generated trial list is written",
    )
    parser.add_argument("--data", required=True, metavar="CACHE", help="prepared cache of the evaluation utterances")
    trials = parser.add_mutually_exclusive_group(required=True)
    trials.add_argument("--trials", metavar="FILE", help="trial list, lines '<1|0> <enrol> <test>' (VoxCeleb format)")
    trials.add_argument(
        "--trials-from-cache",
        type=int,
        metavar="N",
        help="generate N target and N non-target trials from the cache's labels into DIR/trials.txt",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --trials-from-cache (default: %(default)s)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: the run folder of --ckpt)")
    parser.add_argument("--batch-size", type=int, help="batch size of the embedding (default: the run's)")
    parser.add_argument(
        "--cohort",
        metavar="CACHE",
        help="prepared cache of the normalisation cohort (default: the evaluation utterances)",
    )
    parser.add_argument("--norm", default="none", choices=NORMS, help="score normalisation (default: %(default)s)")
    parser.add_argument(
        "--top-n", type=int, default=300, help="asnorm: the top-N cohort scores of each side (default: %(default)s)"
    )
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default: %(default)s)")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..analysis.runs import resolve_checkpoint, run_folder_of

    if args.ckpt is None and args.trials is not None:
        raise ConfigError("--ckpt is needed to verify a trial list (without it, --trials-from-cache only writes one)")
    if args.out is None and args.ckpt is None:
        raise ConfigError("--trials-from-cache without --ckpt needs --out DIR for the trial list")
    if args.batch_size is not None and args.batch_size < 1:  # before the trial list is written
        raise ConfigError(f"--batch-size: must be at least 1, got {args.batch_size}")
    out = check_output_folder(args.out if args.out else run_folder_of(resolve_checkpoint(args.ckpt)))
    if args.ckpt is not None and args.trials is None:
        check_model_fits_cache(args)  # before trials.txt is written
    trials_path = Path(args.trials) if args.trials else write_generated_trials(args, out)
    if args.ckpt is None:
        return 0
    from .protocol import Settings, verify

    settings = Settings(
        checkpoint=args.ckpt,
        data=args.data,
        trials=str(trials_path),
        out=str(out),
        batch_size=args.batch_size,
        cohort=args.cohort,
        norm=args.norm,
        top_n=args.top_n,
        accelerator=args.accelerator,
    )
    print_results(verify(settings), out)
    return 0


def check_model_fits_cache(args: argparse.Namespace) -> None:
    """The checkpoint loads and shares a modality with the evaluation cache."""
    from .embeddings import Embedder, open_eval_cache

    Embedder(args.ckpt, args.batch_size, args.accelerator).shared_modalities(open_eval_cache(args.data))


def write_generated_trials(args: argparse.Namespace, out: Path) -> Path:
    from .embeddings import open_eval_cache
    from .trials import generate_trials, write_trials

    rows = open_eval_cache(args.data).ok_rows()
    try:
        trials = generate_trials([r["id"] for r in rows], [r["label"] for r in rows], args.trials_from_cache, args.seed)
    except DataError as error:
        raise DataError(f"{args.data}: {error}") from None
    path = out / TRIALS_FILE
    write_trials(path, trials)
    print(f"written: {path} ({len(trials)} trials, seed {args.seed})")
    return path


def print_results(results: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from .protocol import DET_PLOT, RESULTS, SCORES

    settings = results["settings"]
    norm = settings["norm"] + (f", top {settings['top_n']}" if settings["norm"] == "asnorm" else "")
    table = Table(
        title=f"speaker verification: {results['trials']} trials "
        f"({results['targets']} target), score normalisation {norm}",
        caption=f"minDCF: p_target {settings['p_target']}, C_miss {settings['c_miss']:g}, "
        f"C_fa {settings['c_fa']:g}; fused = {settings['fused']}",
    )
    for column in ("embedding", "EER (%)", "minDCF"):
        table.add_column(column, justify="left" if column == "embedding" else "right")
    for name, value in results.items():
        if isinstance(value, dict) and "eer" in value:
            table.add_row(name, f"{100 * value['eer']:.2f}", f"{value['min_dcf']:.4f}")
    console = Console()
    console.print(table)
    console.print(f"written: {out / RESULTS}, {out / SCORES}, {out / DET_PLOT}")
