"""Encoders by prefixed name (timm:, torchvision:, hf:, python:), weights files into them, frozen
encoders, learning-rate groups and OGM's tensor selection on them. Tiny models, nothing downloaded."""

import sys

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from avbalance.engine.config import load_config
from avbalance.engine.optim import build_optimizer, build_scheduler, parameter_groups
from avbalance.errors import CheckpointError, ConfigError
from avbalance.methods import get_method
from avbalance.methods.ogm import select_tensors
from avbalance.models import build_encoder, build_model, load_model, model_spec
from avbalance.models.checkpoint import save_model_checkpoint
from avbalance.models.pretrained import freeze_encoder, load_pretrained_encoder

timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'avbalance[timm]')")

TINY_VIT = {"img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 16, "num_heads": 2}
SHAPES = {"audio": (1, 16, 16), "visual": (3, 2, 16, 16)}


def tiny_vit(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_encoder("timm:vit_tiny_patch16_224", 3, **TINY_VIT)


def test_timm_resnet_folds_a_clip_over_time_and_averages_the_frames():
    encoder = build_encoder("timm:resnet18", 3).eval()
    clip = torch.randn(2, 3, 4, 16, 16)
    frames = [encoder.backbone(clip[:, :, t]) for t in range(4)]
    assert encoder.out_dim == 512
    torch.testing.assert_close(encoder(clip), torch.stack(frames).mean(dim=0))
    spectrogram = build_encoder("timm:resnet18", 1)
    assert spectrogram.backbone.conv1.in_channels == 1
    assert spectrogram(torch.randn(2, 1, 16, 16)).shape == (2, 512)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_of_a_same_config_vit_load_exactly(tmp_path, suffix):
    source, target = tiny_vit(seed=1), tiny_vit(seed=2)
    state = {k: v.contiguous() for k, v in source.backbone.state_dict().items()}  # as timm saves it
    path = tmp_path / f"vit{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    assert load_pretrained_encoder(target, path, "visual") == []
    for key, value in target.backbone.state_dict().items():
        assert torch.equal(value, state[key]), key
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(target.eval()(images), source.eval()(images))


def test_an_image_size_the_backbone_cannot_take_is_one_line_when_built():
    vit = {**TINY_VIT, "img_size": 32}
    with pytest.raises(
        ConfigError, match=r"cannot take inputs of per-sample shape \(3, 2, 16, 16\) \(.*img_size"
    ) as raised:
        build_encoder("timm:vit_tiny_patch16_224", 3, input_shape=[3, 2, 16, 16], **vit)
    assert "\n" not in str(raised.value) and raised.value.at("visual").args[0].startswith("model.encoders.visual: ")
    resnet = build_encoder("timm:resnet18", 3, input_shape=[3, 2, 16, 16])  # a CNN takes any size
    assert resnet.training  # the probe leaves the mode as it was


def test_weights_that_do_not_fit_are_reported_per_tensor(tmp_path):
    other = build_encoder("timm:vit_tiny_patch16_224", 3, **{**TINY_VIT, "embed_dim": 32})
    torch.save(other.backbone.state_dict(), tmp_path / "wide.pt")
    with pytest.raises(CheckpointError, match=r"wide.pt: pretrained weights do not fit the visual encoder: .*shape"):
        load_pretrained_encoder(tiny_vit(seed=0), tmp_path / "wide.pt", "visual")


def test_torchvision_resnet_takes_one_channel_and_loads_rgb_weights_with_their_classifier(tmp_path):
    import torchvision

    encoder = build_encoder("torchvision:resnet18", 1)
    assert encoder.backbone.conv1.in_channels == 1 and isinstance(encoder.backbone.fc, nn.Identity)
    assert encoder(torch.randn(2, 1, 32, 32)).shape == (2, encoder.out_dim) and encoder.out_dim == 512
    rgb = torchvision.models.resnet18(weights=None)  # with its 1000-class fc, as torchvision saves it
    torch.save(rgb.state_dict(), tmp_path / "resnet18.pth")
    notes = load_pretrained_encoder(encoder, tmp_path / "resnet18.pth", "audio")
    assert notes == ["audio: conv1 adapted from 3 averaged input channels"]
    torch.testing.assert_close(encoder.backbone.conv1.weight, rgb.conv1.weight.mean(dim=1, keepdim=True))
    assert torch.equal(encoder.backbone.layer4[1].conv2.weight, rgb.layer4[1].conv2.weight)


def test_torchvision_classifiers_are_removed_and_video_models_take_the_clip():
    mobilenet = build_encoder("torchvision:mobilenet_v3_small", 3)
    assert mobilenet(torch.randn(2, 3, 32, 32)).shape == (2, mobilenet.out_dim)
    video = build_encoder("torchvision:r3d_18", 3)
    assert not video.folds_time and video(torch.randn(1, 3, 4, 32, 32)).shape == (1, 512)
    with pytest.raises(ConfigError, match="classifier of torchvision architecture 'squeezenet1_0' cannot be found"):
        build_encoder("torchvision:squeezenet1_0", 3)


@pytest.fixture
def bert_folder(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (avbalance[hf])")
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_hf_text_encoder_gives_each_padded_sample_its_alone_output(bert_folder, pool):
    encoder = build_encoder(f"hf:{bert_folder}", 7, vocab_size=50, pool=pool).eval()
    assert encoder.takes_lengths and encoder.out_dim == 32
    lengths = torch.tensor([7, 3, 5])
    tokens = torch.randint(1, 50, (3, 7))
    tokens[torch.arange(7) >= lengths[:, None]] = 0  # pad id 0 at the end
    with torch.no_grad():
        padded = encoder(tokens, lengths)
        alone = torch.cat([encoder(tokens[i : i + 1, : lengths[i]], lengths[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(padded[1], encoder(tokens[1:2])[0], atol=1e-3)  # the mask matters


def test_hf_audio_encoder_takes_a_waveform_served_as_a_sequence(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (avbalance[hf])")
    config = transformers.Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20, conv_dim=(8, 8),
        conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer", vocab_size=10,
    )  # fmt: skip
    transformers.Wav2Vec2Model(config).save_pretrained(tmp_path / "wav2vec2")
    encoder = build_encoder(f"hf:{tmp_path / 'wav2vec2'}", 400).eval()
    waveforms = torch.randn(2, 400, 1)
    with torch.no_grad():
        whole, masked = encoder(waveforms, torch.tensor([400, 400])), encoder(waveforms, torch.tensor([400, 200]))
    assert whole.shape == (2, 16)
    torch.testing.assert_close(masked[0], whole[0])
    assert not torch.allclose(masked[1], whole[1])  # the second waveform's padding is masked out


def test_hf_refusals_name_the_folder(bert_folder, tmp_path):
    with pytest.raises(ConfigError, match="absent: no such model folder"):
        build_encoder(f"hf:{tmp_path / 'absent'}", 7)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"empty: not a Hugging Face model folder \(no config.json\)"):
        build_encoder(f"hf:{tmp_path / 'empty'}", 7)
    with pytest.raises(ConfigError, match="the data has 90 token ids but the model's vocabulary has 50"):
        build_encoder(f"hf:{bert_folder}", 7, vocab_size=90)
    with pytest.raises(ConfigError, match="takes no option 'dropout'; its options are: pool"):
        build_encoder(f"hf:{bert_folder}", 7, dropout=0.1)


ENCODER_FILE = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, features, hidden):
        super().__init__()
        self.net = nn.Linear(features, hidden)
        self.out_dim = hidden

    def forward(self, x):
        return self.net(x.flatten(1))


def build(input_shape, hidden=8):
    return Tiny(int(torch.tensor(input_shape).prod()), hidden)


def not_a_module(input_shape):
    return 3


def no_out_dim(input_shape):
    return nn.Identity()


value = 3
"""


@pytest.fixture
def encoder_file(tmp_path, monkeypatch):
    path = tmp_path / "my_encoders.py"
    path.write_text(ENCODER_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return path


def test_python_encoder_from_a_file_or_a_module_gets_the_input_shape(encoder_file):
    by_file = build_encoder(f"python:{encoder_file}:build", 3, input_shape=[3, 2, 4, 4], hidden=5)
    by_module = build_encoder("python:my_encoders:build", 3, input_shape=[3, 2, 4, 4])
    assert by_file.net.in_features == 96 and by_file.out_dim == 5 and by_module.out_dim == 8
    assert by_file(torch.randn(2, 3, 2, 4, 4)).shape == (2, 5)


@pytest.mark.parametrize(
    "target, message",
    [
        ("no_such_module:build", "cannot import 'no_such_module' (ModuleNotFoundError"),
        ("my_encoders:absent", "module 'my_encoders' has no attribute 'absent'"),
        ("my_encoders:value", "'value' of 'my_encoders' is a int, not callable"),
        ("my_encoders:not_a_module", "not_a_module(...) returned a int, not a torch.nn.Module"),
        ("my_encoders:no_out_dim", "no_out_dim(...) returned has no positive int out_dim (got None)"),
        ("/absent/file.py:build", "/absent/file.py: no such Python file"),
        ("my_encoders", "give python:<module>:<callable>"),
    ],
)
def test_python_encoder_refusals_are_one_line(encoder_file, target, message):
    with pytest.raises(ConfigError) as raised:
        build_encoder(f"python:{target}", 3, input_shape=[3])
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_unknown_names_and_options_suggest_what_exists():
    with pytest.raises(ConfigError, match="unknown timm architecture 'resnet81'; close names: resnet18"):
        build_encoder("timm:resnet81", 3)
    with pytest.raises(ConfigError, match="unknown torchvision model 'resnet81'; close names: resnet18"):
        build_encoder("torchvision:resnet81", 3)
    with pytest.raises(ConfigError, match="unknown encoder source 'keras'; use timm:<architecture>"):
        build_encoder("keras:resnet", 3)
    with pytest.raises(ConfigError, match=r"unknown encoder 'resnett'; choose one of: .*resnet.* \(or timm:"):
        build_encoder("resnett", 3)
    with pytest.raises(ConfigError, match="takes no option 'colour'") as raised:
        build_encoder("timm:resnet18", 3, colour=1)
    assert raised.value.at("visual").args[0].startswith("model.encoders.visual.colour: encoder 'timm:resnet18'")


@pytest.mark.parametrize(
    "name, module, extra", [("timm:resnet18", "timm", "timm"), ("hf:{folder}", "transformers", "hf")]
)
def test_a_missing_library_names_its_extra(bert_folder, monkeypatch, name, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=rf"needs {module}, which is not installed; .*'avbalance\[{extra}\]'"):
        build_encoder(name.format(folder=bert_folder), 3)


def test_a_checkpoint_spec_with_a_library_encoder_rebuilds_the_model(tmp_path):
    encoders = {"visual": {"name": "timm:vit_tiny_patch16_224", **TINY_VIT}}
    spec = model_spec(SHAPES, 4, width=4, layers=[1, 1], encoders=encoders)
    assert spec["encoders"]["visual"]["kind"] == "timm:vit_tiny_patch16_224"
    model = build_model(spec).eval()
    save_model_checkpoint(spec, model.state_dict(), tmp_path / "model.ckpt")
    batch = tiny_inputs(2)
    torch.testing.assert_close(load_model(tmp_path / "model.ckpt")(batch).logits, model(batch).logits)


def test_a_frozen_encoder_keeps_its_state_bit_for_bit_through_training_steps():
    encoder = build_encoder("timm:resnet18", 3)
    freeze_encoder(encoder)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    encoder.train()  # what Lightning does at every epoch start
    head = nn.Linear(encoder.out_dim, 2)
    optimizer = torch.optim.SGD([p for p in encoder.parameters() if p.requires_grad] + [*head.parameters()], lr=1)
    for _ in range(2):
        head(encoder(torch.randn(4, 3, 2, 16, 16))).sum().backward()
        optimizer.step()
    assert not encoder.training and all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())


def test_a_frozen_encoder_stays_still_when_a_model_runs_its_parts_directly():
    spec = model_spec(SHAPES, 4, width=4, layers=[1, 1])
    model = build_model({**spec, "variant": "mmtm"})  # MMTM runs the encoders' stages one by one
    freeze_encoder(model.encoders["visual"])
    before = {k: v.clone() for k, v in model.encoders["visual"].state_dict().items()}
    model.train()(tiny_inputs()).logits.sum().backward()
    assert all(torch.equal(v, before[k]) for k, v in model.encoders["visual"].state_dict().items())
    assert model.encoders["audio"].bn1.num_batches_tracked == 1  # the other encoder trains as usual


def tiny_inputs(batch_size: int = 4) -> dict[str, torch.Tensor]:
    return {m: torch.randn(batch_size, *shape) for m, shape in SHAPES.items()}


def test_lr_scale_gets_its_own_group_and_the_scheduler_keeps_the_ratio():
    overrides = ["optim.lr=0.1", "optim.step_size=1", "model.encoders.visual.lr_scale=0.25"]
    config = load_config(overrides=[*overrides, "model.encoders.audio.freeze=true"])
    model = build_model(model_spec(SHAPES, 4, width=4, layers=[1, 1]))
    freeze_encoder(model.encoders["audio"])
    optimizer = build_optimizer(config, parameter_groups(config, model))
    scheduler = build_scheduler(config, optimizer)
    groups = {group["name"]: group for group in optimizer.param_groups}
    assert [groups["default"]["lr"], groups["encoders.visual"]["lr"]] == pytest.approx([0.1, 0.025])
    assert {id(p) for p in groups["encoders.visual"]["params"]} == {
        id(p) for p in model.encoders["visual"].parameters()
    }
    assert {id(p) for p in groups["default"]["params"]} == {id(p) for p in model.head.parameters()}  # audio frozen
    optimizer.step()
    scheduler.step()
    assert [groups["default"]["lr"], groups["encoders.visual"]["lr"]] == pytest.approx([0.01, 0.0025])
    plain = load_config(overrides=["optim.lr=0.1"])
    assert parameter_groups(plain, model) == [p for p in model.parameters() if p.requires_grad]


def test_ogm_auto_selects_convolutions_in_cnns_and_weight_matrices_elsewhere():
    resnet, vit = build_encoder("resnet", 3, width=4, layers=[1, 1]), tiny_vit(seed=0)
    mlp = build_encoder("mlp", 8, hidden=4)

    def selected(encoder, selection):
        return [id(p) for p in select_tensors(encoder, selection)]

    assert selected(resnet, "auto") == selected(resnet, "conv")  # as before for the ResNets
    assert selected(vit, "auto") == selected(vit, "weights") != selected(vit, "conv")  # not just the patch embedding
    assert selected(mlp, "auto") == selected(mlp, "weights") and selected(mlp, "conv") == []


def test_ogm_refuses_an_empty_selection_and_skips_a_frozen_encoder():
    spec = model_spec({"audio": (8,), "visual": (3, 16, 16)}, 4, width=4, layers=[1, 1])
    model = build_model(spec)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="method 'ogm': modulate='conv' selects no tensor of the audio encoder"):
        get_method("ogm", modulate="conv").setup(model, optimizer)
    freeze_encoder(model.encoders["audio"])
    method = get_method("ogm", modulate="conv")
    method.setup(model, optimizer)  # the frozen audio encoder is not trained: nothing to modulate
    assert get_method("ogm").modulate == "auto"
