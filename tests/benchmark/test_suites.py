"""Suite definitions: the overrides each row of a suite trains with."""

import json
from pathlib import Path

import pytest

from avbalance.benchmark import get_suite
from avbalance.engine import load_config

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def test_references_keep_only_their_own_encoder_settings():
    suite = get_suite("grid-digit-seq")
    joint = suite.overrides("baseline", quick=False)
    assert "model.encoders.visual.name=framestack" in joint and "model.encoders.audio.name=conv1d" in joint
    for reference, kept, dropped in (("audio_only", "audio", "visual"), ("visual_only", "visual", "audio")):
        overrides = suite.overrides(reference, quick=False)
        assert f"data.modalities=[{kept}]" in overrides
        assert not [o for o in overrides if o.startswith(f"model.encoders.{dropped}.")]
        assert [o for o in overrides if o.startswith(f"model.encoders.{kept}.")]
        load_config(overrides=overrides)  # a valid config


@pytest.mark.parametrize("name", ["grid-digit", "avmnist", "grid-command"])
def test_each_validated_suite_runs_the_settings_its_committed_sweep_chose(name):
    """The best mean validation accuracy of each method in the committed sweep.json (the first of
    tied settings, as ``--sweep`` ranks them) is what the suite trains."""
    sweep = json.loads((RESULTS / name / "sweep.json").read_text())
    suite = get_suite(name)
    for method in {entry["method"] for entry in sweep}:
        entries = [e for e in sweep if e["method"] == method]
        best = max(entries, key=lambda e: e["val_acc"]["mean"])  # max keeps the first of ties
        overrides = suite.overrides(method, quick=False)
        assert all(o in overrides for o in best["setting"]), (name, method, best["setting"])


def test_sequence_suite_encoder_options_survive_the_recipe_formatting():
    recipe = get_suite("grid-digit-seq").overrides("baseline", quick=False)
    assert load_config(overrides=recipe).model.encoders["visual"]["temporal_options"] == {"hidden": 32}
