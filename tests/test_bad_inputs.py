"""A table of user mistakes: each gives its one-line message, exit status 2 and no traceback."""

import pickle

import pytest
import torch

from avbalance.cli import main

SMALL_DATA = ["--set", "data.options.train_size=120", "--set", "data.options.test_size=30",
              "--set", "trainer.progress_bar=false"]
TINY = ["--epochs", "1", "--batch-size", "32", *SMALL_DATA]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Files the mistakes refer to: configs, checkpoints, weights."""
    root = tmp_path_factory.mktemp("inputs")
    run = root / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
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
    texts = {
        "syntax.yaml": "optim: {lr: [0.1\n",
        "list.yaml": "- a\n- b\n",
        "section.yaml": "optimizer: {lr: 0.1}\n",
        "key.yaml": "optim: {learning_rate: 0.1}\n",
        "type.yaml": "trainer: {epochs: ten}\n",
        "range.yaml": "data: {batch_size: 0}\n",
        "fraction.yaml": "data: {val_fraction: 1.5}\n",
        "optimizer.yaml": "optim: {name: rmsprop}\n",
    }
    for name, text in texts.items():
        (root / name).write_text(text)
    return root


CASES = [
    # configs
    (["train", "--config", "{root}/syntax.yaml"], "syntax.yaml: line 2 invalid YAML"),
    (["train", "--config", "{root}/list.yaml"], "list.yaml: a config file must be a mapping of sections"),
    (["train", "--config", "{root}/section.yaml"], "section.yaml: unknown key 'optimizer'"),
    (["train", "--config", "{root}/key.yaml"], "key.yaml: unknown key 'optim.learning_rate'"),
    (["train", "--config", "{root}/type.yaml"], "type.yaml: trainer.epochs: Input should be a valid integer"),
    (["train", "--config", "{root}/range.yaml"], "range.yaml: data.batch_size: Input should be greater than or equal to 1"),
    (["train", "--config", "{root}/fraction.yaml"], "fraction.yaml: data.val_fraction: Input should be less than 1"),
    (["train", "--config", "{root}/optimizer.yaml"], "optim.name: Input should be 'sgd', 'adam' or 'adamw'"),
    (["train", "--config", "{root}/missing.yaml"], "missing.yaml: no such config file"),
    # command-line arguments
    (["train", "--epochs", "abc"], "argument --epochs: invalid int value: 'abc'"),
    (["trian"], "invalid choice: 'trian'"),
    (["test"], "the following arguments are required: --ckpt"),
    (["train", "--method", "nope"], "unknown method 'nope'; choose one of: "),
    (["train", "--fusion", "mlp"], "unknown fusion 'mlp'; choose one of: sum, concat"),
    (["train", "--alpha", "0.3"], "method 'baseline' has no hyperparameter 'alpha'"),
    (["train", "--set", "optim.lr"], "override 'optim.lr' is not of the form key=value"),
    (["train", "--set", "optim.lr=abc"], "config: optim.lr: Input should be a valid number"),
    (["train", "--method", "ogm_ge", "--alpha", "-1"], "method 'ogm_ge': alpha must be >= 0, got -1.0"),
    (["train", "--method", "mmcosine", "--scaling", "0"], "method 'mmcosine': scaling must be > 0"),
    (["train", "--method", "ogm", "--set", "method.params.modulate=bias"], "modulate: Input should be 'conv', 'weights' or 'all'"),
    (["train", "--accelerator", "gpu"], "trainer settings: "),
    (["train", "--strategy", "foo"], "trainer settings: You selected an invalid strategy name"),
    (["train", "--resume", "{root}/none.ckpt"], "none.ckpt: no such checkpoint to resume from"),
    # data and model combinations
    (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'; choose one of: "),
    (["train", "--modalities", "text"], "dataset 'synthetic' has no modality 'text'; its modalities are: audio, visual"),
    (["train", "--set", "data.options.test_size=0"], "the test split is empty"),
    (["train", "--set", "data.options.colour=red"], "dataset 'synthetic' has no option 'colour'"),
    (["train", "--fusion", "film", "--set", "data.options.flow_strength=0.3"],
     "fusion 'film' supports exactly 2 modalities, got 3 (audio, visual, flow)"),
    (["train", "--method", "ogm", "--modalities", "visual"], "method 'ogm' needs 2+ modalities, got 1 (visual)"),
    (["train", "--method", "mmcosine", "--fusion", "gated"], "method 'mmcosine' needs a head split in per-modality blocks"),
    (["train", "--set", "model.pretrained.audio={root}/bad_weights.pt"],
     "bad_weights.pt: pretrained weights do not fit the audio encoder: 1 with another shape: conv1.weight"),
    (["train", "--set", "model.pretrained.text={root}/bad_weights.pt"], "model.pretrained: no 'text' encoder in this model"),
    # checkpoints
    (["test", "--ckpt", "{root}/absent.ckpt"], "absent.ckpt: no such checkpoint file"),
    (["test", "--ckpt", "{root}/garbage.ckpt"], "garbage.ckpt: not a readable PyTorch checkpoint"),
    (["test", "--ckpt", "{root}/evil.ckpt"], "evil.ckpt: refused to load: it contains objects that only arbitrary code"),
    (["test", "--ckpt", "{root}/other_shape.ckpt"], "other_shape.ckpt: does not match the model: "),
    (["test", "--ckpt", "{root}/no_config.ckpt"], "no_config.ckpt: no training config inside"),
    (["convert-checkpoint", "{root}/run/checkpoints/best.ckpt", "{root}/x.ckpt"], "no 'fusion_module.*' parameters"),
    (["probe", "--ckpt", "{root}/absent.ckpt"], "absent.ckpt"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[f"{i:02d}" for i in range(len(CASES))])
def test_bad_input(files, tmp_path, capsys, argv, message):
    argv = [part.format(root=files) for part in argv]
    if argv[0] == "train" and "--out" not in argv:
        # Defaults first, so the case's own options win; a config file keeps its own settings.
        extra = SMALL_DATA if "--config" in argv else TINY
        argv = ["train", "--out", str(tmp_path / "out"), *extra, *argv[1:]]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("avbalance: error: ") and "\n" not in err, err
    assert message.format(root=files) in err, err
    assert "Traceback" not in captured.err + captured.out and "executed" not in captured.out
    assert not (tmp_path / "out" / "checkpoints").exists()  # nothing half-done left behind


def test_the_table_is_large():
    assert len(CASES) >= 30
