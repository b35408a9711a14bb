"""The docs and the command-line help list what the registries hold: a registered method, dataset,
fusion head or encoder without documentation fails here."""

import re
from pathlib import Path

import pytest

from avbalance.cli import build_parser
from avbalance.data import dataset_names
from avbalance.engine.optim import OPTIMIZERS, SCHEDULERS
from avbalance.methods import method_names
from avbalance.models import ENCODERS, HEADS

DOCS = Path(__file__).resolve().parents[1] / "docs"


def doc(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def named(name: str, text: str) -> bool:
    """``name`` stands in ``text`` as a word (in backticks, a table or a list of choices)."""
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


@pytest.mark.parametrize("method", method_names())
def test_every_method_is_indexed_and_has_its_page(method):
    assert f"`{method}`" in doc("methods.md")
    if method not in ("baseline", "ogm", "ogm_ge", "mmcosine"):  # the founding methods live in methods.md itself
        assert (DOCS / "methods" / f"{method}.md").is_file()


@pytest.mark.parametrize("dataset", dataset_names())
def test_every_dataset_is_documented(dataset):
    assert f"`{dataset}`" in doc("datasets.md")


@pytest.mark.parametrize("name", [*HEADS.names(), *ENCODERS.names()])
def test_every_head_and_encoder_is_documented(name):
    assert f"`{name}`" in doc("models.md")


@pytest.mark.parametrize("name", [*OPTIMIZERS.names(), *SCHEDULERS.names()])
def test_every_optimizer_and_scheduler_is_documented(name):
    assert named(name, doc("configuration.md"))


def test_train_help_lists_the_registered_methods_and_heads():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    text = " ".join(train.format_help().split())
    for name in [*method_names(), *HEADS.names()]:
        assert name in text
