"""The engine's fast paths: no host synchronisation per training step, frames normalised per batch
on the device, ``data.num_workers=auto``, channels-last convolutions, evaluation under inference
mode, deterministic runs, the fused optimizer's device-side skip and ``trainer.compile``."""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fixture_datasets import make_cremad, write_tone_video
from fixture_media import write_video
from lightning.pytorch.callbacks import Callback
from prep_helpers import prepare

from avb_testing import DEVICES, forbid_host_sync, tiny_batch, tiny_spec
from avbalance.data import build_dataset
from avbalance.data.datasets.cached import uint8_frames
from avbalance.data.prepare.audio import NoAudioTrack, audio_from_frames, read_audio
from avbalance.data.prepare.video import read_video_frames, read_video_with_audio
from avbalance.engine.callbacks import EpochHistory, NonFiniteGuard, skips_on_device
from avbalance.engine.config import DataConfig, auto_workers, load_config
from avbalance.engine.datamodule import BalancedDataModule, FrameNormaliser
from avbalance.engine.module import BalancedModule, channels_last_is_safe, compiles_on, to_channels_last
from avbalance.engine.optim import fused_sgd, memory_order_views
from avbalance.engine.run import build_run, build_trainer
from avbalance.errors import ConfigError
from avbalance.models import build_model

SMALL_SYNTHETIC = {"train_size": 96, "test_size": 32}


def synthetic_config(tmp_path, method: str = "ogm_ge", *overrides: str):
    return load_config(
        overrides=[
            f"out={tmp_path / 'run'}",
            f"method.name={method}",
            "trainer.epochs=1",
            "data.batch_size=16",
            "trainer.progress_bar=false",
            "trainer.accelerator=cpu",
            "trainer.log_every_n_steps=1000",
            *(f"data.options.{key}={value}" for key, value in SMALL_SYNTHETIC.items()),
            *overrides,
        ]
    )


