"""What every ``avbalance`` sub-command's parser shares: its one-line help, which is also its
description, and its examples below the options, laid out as written."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_command(
    commands, name: str, help_text: str, examples: str | None = None, handler: Callable | None = None
) -> argparse.ArgumentParser:
    """A sub-parser ``name`` of ``commands``; ``handler`` (``args -> exit status``) runs it."""
    sub = commands.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if handler is not None:
        sub.set_defaults(handler=handler)
    return sub
