"""The ``prepare`` sub-command: ``avbalance prepare <dataset> --root RAW --out CACHE [options]``.

One sub-command per registered dataset. Its flags are generated from the dataset's options model
(:class:`~avbalance.data.prepare.options.PrepareOptions` and the dataset's own fields): a field
``max_speakers: int | None`` becomes ``--max-speakers``, with the field's type, default and
description; a ``Literal`` type gives the choices; a constraint (``ge=1``) refuses a bad value with
one line naming the flag. The frame options appear for datasets with video, the audio options for
datasets with audio.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from rich.console import Console

from .data.declaration import DatasetDeclaration
from .data.prepare.cache import FAILURES
from .data.prepare.options import PrepareOptions, flag_hints, own_fields
from .data.prepare.runner import Summary, prepare_dataset
from .data.registry import get_dataset, prepared_datasets
from .outputs import check_output_folder
from .signals import StopSignals

DESCRIPTION = """\
Turn a raw dataset into a prepared cache: frames (uint8) and audio features (float16) in
memory-mappable arrays plus a manifest with id, label, split and status per clip.

Runs in parallel, shows progress with an ETA and is resumable: rerunning the same command skips
every clip already prepared. Clips that cannot be prepared (missing, corrupt, silent or too-short
files, unknown labels, clips listed twice) are skipped and listed with the reason in
CACHE/failures.csv. See docs/datasets.md for each dataset's expected raw layout.
"""

EXAMPLES = """\
examples:
  avbalance prepare cremad --root ~/data/CREMA-D --out ~/cache/cremad --workers 8
  avbalance prepare grid --root ~/data/grid --out ~/cache/grid-digit --task digit
  avbalance prepare avmnist --root ~/data --out ~/cache/avmnist
  avbalance prepare manifest --root ~/data/mine --out ~/cache/mine --csv ~/data/mine/clips.csv
  avbalance prepare grid --help        (options of one dataset)
