"""An adversarial sweep of the command line: each bad input gives one line on stderr that names the
file, key or value, exit status 2, no traceback, and leaves every file that existed before as it was
(and no output folder behind). Signals during the final evaluation of ``train`` end in 143 / 130."""

import hashlib
import os
import pickle
import shutil
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from avbalance.cli import main
from avbalance.engine.module import EvaluatedModel

TINY = [
    "--accelerator", "cpu", "--set", "data.options.train_size=32", "--set", "data.options.test_size=16",
    "--set", "model.width=4",
    "--set", "trainer.progress_bar=false",
]  # fmt: skip
TRAIN = ["train", "--epochs", "1", *TINY]
CLASSES = ("cat", "dog", "owl")

CONFIGS = {
    "syntax.yaml": "a: [1, 2\n",
    "list.yaml": "- 1\n- 2\n",
    "section_scalar.yaml": "optim: 3\n",
    "nan_lr.yaml": "optim:\n  lr: .nan\n",
    "inf_lr.yaml": "optim:\n  lr: 1e999\n",
    "duplicate_key.yaml": "optim:\n  lr: 0.1\n  lr: 0.2\n",
    "negative_epochs.yaml": "trainer:\n  epochs: -3\n",
    "huge_epochs.yaml": "trainer:\n  epochs: 99999999999999999999999\n",
    "unknown_option.yaml": "data:\n  options:\n    bogus: 1\n",
    "unknown_encoder_option.yaml": "model:\n  encoders:\n    audio:\n      bogus: 1\n",
    "layers_map.yaml": "model:\n  layers: {a: 1}\n",
    "python_tag.yaml": "out: !!python/object:os.system x\n",
    "tab.yaml": "optim:\n\tlr: 0.01\n",
    "float_batch.yaml": "data:\n  batch_size: 2.5\n",
    "params_list.yaml": "method:\n  params: [1]\n",
    "no_modalities.yaml": "data:\n  modalities: []\n",
    "twice_modality.yaml": "data:\n  modalities: [audio, audio]\n",
    "pretrained_missing.yaml": "model:\n  pretrained:\n    audio: /nonexistent/weights.pth\n",
    "val_fraction.yaml": "data:\n  val_fraction: 1.5\n",
}
TRIALS = {
    "trials_empty.txt": "",
    "trials_label2.txt": "2 c0 c1\n",
    "trials_extra.txt": "1 c0 c1 extra\n",
    "trials_missing.txt": "1 c0 nosuch\n0 c0 c2\n",
    "trials_one.txt": "1\tc0\tc3\n",
}


def write_inputs(folder, run_ckpt):
    for name, text in {**CONFIGS, **TRIALS}.items():
        (folder / name).write_text(text)
    (folder / "binary.yaml").write_bytes(bytes(range(256)))
    (folder / "a_folder").mkdir()
    (folder / "plain.txt").write_text("not a folder\n")
    (folder / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4000))
    (folder / "truncated.ckpt").write_bytes(run_ckpt.read_bytes()[:1000])
    (folder / "pickled.ckpt").write_bytes(pickle.dumps({"call": os.system}))
    torch.save([1, 2, 3], folder / "list.ckpt")
    save_file({"x": torch.zeros(2)}, str(folder / "weights.safetensors"))
    saved = torch.load(run_ckpt, weights_only=True)
    torch.save({k: v for k, v in saved.items() if k != "avbalance"}, folder / "older_layout.ckpt")
    torch.save({"state_dict": {}, "avbalance": {"config": "garbage", "model_spec": {}}}, folder / "foreign.ckpt")