class Probe(Callback):
    """Makes every tensor -> Python conversion raise from the start to the end of training batches
    1-3 (forward, loss, backward, the guard, the method's gradient work, the optimizer step), and
    records whether validation and test batches run under inference mode."""

    def __init__(self) -> None:
        self.patch, self.checked, self.inference = None, 0, {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None:
        if 1 <= batch_idx <= 3:
            self.patch = forbid_host_sync()
            self.patch.start()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        if self.patch is not None:
            self.patch.stop()
            self.patch, self.checked = None, self.checked + 1

    def on_validation_batch_start(self, trainer, module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.inference[trainer.state.fn.value] = (torch.is_inference_mode_enabled(), torch.is_grad_enabled())

    def on_test_batch_start(self, trainer, module, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.inference["test"] = (torch.is_inference_mode_enabled(), torch.is_grad_enabled())


def fit_with(config, *callbacks: Callback):
    """``config`` fitted with the engine's guard and history plus ``callbacks``; the trainer and run."""
    run = build_run(config)
    guard = NonFiniteGuard(config.trainer.nonfinite, config.trainer.precision)
    trainer = build_trainer(config, run.method, config.out, [guard, EpochHistory(guard), *callbacks], loggers=[])
    trainer.fit(run.module, datamodule=run.datamodule)
    return trainer, run, guard


@pytest.mark.parametrize("method", ["baseline", "ogm_ge"])
def test_training_steps_never_wait_for_the_device(tmp_path, method):
    probe = Probe()
    trainer, run, guard = fit_with(synthetic_config(tmp_path, method), probe)
    assert probe.checked == 3  # three whole steps ran with every conversion refused
    assert skips_on_device(trainer.optimizers[0], "32-true")  # the guard checked without a host sync
    assert guard.skipped_steps == 0
    trainer.validate(run.module, datamodule=run.datamodule, verbose=False)
    trainer.test(run.module, datamodule=run.datamodule, verbose=False)
    # evaluation runs under inference mode; validation inside fit without gradients (Lightning keeps
    # inference tensors out of training)
    assert probe.inference == {"fit": (False, False), "validate": (True, False), "test": (True, False)}


@pytest.mark.parametrize("device", DEVICES)
def test_a_skipped_step_leaves_parameters_and_momentum_unchanged_on_the_device(device):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).to(device)
    optimizer = fused_sgd(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model(torch.randn(4, 3, device=device)).sum().backward()
    optimizer.step()  # one real step: momentum buffers hold the gradient
    before = [p.detach().clone() for p in model.parameters()]
    buffers = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    guard = NonFiniteGuard("skip")
    module = SimpleNamespace(parameters=model.parameters, device=torch.device(device))  # what the guard reads
    model.weight.grad.fill_(float("nan"))
    with forbid_host_sync():
        guard.on_before_optimizer_step(None, module, optimizer)
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(torch.equal(optimizer.state[p]["momentum_buffer"], b) for p, b in zip(model.parameters(), buffers))
    assert guard.skipped_steps == 1
    model.zero_grad()
    model(torch.randn(4, 3, device=device)).sum().backward()
    guard.on_before_optimizer_step(None, module, optimizer)
    optimizer.step()
    assert guard.skipped_steps == 1 and not torch.equal(before[0], model.weight)


def test_fused_sgd_matches_torch_sgd_when_a_parameter_gets_its_first_gradient_late():
    torch.manual_seed(0)
    reference, fused = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    fused.load_state_dict(reference.state_dict())
    optimizers = [
        torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4),
        fused_sgd(fused.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4),
    ]
    for step in range(3):
        gradients = [torch.randn(2, 3), torch.randn(2)]
        for model, optimizer in zip((reference, fused), optimizers):
            model.weight.grad = gradients[0].clone()
            model.bias.grad = gradients[1].clone() if step > 0 else None  # the bias starts at step 1
            optimizer.step()
    assert optimizers[1].param_groups[0]["fused"]
    torch.testing.assert_close(fused.state_dict(), reference.state_dict(), rtol=0, atol=1e-7)


def old_normalisation(frames: np.ndarray, mean, std, to_rgb: bool = False) -> np.ndarray:
    """The per-sample formula the loader used: ``(x / 255 - mean) / std`` per channel of ``(C, K, H, W)``."""
    values = (frames.astype(np.float32) / np.float32(255) - np.float32(mean)[:, None, None, None]) / np.float32(std)[
        :, None, None, None
    ]
    return np.repeat(values, 3, axis=0) if to_rgb else values


def test_frame_normaliser_equals_the_per_sample_formula():
    generator = torch.Generator().manual_seed(0)
    colour = torch.randint(0, 256, (4, 3, 2, 5, 5), dtype=torch.uint8, generator=generator)
    grey = torch.randint(0, 256, (4, 1, 2, 5, 5), dtype=torch.uint8, generator=generator)
    flow = torch.randint(0, 256, (4, 2, 2, 5, 5), dtype=torch.uint8, generator=generator)
    audio = torch.randn(4, 1, 8, 8, generator=generator)
    imagenet, mnist = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.1307,), (0.3081,))
    normaliser = FrameNormaliser({"visual": (*imagenet, False), "grey": (*mnist, True), "flow": (*mnist, False)})
    batch = normaliser({"visual": colour, "grey": grey, "flow": flow, "audio": audio})
    for index in range(4):
        expected = old_normalisation(colour[index].numpy(), *imagenet)
        np.testing.assert_allclose(batch["visual"][index].numpy(), expected, rtol=0, atol=1e-6)
        expected_grey = old_normalisation(grey[index].numpy(), *mnist, to_rgb=True)
        np.testing.assert_allclose(batch["grey"][index].numpy(), expected_grey, rtol=0, atol=1e-6)
        expected_flow = old_normalisation(flow[index].numpy(), *mnist)  # one statistic for both channels
        np.testing.assert_allclose(batch["flow"][index].numpy(), expected_flow, rtol=0, atol=1e-6)
    assert batch["visual"].dtype == torch.float32 and batch["audio"] is audio
    assert normaliser(batch) is batch  # floats pass unchanged


@pytest.fixture(scope="module")
def cremad_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cremad")
    raw = make_cremad(root / "raw")
    assert prepare("cremad", raw, root / "cache", "--size", "16") == 0
    return root / "cache"


def test_loaders_serve_uint8_frames_that_normalise_to_the_per_sample_floats(cremad_cache):
    splits = build_dataset("cremad", str(cremad_cache), frames=2)
    dataset = splits.train
    statistics = dataset.frame_normalisation()
    assert set(statistics) == {"visual"}
    for index in range(3):
        torch.manual_seed(index)  # the same crop, flip and frames both times
        floats = dataset[index]["visual"]
        torch.manual_seed(index)
        with uint8_frames():
            raw = dataset[index]["visual"]
        assert raw.dtype == torch.uint8 and raw.shape == floats.shape
        mean, std, _ = statistics["visual"]
        np.testing.assert_allclose(floats.numpy(), old_normalisation(raw.numpy(), mean, std), rtol=0, atol=1e-6)
        batch = FrameNormaliser(statistics)({"visual": raw[None]})
        np.testing.assert_allclose(batch["visual"][0].numpy(), floats.numpy(), rtol=0, atol=1e-6)


