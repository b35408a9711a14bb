"""The non-finite guard: NaN/Inf steps are skipped and counted, or stop training."""

import json

import torch

from avbalance.cli import main
from avbalance.methods import registry
from avbalance.methods.ogm_ge import OGMGE

SMALL = (
    "--epochs 2 --batch-size 32 --set data.options.train_size=200 --set data.options.test_size=40 "
    "--set trainer.progress_bar=false"
).split()


class NaNEveryThirdStep(OGMGE):
    """OGM-GE whose loss is NaN on every third step."""

    name = "test_nan_steps"

    def __init__(self) -> None:
        super().__init__(alpha=0.5)
        self.calls = 0

    def loss(self, output, batch):
        loss = super().loss(output, batch)
        self.calls += 1
        return loss * float("nan") if self.calls % 3 == 0 else loss


def _register():
    registry.register_method(NaNEveryThirdStep)


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    _register()
    try:
        out = tmp_path / "skip"
        assert main(["train", "--method", "test_nan_steps", "--out", str(out), *SMALL]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["skipped_steps"] == 3  # 2 epochs x 5 batches, NaN on the 3rd, 6th and 9th
        state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
        history = json.loads((out / "history.json").read_text())
        assert history[-1]["train/skipped_steps"] == metrics["skipped_steps"]
    finally:
        registry.METHODS.remove("test_nan_steps")


def test_nonfinite_stop_mode_gives_one_line(tmp_path, capsys):
    _register()
    try:
        code = main(
            [
                "train",
                "--method",
                "test_nan_steps",
                "--out",
                str(tmp_path / "stop"),
                "--set",
                "trainer.nonfinite=stop",
                *SMALL,
            ]
        )
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0
        assert err.startswith("avbalance: error: non-finite gradients at epoch 0, step 2;")
    finally:
        registry.METHODS.remove("test_nan_steps")