def prepare_cache(world):
    raw = world / "raw"
    (raw / "emb").mkdir(parents=True)
    rng, rows = np.random.default_rng(0), ["id,label,split,a:array,v:array"]
    for i in range(12):
        np.save(raw / "emb" / f"a{i}.npy", rng.standard_normal((1, 8, 8)).astype("float32"))
        np.save(raw / "emb" / f"v{i}.npy", rng.standard_normal((3, 1, 8, 8)).astype("float32"))
        rows.append(f"c{i},{CLASSES[i % 3]},{('train', 'train', 'val', 'test')[i % 4]},emb/a{i}.npy,emb/v{i}.npy")
    (raw / "manifest.csv").write_text("\n".join(rows) + "\n")
    cache = world / "cache"
    assert main(["prepare", "manifest", "--root", str(raw), "--out", str(cache), "--workers", "1"]) == 0
    edited = world / "cache_edited"
    shutil.copytree(cache, edited)
    manifest = next(edited.glob("v*/manifest.csv"))
    lines = manifest.read_text().splitlines()
    fields = lines[1].split(",")
    fields[2] = "99"  # label_index past the three classes
    manifest.write_text("\n".join([lines[0], ",".join(fields), *lines[2:]]) + "\n")
    return cache


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("adversarial")
    run = root / "run"
    assert main([*TRAIN, "--out", str(run)]) == 0
    inputs = root / "in"
    inputs.mkdir()
    write_inputs(inputs, run / "checkpoints" / "best.ckpt")
    prepare_cache(root)
    return root


def fingerprints(root):
    return {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(root.rglob("*")) if path.is_file()}


