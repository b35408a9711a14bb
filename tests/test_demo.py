"""``avbalance demo`` end to end (few epochs)."""

import json

from avbalance.cli import main


def test_demo_writes_table_plot_and_results(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--epochs", "2"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"baseline", "ogm_ge", "mmcosine", "audio_only", "visual_only"}
    for name in ("baseline", "ogm_ge", "mmcosine"):
        assert set(results[name]) == {"fused", "audio", "visual"}
    assert set(results["audio_only"]) == {"fused", "audio"}
    assert set(results["visual_only"]) == {"fused", "visual"}
    assert results["visual_only"]["fused"] == results["visual_only"]["visual"]
    for name, accuracies in results.items():
        test = json.loads((tmp_path / name / "metrics.json").read_text())["test"]
        assert accuracies["fused"] == test["acc"]
    assert (tmp_path / "val_accuracy.png").is_file()
    printed = capsys.readouterr().out
    assert "visual_only" in printed and "fused" in printed
