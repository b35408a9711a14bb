"""The GPU fast path on a CUDA device: every method trains through ``avbalance train`` in bf16-mixed
precision with channels-last convolutions; a compiled model (``trainer.compile``) trains and computes
what the eager one does; OGM scales *unscaled* gradients under fp16's grad scaler; the fused SGD step
matches torch's SGD on a channels-last model; loaders pin their batches, which arrive on the GPU
normalised there. (OGM-GE's official noise and the fused step's device-side skip are tested on the
GPU by their CPU tests' CUDA cases, in test_ogm.py and test_speed_paths.py.)

Every test needs a CUDA GPU and is skipped without one (as in CI)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from fixture_datasets import make_cremad
from lightning.pytorch.callbacks import Callback
from prep_helpers import prepare

from avb_testing import SMALL_DATA, tiny_batch, tiny_spec, train_briefly
from avbalance.engine.callbacks import skips_on_device
from avbalance.engine.config import load_config
from avbalance.engine.epoch_data import to_device
from avbalance.engine.module import to_channels_last
from avbalance.engine.optim import fused_sgd
from avbalance.methods import method_names
from avbalance.models import build_model, load_model
from test_ogm import official_two_modality
from test_speed_paths import Probe, fit_with, synthetic_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")

CUDA = torch.device("cuda")
ON_GPU = ("--set", "trainer.accelerator=gpu", "--set", "trainer.devices=1")


def tiny_gpu_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(tiny_spec()).to(CUDA)
    to_channels_last(model)
    return model


@pytest.mark.filterwarnings("ignore:Average precision score")  # a class absent from the 16 test samples
@pytest.mark.parametrize("name", method_names())
def test_every_method_trains_on_the_gpu_in_bf16_mixed(name, tmp_path, capsys):
    code = train_briefly(name, tmp_path / "run", *ON_GPU, "--set", "trainer.precision=bf16-mixed")
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert metrics["samples"] == SMALL_DATA["test_size"] and 0.0 <= metrics["acc"] <= 1.0
    trained = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(p).all() for p in trained.parameters())


@pytest.mark.parametrize("name", ["baseline", "ogm_ge", "mmcosine"])
def test_a_compiled_model_trains_without_host_syncs_and_computes_what_the_eager_one_does(name, tmp_path):
    probe = Probe()
    config = synthetic_config(tmp_path, name, "trainer.accelerator=gpu", "trainer.devices=1", "trainer.compile=true")
    trainer, run, guard = fit_with(config, probe)
    model = run.module.model
    assert run.module.compiled and probe.checked == 3 and guard.skipped_steps == 0
    assert skips_on_device(trainer.optimizers[0], "32-true")
    batch = next(iter(run.datamodule.val_dataloader()))
    batch = run.datamodule.batch_transform(to_device(batch, CUDA))
    with torch.inference_mode():
        compiled, eager = model(batch), model._call_impl(batch)  # _call_impl: the module's own forward
    torch.testing.assert_close(compiled.logits, eager.logits, rtol=1e-4, atol=1e-4)


class GradientsSeenByTheMethod(Callback):
    """Wraps the method's ``after_backward`` during training and keeps, for the first step whose
    gradients are finite (fp16's first steps may overflow and be skipped), the batch, the
    parameters, the gradients the method receives, those it leaves and its coefficients."""

    def __init__(self) -> None:
        self.seen: dict = {}

    def on_train_start(self, trainer, module) -> None:
        method, original = module.method, module.method.after_backward

        def recording(model, output, batch):
            grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
            first = not self.seen and all(torch.isfinite(g).all() for g in grads.values())
            if first:
                self.seen = {
                    "batch": {key: value.clone() for key, value in batch.items()},
                    "parameters": copy.deepcopy(model.state_dict()),
                    "grads": grads,
                }
            original(model, output, batch)
            if first:
                self.seen["modulated"] = {name: p.grad.clone() for name, p in model.named_parameters()}
                self.seen["coefficients"] = {m: method.logs()[f"coeff/{m}"].item() for m in model.modalities}

        method.after_backward = recording

    def on_train_end(self, trainer, module) -> None:
        del module.method.after_backward  # the class's own method again


def test_ogm_modulates_unscaled_gradients_under_fp16_grad_scaling(tmp_path):
    """With ``16-mixed`` the loss is scaled (by 2**16 at first) for backward; the method sees the
    gradients unscaled (the size a float32 backward of the same batch gives) and scales each
    encoder's kernels by the official coefficient of the batch."""
    recorder = GradientsSeenByTheMethod()
    config = synthetic_config(
        tmp_path, "ogm", "trainer.accelerator=gpu", "trainer.devices=1", "trainer.precision=16-mixed",
        "method.params.alpha=0.5",
    )  # fmt: skip
    _, run, _ = fit_with(config, recorder)
    seen = recorder.seen
    assert seen, "no training step had finite gradients"
    reference = copy.deepcopy(run.module.model).float().train()
    reference.load_state_dict(seen["parameters"])
    output = reference(seen["batch"])
    F.cross_entropy(output.logits, seen["batch"]["label"]).backward()
    expected = official_two_modality(
        output.unimodal_logits["audio"].detach().cpu(),
        output.unimodal_logits["visual"].detach().cpu(),
        seen["batch"]["label"].cpu(),
        0.5,
    )
    for modality, coefficient in zip(("audio", "visual"), expected):
        assert seen["coefficients"][modality] == pytest.approx(coefficient, abs=2e-3)
    kernels = 0
    for name, p in reference.named_parameters():
        if not name.startswith("encoders.") or p.dim() != 4:
            continue
        got = seen["grads"][name]
        ratio = (got.norm() / p.grad.norm()).item()
        assert 0.9 < ratio < 1.1, f"{name}: fp16-mixed gradient / float32 gradient = {ratio} (still scaled?)"
        k = seen["coefficients"][name.split(".")[1]]
        torch.testing.assert_close(seen["modulated"][name], got * k)
        kernels += 1
    assert kernels >= 4


def test_fused_sgd_on_the_gpu_matches_torch_sgd_on_a_channels_last_model():
    reference, fused = tiny_gpu_model(), tiny_gpu_model()
    optimizers = [
        torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=False),
        fused_sgd(fused.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4),
    ]
    assert optimizers[1].param_groups[0]["fused"]
    for step in range(3):
        batch = to_device(tiny_batch(seed=step), CUDA)
        for model, optimizer in zip((reference, fused), optimizers):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(batch).logits, batch["label"]).backward()
            optimizer.step()
    for a, b in zip(reference.parameters(), fused.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


class BatchesOnTheGpu(Callback):
    """Records, for the first training batch, where its tensors are and whether the loader pins memory."""

    def __init__(self) -> None:
        self.devices: set[str] = set()
        self.pinned: bool | None = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None:
        if batch_idx == 0:
            self.devices = {value.device.type for value in batch.values()}
            self.pinned = trainer.train_dataloader.pin_memory


def test_loaders_pin_their_batches_which_arrive_normalised_on_the_gpu(tmp_path):
    raw = make_cremad(tmp_path / "raw")
    assert prepare("cremad", raw, tmp_path / "cache", "--size", "16") == 0
    config = load_config(
        overrides=[
            f"out={tmp_path / 'run'}", "method.name=baseline", "trainer.epochs=1", "trainer.progress_bar=false",
            "trainer.accelerator=gpu", "trainer.devices=1", "data.dataset=cremad", f"data.root={tmp_path / 'cache'}",
            "data.options.frames=2", "data.batch_size=4", "data.num_workers=1",
        ]
    )  # fmt: skip
    batches = BatchesOnTheGpu()
    _, run, _ = fit_with(config, batches)
    assert batches.pinned is True and batches.devices == {"cuda"}
    loader = run.datamodule.val_dataloader()
    raw_batch = next(iter(loader))
    assert raw_batch["visual"].dtype == torch.uint8 and raw_batch["visual"].is_pinned()
    on_device = run.datamodule.batch_transform(to_device(raw_batch, CUDA))
    on_host = run.datamodule.batch_transform(raw_batch)
    assert on_device["visual"].dtype == torch.float32 and on_device["visual"].device.type == "cuda"
    torch.testing.assert_close(on_device["visual"].cpu(), on_host["visual"], rtol=0, atol=1e-6)
