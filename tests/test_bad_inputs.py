"""A table of user mistakes: each gives its one-line message, exit status 2 and no traceback, and
leaves every file that existed before it byte for byte as it was (and creates no output folder)."""

import hashlib
import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from avbalance.cli import main

SMALL_DATA = [
    "--set",
    "data.options.train_size=120",
    "--set",
    "data.options.test_size=30",
    "--set",
    "trainer.progress_bar=false",
]
TINY = ["--epochs", "1", "--batch-size", "32", *SMALL_DATA]
NPY_ROWS = [
    ("c0", "x", "train"),
    ("c1", "y", "train"),
    ("c2", "x", "train"),
    ("c3", "y", "val"),
    ("c4", "x", "test"),
    ("c5", "y", "test"),
]


def write_checkpoints(root, run):
    good = run / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(good, weights_only=True)
    checkpoint["avbalance"]["model_spec"]["encoders"]["audio"]["width"] = 16
    torch.save(checkpoint, root / "other_shape.ckpt")
    no_config = {"avbalance": {"model_spec": checkpoint["avbalance"]["model_spec"]}, "state_dict": {}}
    torch.save(no_config, root / "no_config.ckpt")
    (root / "garbage.ckpt").write_bytes(b"this is not a checkpoint")

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    (root / "evil.ckpt").write_bytes(pickle.dumps({"state_dict": Evil()}))
    torch.save({"conv1.weight": torch.zeros(8, 1, 3, 3)}, root / "bad_weights.pt")
    # The synthetic run's checkpoint, as if it had been trained on a cache of another dataset.
    on_cache = torch.load(good, weights_only=True)
    on_cache["avbalance"]["config"]["data"].update(dataset="manifest", root=str(root / "cache"), options={})
    torch.save(on_cache, root / "on_cache.ckpt")


CONFIG_TEXTS = {
    "syntax.yaml": "optim: {lr: [0.1\n",
    "list.yaml": "- a\n- b\n",
    "section.yaml": "optimizer: {lr: 0.1}\n",
    "key.yaml": "optim: {learning_rate: 0.1}\n",
    "type.yaml": "trainer: {epochs: ten}\n",
    "range.yaml": "data: {batch_size: 0}\n",
    "fraction.yaml": "data: {val_fraction: 1.5}\n",
    "optimizer.yaml": "optim: {name: rmsprop}\n",
    "scalar_section.yaml": "optim: 3\n",
    "encoder_key.yaml": "model: {encoders: {audio: {depth: 3}}}\n",
    "tabs.yaml": "optim:\n\tlr: 0.1\n",
}


def write_configs(root):
    for name, text in CONFIG_TEXTS.items():
        (root / name).write_text(text)
    (root / "latin1.yaml").write_bytes("optim: {lr: 0.1}  # d\xe9j\xe0 vu\n".encode("latin-1"))
    (root / "a_folder").mkdir()
    (root / "a_file").write_text("not a folder\n")


def write_manifests(root):
    """A small raw dataset of ``.npy`` clips (no decoding needed) and CSV files about it."""
    raw = root / "raw"
    (raw / "arrays").mkdir(parents=True)
    rows = []
    for clip, label, split in NPY_ROWS:
        np.save(raw / "arrays" / f"{clip}.npy", np.full((4, 6), len(rows), dtype=np.float32))
        rows.append(f"{clip},{label},{split},arrays/{clip}.npy")
    header = "id,label,split,audio"
    texts = {
        "manifest.csv": [header, *rows],
        "header_only.csv": [header],
        "no_modality.csv": ["id,label,split", *(r.rsplit(",", 1)[0] for r in rows)],
        "no_label.csv": ["id,split,audio", *rows],
        "duplicated.csv": [header + ",audio", *(r + "," + r.rsplit(",", 1)[1] for r in rows)],
        "unknown_kind.csv": ["id,label,split,audio:sound", *rows],
        "empty_column.csv": [header + ",visual", *(r + "," for r in rows)],
        "unguessable.csv": [header + ",visual", *(r + ",notes.doc" for r in rows)],
        "empty.csv": [],
    }
    for name, lines in texts.items():
        (raw / name).write_text("".join(line + "\n" for line in lines))
    (raw / "latin1.csv").write_bytes((header + "\nc\xe9,x,train,arrays/c0.npy\n").encode("latin-1"))
    assert main(["prepare", "manifest", "--root", str(raw), "--out", str(root / "cache"), "--workers", "1"]) == 0