def test_the_data_module_normalises_its_loaders_batches_and_datasets_stay_float(cremad_cache):
    config = DataConfig(dataset="cremad", root=str(cremad_cache), options={"frames": 2}, batch_size=4, num_workers=0)
    datamodule = BalancedDataModule(config)
    batch = next(iter(datamodule.val_dataloader()))
    assert batch["visual"].dtype == torch.uint8
    normalised = datamodule.on_after_batch_transfer(batch, 0)
    assert normalised["visual"].dtype == torch.float32
    torch.testing.assert_close(normalised["visual"][0], datamodule.val_set[0]["visual"], rtol=0, atol=1e-6)
    assert datamodule.train_set[0]["visual"].dtype == torch.float32  # analysis and methods read datasets directly
    torch.testing.assert_close(normalised["audio"], batch["audio"])


def test_num_workers_auto_resolves_from_the_cores():
    assert [auto_workers(cores) for cores in (1, 2, 4, 9, 64)] == [0, 1, 3, 8, 8]
    assert DataConfig().num_workers == "auto"
    assert DataConfig().loader_workers() == auto_workers()
    assert DataConfig(num_workers=3).loader_workers() == 3
    assert DataConfig().loader_workers(deterministic=True) == 0  # exact resume is proven in-process
    assert DataConfig(num_workers=3).loader_workers(deterministic=True) == 3
    with pytest.raises(ConfigError, match="data.num_workers"):
        load_config(overrides=["data.num_workers=-1"])
    with pytest.raises(ConfigError, match="data.num_workers"):
        load_config(overrides=["data.num_workers=many"])


def test_channels_last_model_gives_the_same_outputs():
    torch.manual_seed(0)
    spec = tiny_spec()
    contiguous = build_model(spec).eval()
    fast = build_model(spec).eval()
    fast.load_state_dict(contiguous.state_dict())
    to_channels_last(fast)
    convolutions = [m for m in fast.modules() if isinstance(m, torch.nn.Conv2d)]
    safe = [c for c in convolutions if channels_last_is_safe(c)]
    assert safe and all(channels_last_strides(c.weight) for c in safe)
    batch = tiny_batch()
    with torch.no_grad():
        expected, got = contiguous(batch), fast(batch)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-5)
    for modality, logits in expected.unimodal_logits.items():
        torch.testing.assert_close(got.unimodal_logits[modality], logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("conv", "safe"),
    [
        (torch.nn.Conv2d(8, 16, 1, stride=2), False),  # a ResNet shortcut at width 8
        (torch.nn.Conv2d(15, 16, 1, stride=(1, 2)), False),
        (torch.nn.Conv2d(32, 32, 1, stride=2, groups=4), False),  # 8 input channels per group
        (torch.nn.Conv2d(16, 32, 1, stride=2), True),
        (torch.nn.Conv2d(8, 16, 1, stride=1), True),
        (torch.nn.Conv2d(8, 16, 3, stride=2), True),
    ],
)
def test_channels_last_leaves_out_small_strided_pointwise_convolutions(conv, safe):
    assert channels_last_is_safe(conv) is safe
    model = torch.nn.Sequential(torch.nn.Conv2d(3, conv.in_channels, 3), conv)
    to_channels_last(model)
    to_channels_last(model)  # Lightning configures the model again before each fit, validate or test
    assert channels_last_strides(model[0].weight)
    assert channels_last_strides(conv.weight) is safe  # (a 1x1 kernel's layout shows in its strides only)
    assert len(conv._forward_pre_hooks) == (0 if safe else 1)
    seen = []
    conv.register_forward_hook(lambda module, args, output: seen.append(args[0].is_contiguous()))
    model(torch.randn(2, 3, 12, 12).to(memory_format=torch.channels_last))
    assert seen == [not safe]  # an unsafe convolution gets its input in the plain layout


def channels_last_strides(tensor: torch.Tensor) -> bool:
    return tensor.stride() == torch.empty(tensor.shape, memory_format=torch.channels_last).stride()


