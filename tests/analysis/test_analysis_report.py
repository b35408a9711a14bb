"""The HTML report of quick runs: files it references exist, groups of seeds are summarised, and a
headless Chromium loads it without errors."""

import json
import shutil
import statistics
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

import matplotlib.image
import pytest
from analysis_browser import find_chromium, visit

from avbalance.analysis.groups import group_labels
from avbalance.cli import main


class References(HTMLParser):
    """Every ``src`` / ``href`` of a page, and whether it has scripts or external style sheets."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.fixture(scope="module")
def report(baseline_run, baseline_seed1_run, ogm_ge_run, visual_only_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    runs = [baseline_run, baseline_seed1_run, ogm_ge_run, visual_only_run]
    assert main(["report", *map(str, runs), "--out", str(out), "--probe", "--title", "Quick runs"]) == 0
    return out, runs


def test_report_references_only_files_that_exist(report):
    out, _ = report
    html = (out / "index.html").read_text()
    parser = References()
    parser.feed(html)
    images = [link for link in parser.links if link.endswith(".png")]
    assert len(images) >= 8  # 2 curves, coefficients, per-modality, Shapley, 3 confusion figures
    for link in parser.links:
        if link.startswith("#"):
            assert f'id="{link[1:]}"' in html, link
        else:
            assert "://" not in link and not link.startswith("//"), f"external reference {link}"
            assert (out / link).is_file(), f"missing {link}"
    assert "script" not in parser.tags and "link" not in parser.tags  # self-contained: no scripts, inline CSS
    assert "url(" not in html


def test_seeds_form_one_group_with_mean_and_std(report):
    out, (seed0, seed1, *_) = report
    html = (out / "index.html").read_text()
    assert "3 groups of runs" in html
    accuracies = [json.loads((run / "metrics.json").read_text())["test"]["acc"] for run in (seed0, seed1)]
    mean, std = 100 * statistics.fmean(accuracies), 100 * statistics.stdev(accuracies)
    assert f"{mean:.1f} ± {std:.1f}" in html
    assert "baseline_seed0\nbaseline_seed1" in html  # both seeds listed in one group's row


def test_unimodal_reference_probe_and_shapley_feed_the_report(report):
    out, runs = report
    html = (out / "index.html").read_text()
    assert "baseline modalities=visual" in html  # the unimodal reference is its own group
    visual_acc = json.loads((runs[3] / "metrics.json").read_text())["test"]["acc_visual"]
    assert f"{100 * visual_acc:.1f}" in html
    for run in runs:
        assert (run / "probe.json").is_file()  # --probe probed and saved every run
    probe = json.loads((runs[3] / "probe.json").read_text())
    assert f"{100 * probe['accuracy']['visual']['test']:.1f}" in html
    assert 'id="probes"' in html and "φ visual" in html and "imbalance degree" in html
    for name in ("shapley.png", "modality_accuracy.png", "method_coefficients.png", "confusion_3.png"):
        assert (out / name).stat().st_size > 5000, name


def test_report_without_analysis_reads_no_checkpoint(ogm_ge_run, visual_only_run, tmp_path):
    assert main(["report", str(ogm_ge_run), str(visual_only_run), "--out", str(tmp_path), "--no-analysis"]) == 0
    html = (tmp_path / "index.html").read_text()
    assert "Not computed" in html and not list(tmp_path.glob("confusion_*.png"))


def test_a_run_without_checkpoints_becomes_a_warning(visual_only_run, tmp_path, capsys):
    copy = tmp_path / "copied_run"
    copy.mkdir()
    for name in ("config.yaml", "metrics.json", "history.json"):
        shutil.copy(visual_only_run / name, copy / name)
    assert main(["report", str(copy), "--out", str(tmp_path / "report")]) == 0
    assert "copied_run: left out of the probe and contribution results" in capsys.readouterr().err
    html = (tmp_path / "report" / "index.html").read_text()
    assert "Warnings" in html and "no checkpoints/best.ckpt in this folder" in html
    assert "No checkpoint could be analysed" in html


def test_report_of_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avbalance: error: ") and "not a finished run folder (no metrics.json)" in err
    assert "\n" not in err


def test_group_labels_name_what_differs():
    base = {"method": {"name": "baseline", "params": {}}, "data": {"modalities": None}, "trainer": {"seed": 0}}
    ogm = {"method": {"name": "ogm_ge", "params": {"alpha": 0.5}}, "data": {"modalities": None}, "trainer": {"seed": 3}}
    visual = {"method": {"name": "baseline", "params": {}}, "data": {"modalities": ["visual"]}, "trainer": {"seed": 0}}
    assert group_labels([base, ogm, visual]) == [
        "baseline modalities=all",
        "ogm_ge alpha=0.5 modalities=all",
        "baseline modalities=visual",
    ]
    assert group_labels([ogm]) == ["ogm_ge"]


def test_report_loads_in_headless_chromium(report, tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium on PATH or in /usr/bin (Debian/Ubuntu: apt-get install chromium)")
    out, _ = report
    page = visit(chromium, (out / "index.html").resolve().as_uri(), profile=tmp_path / "profile")
    assert page.problems == []
    screenshot = tmp_path / "report.png"
    screenshot.write_bytes(page.screenshot)
    pixels = matplotlib.image.imread(BytesIO(page.screenshot), format="png")
    assert pixels.shape[0] > 2000 and pixels.shape[1] >= 1400  # the whole page, not an empty viewport
    assert pixels[..., :3].std() > 0.1  # not a blank page
    Path(screenshot).unlink()