# (id, command template, text the one line must contain). {in}: the input files, {run}: a trained
# run, {ckpt}: its best checkpoint, {cache}: a prepared cache, {out}: a fresh path that must stay absent;
# {train} is a tiny synthetic run, {tiny} the same without --epochs, {plain} one without synthetic options.
CASES = [
    # config files
    ("config-syntax", "{train} --config {in}/syntax.yaml", "syntax.yaml: line 2 invalid YAML"),
    ("config-binary", "{train} --config {in}/binary.yaml", "not a UTF-8 text file"),
    ("config-folder", "{train} --config {in}/a_folder", "a folder, not a config file"),
    ("config-missing", "{train} --config {in}/nope.yaml", "nope.yaml"),
    ("config-list", "{train} --config {in}/list.yaml", "must be a mapping of sections, found list"),
    ("config-section-scalar", "{train} --config {in}/section_scalar.yaml", "optim: Input should be a valid dict"),
    ("config-nan-lr", "{train} --config {in}/nan_lr.yaml", "optim.lr"),
    ("config-inf-lr", "{train} --config {in}/inf_lr.yaml", "optim.lr"),
    ("config-duplicate-key", "{train} --config {in}/duplicate_key.yaml", "line 3 invalid YAML (key 'lr' given twice)"),
    ("config-negative-epochs", "train {tiny} --config {in}/negative_epochs.yaml", "trainer.epochs"),
    ("config-huge-epochs", "train {tiny} --config {in}/huge_epochs.yaml", "trainer.epochs"),
    ("config-unknown-option", "{train} --config {in}/unknown_option.yaml", "has no option 'bogus'"),
    ("config-unknown-encoder-option", "{train} --config {in}/unknown_encoder_option.yaml", "no option 'bogus'"),
    ("config-layers-map", "{train} --config {in}/layers_map.yaml", "model.layers: Input should be a valid list"),
    ("config-python-tag", "{train} --config {in}/python_tag.yaml", "python_tag.yaml: line 1 invalid YAML"),
    ("config-tab", "{train} --config {in}/tab.yaml", "tab.yaml: line 2 invalid YAML"),
    ("config-float-batch", "{train} --config {in}/float_batch.yaml", "data.batch_size"),
    ("config-params-list", "{train} --config {in}/params_list.yaml", "method.params"),
    ("config-no-modalities", "{train} --config {in}/no_modalities.yaml", "data.modalities"),
    ("config-twice-modality", "{train} --config {in}/twice_modality.yaml", "data.modalities"),
    ("config-pretrained-missing", "{train} --config {in}/pretrained_missing.yaml", "/nonexistent/weights.pth"),
    ("config-val-fraction", "{train} --config {in}/val_fraction.yaml", "data.val_fraction"),
    # --set overrides and short options
    ("set-no-value", "{train} --set optim.lr", "not of the form key=value"),
    ("set-unknown-section", "{train} --set nope.x=1", "nope"),
    ("set-not-a-number", "{train} --set optim.lr=abc", "optim.lr"),
    ("set-seed-negative", "{train} --set trainer.seed=-1", "trainer.seed"),
    ("set-seed-huge", "{train} --set trainer.seed=99999999999999999999", "trainer.seed"),
    ("set-clip-negative", "{train} --set trainer.gradient_clip_val=-1", "trainer.gradient_clip_val"),
    ("set-accelerator", "{train} --set trainer.accelerator=tpu", "trainer settings: "),
    ("set-alpha-nan", "{train} --method ogm_ge --set method.params.alpha=.nan", "alpha"),
    ("set-encoder-width-zero", "{train} --set model.encoders.audio.width=0", "width"),
    ("set-nonfinite-choice", "{train} --set trainer.nonfinite=maybe", "trainer.nonfinite"),
    ("lr-inf", "{train} --lr inf", "optim.lr"),
    ("lr-nan", "{train} --lr nan", "optim.lr"),
    ("epochs-zero", "train {tiny} --epochs 0", "trainer.epochs"),
    ("epochs-huge", "train {tiny} --epochs 99999999999999999999999", "trainer.epochs"),
    ("batch-size-zero", "{train} --batch-size 0", "data.batch_size"),
    ("accelerator-tpu", "{train} --accelerator tpu", "trainer settings: "),
    ("modalities-empty", "{train} --modalities ,", "data.modalities"),
    ("method-unknown", "{train} --method nope", "nope"),
    ("ogm-window-reversed", "{train} --method ogm_ge --modulation-starts 5 --modulation-ends 2", "modulation_ends"),
    ("data-for-synthetic", "{train} --data {in}/a_folder", "reads no data folder"),
    ("out-is-a-file", "{train} --out {in}/plain.txt", "plain.txt"),
    # checkpoints
    ("resume-random", "{train} --resume {in}/random.ckpt", "random.ckpt: not a readable PyTorch checkpoint"),
    ("resume-pickle", "{train} --resume {in}/pickled.ckpt", "pickled.ckpt"),
    ("resume-older-layout", "{train} --resume {in}/older_layout.ckpt", "older_layout.ckpt"),
    ("test-random", "test --accelerator cpu --ckpt {in}/random.ckpt", "random.ckpt: not a readable PyTorch"),
    ("test-truncated", "test --accelerator cpu --ckpt {in}/truncated.ckpt", "truncated.ckpt: not a readable"),
    ("test-pickle", "test --accelerator cpu --ckpt {in}/pickled.ckpt", "pickled.ckpt"),
    ("test-list", "test --accelerator cpu --ckpt {in}/list.ckpt", "not a checkpoint dict"),
    ("test-safetensors", "test --accelerator cpu --ckpt {in}/weights.safetensors", "weights.safetensors"),
    ("test-older-layout", "test --accelerator cpu --ckpt {in}/older_layout.ckpt", "no training config"),
    ("test-foreign", "test --accelerator cpu --ckpt {in}/foreign.ckpt", "foreign.ckpt"),
    ("test-not-a-run", "test --accelerator cpu --ckpt {in}/a_folder", "a_folder"),
    ("test-accelerator", "test --accelerator tpu --ckpt {ckpt}", "trainer settings: "),
    ("test-batch-size", "test --accelerator cpu --ckpt {ckpt} --batch-size 0", "batch"),
    ("test-data-synthetic", "test --accelerator cpu --ckpt {ckpt} --data {cache}", "--data applies to runs"),
    ("test-out-file", "test --accelerator cpu --ckpt {ckpt} --out {in}/plain.txt", "plain.txt"),
    ("convert-random", "convert-checkpoint {in}/random.ckpt {out}", "random.ckpt"),
    ("convert-safetensors", "convert-checkpoint {in}/weights.safetensors {out}", "weights.safetensors"),
    # probe and report on what is not a run
    ("probe-not-a-run", "probe --accelerator cpu --ckpt {in}/a_folder --out {out}", "a_folder"),
    ("probe-accelerator", "probe --accelerator tpu --ckpt {ckpt} --out {out}", "--accelerator"),
    ("probe-C-nan", "probe --accelerator cpu --ckpt {ckpt} --C nan --out {out}", "--C"),
    ("report-not-a-run", "report {in}/a_folder --out {out}", "a_folder"),
    ("report-file", "report {in}/plain.txt --out {out}", "plain.txt"),
    ("report-twice", "report {run} {run} --no-analysis --out {out}", "given twice"),
    # caches
    ("cache-is-a-file", "{plain} --dataset manifest --data {in}/plain.txt", "a file, not a cache"),
    ("cache-edited-manifest", "{plain} --dataset manifest --data {world}/cache_edited", "label_index '99'"),
    ("cache-of-another-dataset", "{plain} --dataset grid --data {cache}", "not 'grid'"),
    # verify: nothing written when the checkpoint or cache is wrong
    ("verify-random-ckpt", "verify --ckpt {in}/random.ckpt --data {cache} --trials-from-cache 3 --out {out}", "random"),
    ("verify-model-not-cache", "verify --ckpt {ckpt} --data {cache} --trials-from-cache 3 --out {out}", "in common"),
    ("verify-accelerator", "verify --ckpt {ckpt} --data {cache} --trials-from-cache 3 --accelerator tpu", "--acc"),
    ("verify-trials-empty", "verify --ckpt {ckpt} --data {cache} --trials {in}/trials_empty.txt --out {out}", "empty"),
    ("verify-label-2", "verify --ckpt {ckpt} --data {cache} --trials {in}/trials_label2.txt --out {out}", "line 1"),
    ("verify-extra", "verify --ckpt {ckpt} --data {cache} --trials {in}/trials_extra.txt --out {out}", "line 1"),
    ("verify-missing", "verify --ckpt {ckpt} --data {cache} --trials {in}/trials_missing.txt --out {out}", "nosuch"),
    (
        "verify-one-kind",
        "verify --ckpt {ckpt} --data {cache} --trials {in}/trials_one.txt --out {out}",
        "non-t",
    ),
    # other commands
    ("benchmark-seeds-huge", "benchmark synthetic --seeds 99999999999999999999 --out {out}", "--seeds"),
    ("benchmark-jobs-zero", "benchmark synthetic --jobs 0 --out {out}", "--jobs"),
    ("demo-epochs-zero", "demo --epochs 0 --out {out}", "trainer.epochs"),
    ("prepare-empty-csv", "prepare manifest --root {in} --csv {in}/plain.txt --out {out}", "plain.txt"),
    ("prepare-limit-zero", "prepare manifest --root {world}/raw --limit 0 --out {out}", "--limit"),
]