"""

SHOWN_FAILURES = 5


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``prepare`` (with one sub-command per dataset) to an argparse sub-parsers object."""
    parser = subparsers.add_parser(
        "prepare",
        help="turn a raw dataset into a prepared cache",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    datasets = parser.add_subparsers(dest="prepare_dataset", metavar="DATASET", required=True)
    for name, declaration in prepared_datasets().items():
        sub = datasets.add_parser(
            name,
            help=declaration.summary,
            description=declaration.summary,
            epilog="examples:\n" + declaration.examples if declaration.examples else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_option_flags(sub, declaration)
    return parser


def add_option_flags(parser: argparse.ArgumentParser, declaration: type[DatasetDeclaration]) -> None:
    """One flag per field of the dataset's options model: the shared general options, then the
    dataset's own, then the frame and audio options its modalities use; grouped as the fields say."""
    model, defaults = declaration.Options, declaration.option_defaults()
    shared = PrepareOptions.model_fields
    general = [name for name in shared if "group" not in flag_hints(shared[name])]
    grouped = [name for name in shared if "group" in flag_hints(shared[name])]
    own = sorted(own_fields(model), key=lambda name: "group" in flag_hints(model.model_fields[name]))
    groups: dict[str, Any] = {}
    for name in general + own + grouped:
        field = model.model_fields[name]
        hints = flag_hints(field)
        if not _applies(hints.get("needs"), declaration):
            continue
        group = hints.get("group")
        target = groups.setdefault(group, parser.add_argument_group(group)) if group else parser
        default = defaults.get(name, field.get_default(call_default_factory=True))
        _add_flag(target, name, field, default)


def _applies(needs: str | None, declaration: type[DatasetDeclaration]) -> bool:
    return needs is None or (needs == "video" and declaration.video) or (needs == "audio" and bool(declaration.audio))


def _add_flag(parser, name: str, field: pydantic.fields.FieldInfo, default: Any) -> None:
    flag = "--" + name.replace("_", "-")
    kind, choices = _value_type(field.annotation)
    description = (field.description or "").replace("%", "%%")
    if kind is bool:
        parser.add_argument(flag, action="store_true", help=description)
        return
    hints = flag_hints(field)
    shown = default if default is not None else hints.get("unset")
    if shown is not None and not field.is_required():
        description += f" (default: {shown})"
    options: dict[str, Any] = {"type": _converter(field, kind, check=not choices), "help": description}
    if field.is_required():
        options["required"] = True
    else:
        options["default"] = default
    if choices:
        options["choices"] = choices
    if "metavar" in hints:
        options["metavar"] = hints["metavar"]
    parser.add_argument(flag, **options)


def _value_type(annotation: Any) -> tuple[type, list | None]:
    """The type a flag's text converts to and, for a ``Literal``, its choices (``X | None`` -> X)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    if typing.get_origin(annotation) is Literal:
        choices = list(typing.get_args(annotation))
        return type(choices[0]), choices
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return typing.get_origin(annotation) or annotation, None


def _converter(field: pydantic.fields.FieldInfo, kind: type, check: bool):
    """argparse ``type``: the text as ``kind`` (``invalid int value`` when it is not one), then the
    field's own checks (constraints, validators) with pydantic's message."""
    adapter = pydantic.TypeAdapter(Annotated[field.annotation, field])

    def convert(text: str):
        value = kind(text) if kind in (int, float) else text
        if not check:
            return value
        try:
            return adapter.validate_python(value)
        except pydantic.ValidationError as error:
            problem = error.errors()[0]
            raise argparse.ArgumentTypeError(problem["msg"].removeprefix("Value error, ")) from None

    convert.__name__ = kind.__name__  # argparse names it in "invalid int value: 'x'"
    return convert


def options_from_args(args: argparse.Namespace, declaration: type[DatasetDeclaration]) -> PrepareOptions:
    """The dataset's options model from parsed flags (fields without a flag keep their defaults)."""
    values = {name: getattr(args, name) for name in declaration.Options.model_fields if hasattr(args, name)}
    return declaration.options(**values)


def run(args: argparse.Namespace, console: Console | None = None) -> int:
    """Run ``prepare`` for parsed arguments; returns the exit status.

    Raises :class:`avbalance.errors.AvbalanceError` (one line) for a missing folder, an unreadable
    list file or a cache prepared with other settings.
    """
    console = console or Console(stderr=True, highlight=False, soft_wrap=True)
    declaration = get_dataset(args.prepare_dataset)
    options = options_from_args(args, declaration)
    check_output_folder(options.out)
    with StopSignals() as stop:  # SIGTERM stops like Ctrl+C: finished clips are kept
        summary = prepare_dataset(declaration, options, console)
    return _report(summary, Path(options.out).expanduser(), options.strict, console, stop.exit_status())


def _report(summary: Summary, out: Path, strict: bool, console: Console, interrupted_status: int = 130) -> int:
    for failure in summary.failures[:SHOWN_FAILURES]:
        console.print(f"  failed {failure.id}: {failure.reason}", markup=False)
    if len(summary.failures) > SHOWN_FAILURES:
        console.print(f"  ... and {len(summary.failures) - SHOWN_FAILURES} more")
    line = f"prepared {summary.prepared}, skipped {summary.skipped} (already in the cache), failed {summary.failed}"
    if summary.interrupted:
        console.print(f"interrupted: {line}; rerun the same command to resume", markup=False)
        return interrupted_status
    if summary.failed:
        line += f" (reasons in {out / FAILURES})"
    console.print(line, markup=False)
    if summary.total_ok == 0:
        console.print(f"no clip could be prepared; {out} holds no usable data", markup=False)
        return 1
    console.print(f"cache ready: {out} ({summary.total_ok} clips)", markup=False)
    return 1 if strict and summary.failed else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m avbalance.data.prepare``: ``avbalance prepare`` itself (one-line
    errors, exit statuses, signals)."""
    from .cli import main as avbalance_main

    return avbalance_main(["prepare", *(sys.argv[1:] if argv is None else argv)])