# oneDNN's 1x1 strided backward with a channels-last input of 8 channels writes past its workspace
# (uxlfoundation/oneDNN#6035): a crash, or wrong weight gradients, at this size. In a child process,
# so that a regression fails this test instead of killing the session.
SHORTCUT_GRADIENTS = """
import torch
from avbalance.engine.module import to_channels_last
torch.manual_seed(0)
conv = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 1, stride=2, bias=False))
reference = torch.nn.Conv2d(8, 16, 1, stride=2, bias=False).double()
reference.weight.data.copy_(conv[0].weight.data)
to_channels_last(conv)
for step in range(10):
    x = torch.randn(16, 8, 56, 56)
    out = conv(x.to(memory_format=torch.channels_last).requires_grad_())
    grad = torch.randn_like(out)
    out.backward(grad)
    reference(x.double()).backward(grad.double())
    torch.testing.assert_close(conv[0].weight.grad.double(), reference.weight.grad, rtol=1e-4, atol=1e-4)
    conv.zero_grad()
    reference.zero_grad()
print("gradients match")
"""


def test_a_small_strided_shortcut_trains_correctly_after_to_channels_last():
    done = subprocess.run([sys.executable, "-c", SHORTCUT_GRADIENTS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "gradients match" in done.stdout, f"exit {done.returncode}: {done.stderr[-2000:]}"


def test_deterministic_cpu_runs_are_bit_identical(tmp_path):
    states = []
    for attempt in range(2):
        config = synthetic_config(tmp_path / str(attempt), "ogm_ge", "trainer.deterministic=true")
        _, run, _ = fit_with(config)
        states.append({k: v.clone() for k, v in run.module.model.state_dict().items()})
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])


def test_compile_is_for_cuda_and_warns_elsewhere(tmp_path):
    assert compiles_on(torch.device("cuda"))
    with pytest.warns(UserWarning, match="trainer.compile=true: torch.compile is used on CUDA only"):
        assert not compiles_on(torch.device("cpu"))
    config = synthetic_config(tmp_path, "baseline", "trainer.compile=true")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, run, _ = fit_with(config)
    assert any("torch.compile is used on CUDA only" in str(w.message) for w in caught)
    assert run.module.compile_model and not run.module.compiled


def test_bf16_mixed_precision_trains_without_host_syncs(tmp_path):
    probe = Probe()
    config = synthetic_config(tmp_path, "ogm_ge", "trainer.precision=bf16-mixed")
    trainer, run, guard = fit_with(config, probe)
    assert probe.checked == 3 and guard.skipped_steps == 0
    assert skips_on_device(trainer.optimizers[0], "bf16-mixed")
    assert not skips_on_device(trainer.optimizers[0], "16-mixed")  # the AMP grad scaler owns found_inf there
    assert all(torch.isfinite(p).all() for p in run.module.model.parameters())


def test_fused_sgd_steps_a_channels_last_parameter_with_differently_laid_out_tensors():
    # torch's fused kernel reads flat memory: a contiguous gradient or momentum buffer of a
    # channels-last weight would be read in the wrong order
    torch.manual_seed(0)
    weight, gradient, buffer = torch.randn(4, 3, 3, 3), torch.randn(4, 3, 3, 3), torch.randn(4, 3, 3, 3)
    reference = torch.nn.Parameter(weight.clone())
    plain = torch.optim.SGD([reference], lr=0.1, momentum=0.9, weight_decay=1e-4)
    plain.state[reference]["momentum_buffer"] = buffer.clone()
    reference.grad = gradient.clone()
    plain.step()
    fast = torch.nn.Parameter(weight.clone().contiguous(memory_format=torch.channels_last))
    fused = fused_sgd([fast], lr=0.1, momentum=0.9, weight_decay=1e-4)
    fused.state[fast]["momentum_buffer"] = buffer.clone()  # contiguous, as from an older checkpoint
    fast.grad = gradient.clone()  # contiguous, as a method may assign it
    fused.step()
    torch.testing.assert_close(fast.detach(), reference.detach(), rtol=0, atol=1e-6)
    assert fused.state[fast]["momentum_buffer"].is_contiguous(memory_format=torch.channels_last)


