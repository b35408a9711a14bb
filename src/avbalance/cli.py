"""The ``avbalance`` command: prepare, train, test, demo, convert-checkpoint.

User mistakes print one line (``avbalance: error: ...``) and exit with status 2; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from .commands import add_command
from .errors import AvbalanceError
from .signals import Stopped, exit_status, stop_with

EXAMPLES = {
    "train": """examples:
  avbalance train --method ogm_ge --alpha 0.8 --epochs 30 --out runs/ogm_ge
  avbalance train --config my.yaml --set optim.lr=0.01 --set data.options.visual_strength=0.2
  avbalance train --dataset grid --data cache/grid --modalities visual --out runs/visual_only""",
    "test": """examples:
  avbalance test --ckpt runs/ogm_ge/checkpoints/best.ckpt
  avbalance test --ckpt runs/ogm_ge/checkpoints/best.ckpt --split val --out runs/ogm_ge/eval
  avbalance test --ckpt runs/ogm_ge --robustness --out runs/ogm_ge/eval""",
    "demo": """example:
  avbalance demo --out runs/demo""",
    "convert-checkpoint": """examples:
  avbalance convert-checkpoint best_model_of_dataset_CREMAD_OGM_GE.pth cremad_ogm_ge.ckpt
  avbalance convert-checkpoint mmcosine_cremad.pth mmcosine.ckpt --fusion cosine""",
}

# Short options of `train` and the config keys they set.
TRAIN_OPTIONS: dict[str, tuple[str, type, str]] = {
    "dataset": ("data.dataset", str, "dataset name (default: synthetic)"),
    "data": ("data.root", str, "prepared data folder (from 'avbalance prepare')"),
    "modalities": ("data.modalities", str, "comma-separated subset of modalities to train on, e.g. visual"),
    "method": ("method.name", str, "balancing method: {methods}"),
    "fusion": ("model.fusion", str, "fusion head: {fusions} (shared, amco: for their methods)"),
    "epochs": ("trainer.epochs", int, "number of epochs"),
    "batch_size": ("data.batch_size", int, "training batch size"),
    "lr": ("optim.lr", float, "learning rate"),
    "optimizer": ("optim.name", str, "sgd, adam or adamw"),
    "seed": ("trainer.seed", int, "random seed"),
    "out": ("out", str, "run folder (config, checkpoints, logs, metrics)"),
    "alpha": ("method.params.alpha", float, "OGM/OGM-GE modulation strength alpha"),
    "modulation_starts": ("method.params.modulation_starts", int, "first epoch of modulation (inclusive)"),
    "modulation_ends": ("method.params.modulation_ends", int, "last epoch of modulation (inclusive)"),
    "scaling": ("method.params.scaling", float, "MMCosine scale s"),
    "accelerator": ("trainer.accelerator", str, "cpu, gpu or auto"),
    "devices": ("trainer.devices", str, "number of devices (or auto)"),
    "num_nodes": ("trainer.num_nodes", int, "number of nodes"),
    "strategy": ("trainer.strategy", str, "auto, ddp, ..."),
    "precision": ("trainer.precision", str, "32-true, bf16-mixed, 16-mixed"),
}


def _train_overrides(args: argparse.Namespace) -> list[str]:
    overrides = []
    for option, (key, _, _) in TRAIN_OPTIONS.items():
        value = getattr(args, option)
        if value is None:
            continue
        if option == "modalities":
            value = "[" + ",".join(m.strip() for m in value.split(",") if m.strip()) + "]"
        overrides.append(f"{key}={value}")
    return overrides + list(args.set or [])


def print_metrics(title: str, metrics: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    outputs = ["fused"] + sorted({k[len("acc_") :] for k in metrics if k.startswith("acc_")})
    table = Table(title=title)
    table.add_column("output")
    for name in ("acc", "f1_macro", "map"):
        table.add_column(name, justify="right")
    for output in outputs:
        suffix = "" if output == "fused" else f"_{output}"
        table.add_row(
            output, *(f"{metrics.get(name + suffix, float('nan')):.4f}" for name in ("acc", "f1_macro", "map"))
        )
    Console().print(table)


def cmd_train(args: argparse.Namespace) -> int:
    from .engine import load_config, train

    config = load_config(args.config, _train_overrides(args))
    metrics = train(config, resume=args.resume)
    print_metrics(f"test metrics of the best-validation epoch ({metrics['best_epoch']})", metrics["test"])
    print(f"run folder: {config.out}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from .analysis import analyse_run
    from .analysis.cli import print_analysis
    from .engine import load_run
    from .engine.run import evaluate_run
    from .outputs import check_output_folder

    if args.out:
        check_output_folder(args.out)  # before the evaluation, not after it
    run = load_run(args.ckpt, data_root=args.data, batch_size=args.batch_size)
    with stop_with("interrupted during the evaluation; rerun the same command"):
        metrics = evaluate_run(run, split=args.split, accelerator=args.accelerator, devices=args.devices)
        print_metrics(f"{args.split} metrics of {args.ckpt}", metrics)
        # Shapley values and confusion matrices of the same model on the same split.
        analysis = analyse_run(run, split=args.split, removal=args.removal, accelerator=args.accelerator)
    print_analysis(analysis)
    robustness = None
    if args.robustness:  # missing modalities by the same removal rule, corrupted inputs (seeded)
        from .analysis.robustness import print_robustness, robustness_run, save_robustness

        robustness = robustness_run(run, args.split, args.removal, args.accelerator, seed=args.robustness_seed)
        print_robustness(robustness)
        print(f"written: {save_robustness(robustness, run.checkpoint)}")  # where 'avbalance report' finds it
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        written = {args.split: metrics, "shapley": analysis["shapley"], "confusion": analysis["confusion"]}
        if robustness is not None:
            written["robustness"] = robustness
        (out / "metrics.json").write_text(json.dumps(written, indent=2))
        print(f"written: {out / 'metrics.json'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .demo import run_demo
    from .outputs import check_output_folder

    check_output_folder(args.out)
    console = Console()
    results = run_demo(args.out, epochs=args.epochs, seed=args.seed, report=console.print)
    table = Table(title="synthetic: test accuracy (best-validation epoch)")
    for column in ("run", "fused", "audio", "visual"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for name, accuracy in results.items():
        table.add_row(name, *(f"{accuracy[k]:.3f}" if k in accuracy else "-" for k in ("fused", "audio", "visual")))
    console.print(table)
    console.print(f"plot: {Path(args.out) / 'val_accuracy.png'}   results: {Path(args.out) / 'results.json'}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .models.convert import convert_checkpoint

    options = {k: v for k, v in {"condition": args.condition, "gate": args.gate}.items() if v}
    spec = convert_checkpoint(args.source, args.target, fusion=args.fusion, num_classes=args.num_classes, **options)
    print(
        f"wrote {args.target}: fusion {spec['fusion']}, {spec['num_classes']} classes, "
        f"encoders {', '.join(spec['encoders'])}"
    )
    return 0


class OneLineParser(argparse.ArgumentParser):
    """Argument errors in one line (``avbalance: error: ...``) and exit status 2, like every other
    user mistake."""

    def error(self, message: str):
        self.exit(2, f"avbalance: error: {self.prog}: {message} (see '{self.prog} --help')\n")


def _registered_names() -> dict[str, str]:
    """The registered methods and fusion heads, for the help of ``--method`` and ``--fusion``."""
    from .methods import method_names
    from .models import HEADS

    return {"methods": ", ".join(method_names()), "fusions": ", ".join(HEADS.names())}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="avbalance", description="Balanced multimodal learning.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_train_parser(commands)
    add_test_parser(commands)
    add_demo_and_convert_parsers(commands)
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        sub = module.add_parser(commands)
        if sub is not None and sub.get_default("handler") is None:
            sub.set_defaults(handler=module.run)
    return parser


def add_train_parser(commands) -> None:
    train = add_command(commands, "train", "train a model with a balancing method", EXAMPLES.get("train"), cmd_train)
    train.add_argument("--config", help="YAML config file")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key (repeatable)")
    names = _registered_names()
    for option, (_, kind, help_text) in TRAIN_OPTIONS.items():
        train.add_argument("--" + option.replace("_", "-"), dest=option, type=kind, help=help_text.format(**names))
    train.add_argument(
        "--resume",
        metavar="CKPT",
        help="continue from a checkpoint, or 'auto' for the run folder's "
        "checkpoints/last.ckpt (a fresh start when there is none)",
    )


def add_test_parser(commands) -> None:
    test = add_command(commands, "test", "evaluate a trained checkpoint", EXAMPLES.get("test"), cmd_test)
    test.add_argument("--ckpt", required=True, help="checkpoint written by 'avbalance train'")
    test.add_argument("--split", default="test", choices=["test", "val"])
    test.add_argument("--data", help="prepared data folder, if it moved since training")
    test.add_argument("--batch-size", type=int)
    test.add_argument("--accelerator", default="auto")
    test.add_argument("--devices", default="auto")
    test.add_argument("--out", help="folder to write metrics.json into")
    test.add_argument(
        "--robustness",
        action="store_true",
        help="also evaluate each modality missing and corrupted (noise, frame drops, blur)",
    )
    test.add_argument("--robustness-seed", type=int, default=0, help="seed of the corruptions (default: 0)")
    test.add_argument(
        "--removal",
        default="zero",
        choices=["zero", "mean"],
        help="how a removed modality is replaced for Shapley values (default: %(default)s)",
    )


def add_demo_and_convert_parsers(commands) -> None:
    demo = add_command(
        commands,
        "demo",
        "baseline vs OGM-GE vs MMCosine (+ unimodal references) on synthetic data",
        EXAMPLES.get("demo"),
        cmd_demo,
    )
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--epochs", type=int, default=15)
    demo.add_argument("--seed", type=int, default=0)

    convert = add_command(
        commands,
        "convert-checkpoint",
        "convert an official OGM-GE / MMCosine checkpoint",
        EXAMPLES.get("convert-checkpoint"),
        cmd_convert,
    )
    convert.add_argument("source", help="official checkpoint (.pth)")
    convert.add_argument("target", help="avbalance checkpoint to write (.ckpt)")
    convert.add_argument("--fusion", help="fusion of the checkpoint (default: inferred; 'cosine' for MMCosine)")
    convert.add_argument("--num-classes", type=int, help="expected number of classes (checked)")
    convert.add_argument("--condition", help="film: the conditioning modality (default audio)")
    convert.add_argument("--gate", help="gated: the gating modality (default audio)")


# Modules that add their own sub-commands: each has ``add_parser(commands)``, which creates its
# sub-parser(s) and either sets ``handler`` (a function ``args -> exit status``) on them or returns
# the one sub-parser it made and provides ``run(args)``.
COMMAND_MODULES = (
    "avbalance.prepare_cli",
    "avbalance.analysis.cli",
    "avbalance.benchmark.cli",
    "avbalance.verification.cli",
)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or an argument error (2, already printed)
        return int(exit_.code or 0)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except AvbalanceError as error:
        if args.debug:
            raise
        print(f"avbalance: error: {error}", file=sys.stderr)
        return 2
    except Stopped as stop:
        print(f"avbalance: {stop.message}", file=sys.stderr)
        return exit_status(stop.signum)
    except KeyboardInterrupt:
        print("avbalance: interrupted", file=sys.stderr)
        return 130


def entry() -> Any:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