@pytest.mark.parametrize("template, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_gives_one_line_and_changes_nothing(world, tmp_path, capsys, template, expected):
    out = tmp_path / "fresh-output"
    places = {
        "train": " ".join(TRAIN) + f" --out {out}",
        "tiny": " ".join(TINY) + f" --out {out}",
        "plain": f"train --accelerator cpu --epochs 1 --set trainer.progress_bar=false --out {out}",
        "in": world / "in",
        "run": world / "run",
        "ckpt": world / "run" / "checkpoints" / "best.ckpt",
        "cache": world / "cache",
        "world": world,
        "out": out,
    }
    before = fingerprints(world)
    capsys.readouterr()
    status = main(template.format(**places).split())
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert expected in lines[0]
    assert fingerprints(world) == before
    assert not out.exists()


def signal_at_first_test_batch(monkeypatch, signum: int) -> None:
    """The process receives ``signum`` while it evaluates its first test batch."""
    original = EvaluatedModel.test_step

    def test_step(self, batch, batch_idx):
        if batch_idx == 0:
            os.kill(os.getpid(), signum)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(EvaluatedModel, "test_step", test_step)


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_the_final_evaluation_stops_in_one_line(tmp_path, capsys, monkeypatch, signum, status):
    signal_at_first_test_batch(monkeypatch, signum)
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == status
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["avbalance: interrupted during the final evaluation; rerun with --resume auto to evaluate"]
    assert (out / "checkpoints" / "last.ckpt").is_file() and not (out / "metrics.json").exists()
    assert signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL)  # handlers given back


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_test_stops_in_one_line(world, capsys, monkeypatch, signum, status):
    signal_at_first_test_batch(monkeypatch, signum)
    capsys.readouterr()
    assert main(["test", "--accelerator", "cpu", "--ckpt", str(world / "run" / "checkpoints" / "best.ckpt")]) == status
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["avbalance: interrupted during the evaluation; rerun the same command"]
    assert signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL)