def test_memory_order_views_make_channels_last_tensors_row_major_and_leave_mixed_layouts_alone():
    weight = torch.randn(8, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(8, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    views = memory_order_views(weight, grad)
    assert [v.shape for v in views] == [(8, 5, 5, 3)] * 2
    assert all(v.is_contiguous() and v.data_ptr() == t.data_ptr() for v, t in zip(views, (weight, grad)))
    assert torch.equal(views[1], grad.permute(0, 2, 3, 1))
    plain = torch.randn(8, 3, 5, 5)
    assert memory_order_views(plain)[0].shape == plain.shape
    mixed = (weight, plain)  # different layouts: no one permutation makes both row-major
    assert all(v is t for v, t in zip(memory_order_views(*mixed), mixed))


def test_fused_sgd_copies_no_channels_last_tensor_and_matches_torchs_fused_step_bit_for_bit():
    # torch's CPU kernel copies a gradient that is not row-major contiguous (and never reads the
    # copy); the views of memory_order_views avoid that copy
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.Conv2d(16, 8, 3))
    reference = copy.deepcopy(model)
    for m in (model, reference):
        m.to(memory_format=torch.channels_last)
    ours = fused_sgd(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    theirs = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True)
    for step in range(3):
        x = torch.randn(2, 3, 12, 12).contiguous(memory_format=torch.channels_last)
        for m, optimizer in ((model, ours), (reference, theirs)):
            optimizer.zero_grad()
            m(x).square().mean().backward()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            ours.step()
        theirs.step()
        copies = [e.name for e in profile.events() if e.name in ("aten::copy_", "aten::clone", "aten::contiguous")]
        assert copies == [], f"step {step}"
    for name, parameter in reference.named_parameters():
        assert torch.equal(model.get_parameter(name), parameter), name
        assert torch.equal(
            ours.state[model.get_parameter(name)]["momentum_buffer"], theirs.state[parameter]["momentum_buffer"]
        )


def test_video_and_audio_from_one_opening_equal_two_separate_reads(tmp_path):
    video = write_tone_video(tmp_path / "clip.flv", 1.5, fps=10, index=2, rate=22050)  # flv: duration from packets
    frames, times, audio = read_video_with_audio(video, 5, 16, start=0.2, end=1.2)
    expected_frames, expected_times = read_video_frames(video, 5, 16, start=0.2, end=1.2)
    np.testing.assert_array_equal(frames, expected_frames)
    np.testing.assert_array_equal(times, expected_times)
    wave = audio_from_frames(audio, video, 16000, 0.2, 1.2)
    np.testing.assert_array_equal(wave, read_audio(video, 16000, 0.2, 1.2))
    assert len(wave) == 16000
    silent = write_video(tmp_path / "silent.mp4", seconds=1.0, fps=10)
    assert read_video_with_audio(silent, 5, 16)[2] is None
    with pytest.raises(NoAudioTrack, match="no audio track"):
        audio_from_frames(None, silent, 16000)


def test_the_engine_matches_layouts_after_a_closure_has_computed_the_gradients():
    # Lightning steps with a closure: step pre-hooks run before it, so the module matches layouts
    # in on_before_optimizer_step, which Lightning calls inside the closure after backward.
    torch.manual_seed(0)
    weight, gradient = torch.randn(4, 3, 3, 3), torch.randn(4, 3, 3, 3)
    reference = torch.nn.Parameter(weight.clone())
    reference.grad = gradient.clone()
    torch.optim.SGD([reference], lr=0.1).step()
    fast = torch.nn.Parameter(weight.clone().contiguous(memory_format=torch.channels_last))
    optimizer = fused_sgd([fast], lr=0.1, momentum=0.0, weight_decay=0.0)
    module = SimpleNamespace(
        _gradient_hook=None, config=SimpleNamespace(trainer=SimpleNamespace(gradient_clip_val=None))
    )

    def closure():
        fast.grad = gradient.clone()  # contiguous: a method's own gradient
        BalancedModule.on_before_optimizer_step(module, optimizer)

    optimizer.step(closure)
    torch.testing.assert_close(fast.detach(), reference.detach(), rtol=0, atol=1e-6)


def test_samples_are_read_on_one_thread_and_the_thread_count_comes_back(cremad_cache, monkeypatch):
    """A sample's tensor work runs on one intra-op thread (a pool waiting for busy cores stalls the
    training process's reading); the caller's thread count is restored afterwards, also on error."""
    from avbalance.data.datasets import cached

    seen = []
    resize = cached.resize_frames

    def spying_resize(frames, size):
        seen.append(torch.get_num_threads())
        return resize(frames, size)

    monkeypatch.setattr(cached, "resize_frames", spying_resize)
    dataset = build_dataset("cremad", str(cremad_cache), frames=2, image_size=12).train
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        dataset[0]
        assert seen and set(seen) == {1} and torch.get_num_threads() == 2
        monkeypatch.setattr(cached, "resize_frames", lambda frames, size: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            dataset[1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