def write_bad_runs(root, run):
    """Run folders whose files are damaged, for ``avbalance report``."""
    damages = {
        "invalid_json": ("metrics.json", "{not json"),
        "list_metrics": ("metrics.json", "[1, 2]"),
        "string_test": ("metrics.json", json.dumps({"test": "high", "val": {}})),
        "list_history": ("history.json", json.dumps({"epoch": 0})),
        "scalar_config": ("config.yaml", "just text\n"),
        "broken_yaml": ("config.yaml", "data: {a: [1\n"),
        "bad_log": ("metrics.csv", "epoch,step,method/ratio_epoch\n0,3,high\n"),
    }
    for name, (file, text) in damages.items():
        folder = root / "bad_runs" / name
        shutil.copytree(run, folder, ignore=shutil.ignore_patterns("checkpoints"))
        (folder / file).write_text(text)
    for name, text in {"bench_list": "[1, 2]", "bench_broken": '{"overrides": ['}.items():
        seed = root / name / "runs" / "baseline" / "seed0"
        seed.mkdir(parents=True)
        (seed / "run.json").write_text(text)
        (seed / "metrics.json").write_text("{}")
    folder = root / "bad_runs" / "latin1_config"
    shutil.copytree(run, folder, ignore=shutil.ignore_patterns("checkpoints"))
    (folder / "config.yaml").write_bytes("out: caf\xe9\n".encode("latin-1"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Files the mistakes refer to: a trained run, configs, checkpoints, weights, raw data, a cache."""
    root = tmp_path_factory.mktemp("inputs")
    run = root / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    write_checkpoints(root, run)
    write_configs(root)
    write_manifests(root)
    write_bad_runs(root, run)
    return root


def case(argv, message, reason=None):
    """One mistake; ``reason``: why it does not behave yet (an expected failure until fixed)."""
    return argv, message, reason


CONFIG_CASES = [
    case(["train", "--config", "{root}/syntax.yaml"], "syntax.yaml: line 2 invalid YAML"),
    case(["train", "--config", "{root}/list.yaml"], "list.yaml: a config file must be a mapping of sections"),
    case(["train", "--config", "{root}/section.yaml"], "section.yaml: unknown key 'optimizer'"),
    case(["train", "--config", "{root}/key.yaml"], "key.yaml: unknown key 'optim.learning_rate'"),
    case(["train", "--config", "{root}/type.yaml"], "type.yaml: trainer.epochs: Input should be a valid integer"),
    case(
        ["train", "--config", "{root}/range.yaml"],
        "range.yaml: data.batch_size: Input should be greater than or equal to 1",
    ),
    case(
        ["train", "--config", "{root}/fraction.yaml"], "fraction.yaml: data.val_fraction: Input should be less than 1"
    ),
    case(["train", "--config", "{root}/optimizer.yaml"], "optimizer.yaml: optim.name: "),
    case(["train", "--config", "{root}/missing.yaml"], "missing.yaml: no such config file"),
    case(
        ["train", "--config", "{root}/scalar_section.yaml"],
        "scalar_section.yaml: optim: Input should be a valid dictionary",
    ),
    case(["train", "--config", "{root}/encoder_key.yaml"], "encoder 'resnet' has no option 'depth'"),
    case(["train", "--config", "{root}/tabs.yaml"], "tabs.yaml: line 2 invalid YAML"),
    case(["train", "--config", "{root}/latin1.yaml"], "latin1.yaml: not a UTF-8 text file"),
    case(["train", "--config", "{root}/a_folder"], "a_folder: a folder, not a config file"),
]

ARGUMENT_CASES = [
    case(["train", "--epochs", "abc"], "argument --epochs: invalid int value: 'abc'"),
    case(["trian"], "invalid choice: 'trian'"),
    case(["test"], "the following arguments are required: --ckpt"),
    case(["train", "--epochs", "0"], "trainer.epochs: Input should be greater than or equal to 1"),
    case(["train", "--epochs", "-3"], "trainer.epochs: Input should be greater than or equal to 1"),
    case(["train", "--batch-size", "0"], "data.batch_size: Input should be greater than or equal to 1"),
    case(["train", "--batch-size", "-8"], "data.batch_size: Input should be greater than or equal to 1"),
    case(["train", "--batch-size", "10000000000000000000"], "data.batch_size: Input should be less than or equal to"),
    case(["train", "--lr", "0"], "optim.lr: Input should be greater than 0"),
    case(["train", "--lr", "-0.1"], "optim.lr: Input should be greater than 0"),
    case(["train", "--lr", "nan"], "optim.lr: Input should be greater than 0 (got 'nan')"),
    case(["train", "--seed", "x"], "argument --seed: invalid int value: 'x'"),
    case(["train", "--num-nodes", "0"], "trainer.num_nodes: Input should be greater than or equal to 1"),
    case(["train", "--set", "data.eval_batch_size=0"], "data.eval_batch_size: Input should be greater than or equal"),
    case(
        ["train", "--set", "data.num_workers=-1"],
        "data.num_workers: Input should be greater than or equal to 0, or 'auto' (got -1)",
    ),
    case(["train", "--set", "trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches: Input should be"),
    case(["train", "--set", "trainer.checkpoint_every_n_steps=0"], "trainer.checkpoint_every_n_steps: Input should"),
    case(["train", "--set", "trainer.nonfinite=maybe"], "trainer.nonfinite: Input should be 'skip', 'stop' or 'off'"),
    case(["train", "--set", "model.width=0"], "model.width: Input should be greater than or equal to 1"),
    case(["train", "--set", "optim.momentum=-1"], "optim.momentum: Input should be greater than or equal to 0"),
    case(["train", "--set", "optim.scheduler=linear"], "optim.scheduler: "),
    case(["train", "--set", "optim.lr.value=1"], "override optim.lr.value: 'lr' is not a section"),
    case(["train", "--set", "data=3"], "config: data: Input should be"),
    case(["train", "--set", "nothing=1"], "config: unknown key 'nothing'"),
    case(["train", "--set", "optim.lr"], "override 'optim.lr' is not of the form key=value"),
    case(["train", "--set", "optim.lr=abc"], "config: optim.lr: Input should be a valid number"),
    case(["train", "--accelerator", "gpu"], "trainer settings: "),
    case(["train", "--accelerator", "tpu9"], "trainer settings: "),
    case(["train", "--strategy", "foo"], "trainer settings: You selected an invalid strategy name"),
    case(["train", "--precision", "13-odd"], "trainer settings: "),
    case(["train", "--resume", "{root}/none.ckpt"], "none.ckpt: no such checkpoint to resume from"),
    case(["train", "--resume", "{root}/garbage.ckpt"], "garbage.ckpt: not a readable PyTorch checkpoint"),
    case(["train", "--resume", "{root}/evil.ckpt"], "evil.ckpt: refused to load"),
    case(["train", "--resume", "{root}/a_folder"], "a_folder: no such checkpoint to resume from"),
    case(
        ["train", "--resume", "{root}/other_shape.ckpt"],
        "other_shape.ckpt: does not match this run: model.encoders.audio.width is 8 here, 16 in the checkpoint",
    ),
    case(["train", "--out", "{root}/a_file"], "a_file: not a folder"),
    case(["train", "--out", "{root}/a_file/run"], "a_file/run: cannot create this folder"),
]

METHOD_CASES = [
    case(["train", "--method", "nope"], "unknown method 'nope'; choose one of: "),
    case(["train", "--fusion", "mlp"], "unknown fusion 'mlp'; choose one of: "),
    case(["train", "--alpha", "0.3"], "method 'baseline' has no hyperparameter 'alpha'; it takes no hyperparameters"),
    case(["train", "--method", "ogm_ge", "--alpha", "-1"], "method 'ogm_ge': alpha must be >= 0, got -1.0"),
    case(
        ["train", "--method", "ogm_ge", "--set", "method.params.alpha=abc"],
        "method 'ogm_ge': alpha: Input should be a valid number",
    ),
    case(
        ["train", "--method", "ogm_ge", "--set", "method.params.beta=1"],
        "method 'ogm_ge' has no hyperparameter 'beta'; its hyperparameters are: ",
    ),
    case(["train", "--method", "mmcosine", "--scaling", "0"], "method 'mmcosine': scaling must be > 0"),
    case(
        ["train", "--method", "ogm", "--set", "method.params.modulate=bias"],
        "modulate: Input should be 'auto', 'conv', 'weights' or 'all'",
    ),
    case(["train", "--method", "ogm", "--modalities", "visual"], "method 'ogm' needs 2+ modalities, got 1 (visual)"),
    case(
        ["train", "--method", "mmcosine", "--fusion", "gated"], "method 'mmcosine' needs a head split in per-modality"
    ),
    case(
        ["train", "--fusion", "film", "--set", "data.options.flow_strength=0.3"],
        "fusion 'film' supports exactly 2 modalities, got 3 (audio, visual, flow)",
    ),
    case(["train", "--set", "model.fusion_options.depth=2"], "fusion 'concat' has no option 'depth'"),
]

ON_CACHE = ["train", "--out", "{out}", "--epochs", "1", "--set", "trainer.progress_bar=false"]
DATA_CASES = [
    case(["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'; choose one of: "),
    case(
        ["train", "--modalities", "text"],
        "dataset 'synthetic' has no modality 'text'; its modalities are: audio, visual",
    ),
    case(["train", "--set", "data.options.test_size=0"], "the test split is empty"),
    case(
        ["train", "--set", "data.options.train_size=-5"], "dataset 'synthetic': train_size must be at least 1, got -5"
    ),
    case(
        ["train", "--set", "data.options.num_classes=0"], "dataset 'synthetic': num_classes must be at least 1, got 0"
    ),
    case(["train", "--set", "data.options.train_size=abc"], "dataset 'synthetic': train_size: Input should be"),
    case(["train", "--set", "data.options.colour=red"], "dataset 'synthetic' has no option 'colour'"),
    case([*ON_CACHE, "--dataset", "manifest"], "dataset 'manifest' reads a prepared cache: pass --data CACHE"),
    case([*ON_CACHE, "--dataset", "manifest", "--data", "{root}/absent"], "absent"),
    case([*ON_CACHE, "--dataset", "manifest", "--data", "{root}/a_folder"], "a_folder"),
    case([*ON_CACHE, "--dataset", "grid", "--data", "{root}/cache"], "'manifest', not 'grid'"),
    case([*ON_CACHE, "--dataset", "manifest", "--data", "{root}/cache", "--set", "data.options.frames=-1"], "frames"),
]

MODEL_CASES = [
    case(["train", "--set", "model.encoders.audio.bogus=3"], "encoder 'resnet' has no option 'bogus'"),
    case(["train", "--set", "model.encoders.audio.width=-2"], "encoder 'resnet': width must be at least 1, got -2"),
    case(["train", "--set", "model.encoders.text.width=4"], "model.encoders: no 'text' modality in this model"),
    case(["train", "--set", "model.width=100000"], "the model is too large to allocate (audio encoder: width 100000"),
    case(["train", "--set", "model.layers=[0]"], "encoder 'resnet': every entry of layers must be at least 1, got [0]"),
    case(["train", "--set", "model.layers=[]"], "model.layers: List should have at least 1 item"),
    case(
        ["train", "--set", "model.pretrained.audio={root}/bad_weights.pt"],
        "bad_weights.pt: pretrained weights do not fit the audio encoder: 1 with another shape: conv1.weight",
    ),
    case(["train", "--set", "model.pretrained.text={root}/bad_weights.pt"], "model.pretrained: no 'text' encoder"),
    case(["train", "--set", "model.pretrained.audio={root}/absent.pt"], "absent.pt"),
    case(["train", "--set", "model.pretrained.audio={root}/garbage.ckpt"], "garbage.ckpt: not a readable PyTorch"),
    case(["train", "--set", "model.pretrained.audio={root}/evil.ckpt"], "evil.ckpt: refused to load"),
]

RUN_FOLDER_CASES = [  # {run}: a copy of a finished run, which must come out unchanged
    case(["train", "--out", "{run}", *TINY, "--batch-size", "10000000000000000000"], "data.batch_size"),
    case(
        ["train", "--out", "{run}", *TINY, "--resume", "auto", "--set", "model.width=16"],
        "last.ckpt: does not match this run: model.encoders.audio.width is 16 here, 8 in the checkpoint",
    ),
    case(
        ["train", "--out", "{run}", *TINY, "--resume", "auto", "--set", "data.options.num_classes=5"],
        "last.ckpt: does not match this run: model.num_classes is 5 here, 8 in the checkpoint",
    ),
    case(
        ["train", "--out", "{run}", *TINY, "--resume", "auto", "--fusion", "sum"],
        "last.ckpt: does not match this run: model.fusion is 'sum' here, 'concat' in the checkpoint",
    ),
    case(
        ["train", "--out", "{run}", *TINY, "--lr", "1e30", "--set", "trainer.nonfinite=stop"],
        "non-finite gradients at epoch 0",
    ),  # fails once training has started
    case(["train", "--lr", "1e30", "--set", "trainer.nonfinite=stop"], "non-finite gradients at epoch 0"),
    case(
        ["train", "--out", "{out}/deeper/run", *TINY, "--lr", "1e30", "--set", "trainer.nonfinite=stop"],
        "non-finite gradients at epoch 0",
    ),
    case(
        ["train", "--out", "{run}", *TINY, "--resume", "auto", "--method", "ogm"],
        "last.ckpt: does not match this run: method is 'ogm' here, 'baseline' in the checkpoint",
    ),
    case(["train", "--out", "{run}", *TINY, "--method", "nope"], "unknown method 'nope'"),
    case(["train", "--out", "{run}", *TINY, "--set", "data.options.test_size=0"], "the test split is empty"),
    case(["train", "--out", "{run}", *TINY, "--set", "model.width=100000"], "too large to allocate"),
]

VERIFY = ["verify", "--ckpt", "{root}/run", "--data", "{root}/cache", "--trials-from-cache"]
CHECKPOINT_CASES = [
    case(["test", "--ckpt", "{root}/absent.ckpt"], "absent.ckpt: no such checkpoint file"),
    case(["test", "--ckpt", "{root}/garbage.ckpt"], "garbage.ckpt: not a readable PyTorch checkpoint"),
    case(["test", "--ckpt", "{root}/evil.ckpt"], "evil.ckpt: refused to load: it contains objects that only arbitrary"),
    case(["test", "--ckpt", "{root}/other_shape.ckpt"], "other_shape.ckpt: does not match the model: "),
    case(["test", "--ckpt", "{root}/no_config.ckpt"], "no_config.ckpt: no training config inside"),
    case(["test", "--ckpt", "{root}/a_folder"], "a_folder: no checkpoints/best.ckpt in this folder"),
    case(["test", "--ckpt", "{root}/run", "--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    case(["test", "--ckpt", "{root}/run", "--batch-size", "-4"], "--batch-size: must be at least 1, got -4"),
    case(["test", "--ckpt", "{root}/run", "--split", "train"], "argument --split: invalid choice: 'train'"),
    case(["test", "--ckpt", "{root}/run", "--removal", "drop"], "argument --removal: invalid choice: 'drop'"),
    case(["test", "--ckpt", "{root}/run", "--out", "{root}/a_file"], "a_file: not a folder"),
    case(
        ["test", "--ckpt", "{root}/run", "--data", "{root}/cache"],
        "cache: --data applies to runs trained on a prepared cache; this run was trained on 'synthetic'",
    ),
    case(["test", "--ckpt", "{root}/on_cache.ckpt"], "cache: 2 classes (x, y), but the checkpoint's model has 8"),
    case(["test", "--ckpt", "{root}/on_cache.ckpt", "--data", "{root}/absent"], "absent"),
    case(
        ["convert-checkpoint", "{root}/run/checkpoints/best.ckpt", "{root}/x.ckpt"], "no 'fusion_module.*' parameters"
    ),
    case(["convert-checkpoint", "{root}/absent.pth", "{root}/x.ckpt"], "absent.pth"),
    case(["test", "--ckpt", "{root}/run", "--devices", "0"], "trainer settings: "),
    case(["test", "--ckpt", "{root}/run", "--accelerator", "tpu9"], "trainer settings: "),
    case([*VERIFY, "4", "--batch-size", "0", "--out", "{out}"], "--batch-size: must be at least 1, got 0"),
    case([*VERIFY, "4", "--out", "{root}/a_file"], "a_file: not a folder"),
    case([*VERIFY, "-3", "--out", "{out}"], "--trials-from-cache must be at least 1, got -3"),
    case([*VERIFY, "99", "--out", "{out}"], "the cache allows only"),
    case(
        ["verify", "--ckpt", "{root}/run", "--data", "{root}/absent", "--trials-from-cache", "4", "--out", "{out}"],
        "absent: no such cache folder",
    ),
    case(["convert-checkpoint", "{root}/garbage.ckpt", "{root}/x.ckpt"], "garbage.ckpt: not a readable PyTorch"),
    case(["convert-checkpoint", "{root}/evil.ckpt", "{root}/x.ckpt"], "evil.ckpt: refused to load"),
]

ANALYSIS_CASES = [
    case(["probe", "--ckpt", "{root}/absent.ckpt"], "absent.ckpt"),
    case(["probe", "--ckpt", "{root}/garbage.ckpt"], "garbage.ckpt: not a readable PyTorch checkpoint"),
    case(["probe", "--ckpt", "{root}/run", "--out", "{root}/a_folder"], "a_folder: a folder, not a file"),
    case(["probe", "--ckpt", "{root}/run", "--out", "{root}/a_file/probe.json"], "cannot create"),
    case(["probe", "--ckpt", "{root}/run", "--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    case(["probe", "--ckpt", "{root}/run", "--C", "0"], "--C: must be greater than 0, got 0.0"),
    case(["probe", "--ckpt", "{root}/run", "--C", "-1"], "--C: must be greater than 0, got -1.0"),
    case(["report", "{root}/absent", "--out", "{out}"], "absent: no such run folder"),
    case(["report", "{root}/a_folder", "--out", "{out}"], "a_folder: not a finished run folder"),
    case(["report", "{root}/run", "--out", "{root}/a_file"], "a_file: not a folder"),
    case(["report", "{root}/bad_runs/invalid_json", "--out", "{out}"], "metrics.json: invalid JSON"),
    case(
        ["report", "{root}/bad_runs/list_metrics", "--out", "{out}"],
        "list_metrics/metrics.json: expected a JSON object, found a list",
    ),
    case(
        ["report", "{root}/bad_runs/string_test", "--out", "{out}"],
        "string_test/metrics.json: 'test' should be an object of metrics, found a string",
    ),
    case(
        ["report", "{root}/bad_runs/list_history", "--out", "{out}"],
        "list_history/history.json: expected a JSON list, found an object",
    ),
    case(
        ["report", "{root}/bad_runs/scalar_config", "--out", "{out}"],
        "scalar_config/config.yaml: a config file must be a mapping of sections",
    ),
    case(["report", "{root}/bad_runs/broken_yaml", "--out", "{out}"], "broken_yaml/config.yaml: line 2 invalid YAML"),
    case(["report", "{root}/bad_runs/latin1_config", "--out", "{out}"], "config.yaml: not a UTF-8 text file"),
    case(["report", "{root}/bad_runs/bad_log", "--out", "{out}"], "bad_log/metrics.csv: not a training log"),
    case(["report", "{root}/run", "--split", "train"], "argument --split: invalid choice: 'train'"),
]

PREPARE = ["prepare", "manifest", "--root", "{root}/raw", "--workers", "1"]
PREPARE_CASES = [
    case([*PREPARE, "--out", "{root}/a_file"], "a_file: not a folder"),
    case([*PREPARE, "--out", "{root}/a_file/cache"], "a_file/cache: cannot create this folder"),
    case([*PREPARE, "--out", "{root}/run"], "is not empty and is not a cache made by 'avbalance prepare'"),
    case(["prepare", "manifest", "--root", "{root}/absent", "--out", "{out}"], "absent: raw dataset folder not found"),
    case([*PREPARE, "--out", "{out}", "--limit", "0"], "argument --limit: Input should be greater than or equal to 1"),
    case([*PREPARE, "--out", "{out}", "--limit", "-3"], "argument --limit: Input should be greater than or equal to 1"),
    case([*PREPARE, "--out", "{out}", "--workers", "0"], "argument --workers: Input should be greater than or equal"),
    case([*PREPARE, "--out", "{out}", "--size", "0"], "argument --size: Input should be greater than or equal to 1"),
    case([*PREPARE, "--out", "{out}", "--fps", "-1"], "argument --fps: Input should be greater than 0"),
    case([*PREPARE, "--out", "{out}", "--crop", "1,2,3"], "argument --crop: expected X,Y,W,H"),
    case([*PREPARE, "--out", "{out}", "--seconds", "0"], "argument --seconds: Input should be greater than 0"),
    case([*PREPARE, "--out", "{out}", "--audio", "mfcc"], "argument --audio: invalid choice: 'mfcc'"),
    case([*PREPARE, "--out", "{out}", "--csv", "{root}/raw/absent.csv"], "absent.csv: missing file"),
    case([*PREPARE, "--out", "{out}", "--csv", "{root}/raw/empty.csv"], "empty.csv: empty file, expected a header"),
    case(
        [*PREPARE, "--out", "{out}", "--csv", "{root}/raw/header_only.csv"],
        "header_only.csv: no clips below the header",
    ),
    case([*PREPARE, "--out", "{out}", "--csv", "{root}/raw/no_modality.csv"], "no modality column besides id, label"),
    case([*PREPARE, "--out", "{out}", "--csv", "{root}/raw/no_label.csv"], "header lacks column 'label'"),
    case(
        [*PREPARE, "--out", "{out}", "--csv", "{root}/raw/duplicated.csv"],
        "duplicated.csv: column 'audio' appears twice in the header",
    ),
    case([*PREPARE, "--out", "{out}", "--csv", "{root}/raw/unknown_kind.csv"], "has unknown kind 'sound'"),
    case([*PREPARE, "--out", "{out}", "--csv", "{root}/raw/empty_column.csv"], "column 'visual' is empty in every row"),
    case([*PREPARE, "--out", "{out}", "--csv", "{root}/raw/unguessable.csv"], "cannot tell what 'notes.doc' holds"),
    case([*PREPARE, "--out", "{out}", "--csv", "{root}/raw/latin1.csv"], "latin1.csv: not a readable CSV file"),
    case([*PREPARE, "--out", "{root}/cache", "--size", "32"], "was prepared with other settings"),
    case(["prepare", "imagenet"], "invalid choice: 'imagenet'"),
]

BENCH_BASELINE = ["benchmark", "synthetic", "--quick", "--methods", "baseline", "--no-references", "--out"]
BENCHMARK_CASES = [
    case(["benchmark", "nope", "--out", "{out}"], "unknown benchmark suite 'nope'; choose one of: "),
    case(["benchmark", "synthetic", "--quick", "--seeds", "0", "--out", "{out}"], "--seeds: must be at least 1, got 0"),
    case(
        ["benchmark", "synthetic", "--quick", "--seeds", "-1", "--out", "{out}"], "--seeds: must be at least 1, got -1"
    ),
    case(["benchmark", "synthetic", "--quick", "--jobs", "0", "--out", "{out}"], "--jobs must be at least 1, got 0"),
    case(["benchmark", "synthetic", "--quick", "--methods", "nope", "--out", "{out}"], "unknown method(s): nope"),
    case(["benchmark", "synthetic", "--quick", "--out", "{root}/a_file"], "a_file: not a folder"),
    case([*BENCH_BASELINE, "{root}/bench_list"], "seed0/run.json: not a JSON object; delete"),
    case([*BENCH_BASELINE, "{root}/bench_broken"], "seed0/run.json: invalid JSON"),
    case(["demo", "--epochs", "0", "--out", "{out}"], "trainer.epochs: Input should be greater than or equal to 1"),
    case(["demo", "--out", "{root}/a_file"], "a_file: not a folder"),
]

AREAS = {
    "config": CONFIG_CASES,
    "argument": ARGUMENT_CASES,
    "method": METHOD_CASES,
    "data": DATA_CASES,
    "model": MODEL_CASES,
    "run_folder": RUN_FOLDER_CASES,
    "checkpoint": CHECKPOINT_CASES,
    "analysis": ANALYSIS_CASES,
    "prepare": PREPARE_CASES,
    "benchmark": BENCHMARK_CASES,
}
CASES = [
    pytest.param(
        argv,
        message,
        id=f"{area}-{number:02d}",
        marks=[pytest.mark.xfail(strict=True, reason=reason)] if reason else [],
    )
    for area, cases in AREAS.items()
    for number, (argv, message, reason) in enumerate(cases)
]


def snapshot(folder):
    """Every file under ``folder`` with a digest of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("argv, message", CASES)
def test_bad_input(files, tmp_path, capsys, argv, message):
    run = tmp_path / "run"
    if any("{run}" in part for part in argv):
        shutil.copytree(files / "run", run)
    argv = [part.format(root=files, run=run, out=tmp_path / "out") for part in argv]
    if argv[0] == "train" and "--out" not in argv:
        # Defaults first, so the case's own options win; a config file keeps its own settings.
        extra = SMALL_DATA if "--config" in argv else TINY
        argv = ["train", "--out", str(tmp_path / "out"), *extra, *argv[1:]]
    before, run_before = snapshot(files), snapshot(run) if run.exists() else None
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("avbalance: error: ") and "\n" not in err, err
    assert message.format(root=files) in err, err
    assert "Traceback" not in captured.err + captured.out and "executed" not in captured.out
    assert snapshot(files) == before  # nothing that existed was changed, nothing added
    assert run_before is None or snapshot(run) == run_before
    assert not (tmp_path / "out").exists()  # no half-made output folder


def test_the_table_is_large():
    assert len(CASES) >= 120


def test_debug_shows_the_traceback(files, tmp_path):
    with pytest.raises(Exception, match="not a UTF-8 text file"):
        main(["--debug", "train", "--out", str(tmp_path / "out"), "--config", str(files / "latin1.yaml")])
