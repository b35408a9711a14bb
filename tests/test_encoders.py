"""Encoders: official ResNet-18 layout, clip pooling, small variants."""

import pytest
import torch
import torchvision

from avb_testing import tiny_spec
from avbalance.errors import ConfigError
from avbalance.models import ENCODERS, ClipEncoder, ResNetEncoder, build_encoder, build_model, model_spec
from avbalance.models.encoders import encoder_kind


def test_resnet18_layout_matches_torchvision_without_fc():
    ours = ResNetEncoder(in_channels=3)
    reference = torchvision.models.resnet18()
    expected = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == expected
    assert ours.out_dim == 512


def test_audio_stem_has_one_channel_and_about_11m_parameters():
    audio = ResNetEncoder(in_channels=1)
    assert audio.conv1.weight.shape == (64, 1, 7, 7)
    count = sum(p.numel() for p in audio.parameters())
    assert 11.1e6 < count < 11.2e6
    assert sum(1 for p in audio.parameters() if p.dim() == 4) == 20  # 17 3x3/7x7 convs + 3 downsample


def test_official_size_feature_shapes():
    audio = ResNetEncoder(in_channels=1).eval()
    with torch.no_grad():
        assert audio.feature_map(torch.randn(1, 1, 257, 188)).shape == (1, 512, 9, 6)
        assert audio(torch.randn(2, 1, 257, 188)).shape == (2, 512)


def test_clip_encoder_is_the_mean_over_frames_of_per_frame_features():
    torch.manual_seed(0)
    encoder = ClipEncoder(in_channels=3, width=8, layers=[1, 1]).eval()
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        per_frame = torch.stack([encoder.feature_map(clip[:, :, t]).mean(dim=(2, 3)) for t in range(4)], 1)
        torch.testing.assert_close(encoder(clip), per_frame.mean(1))


def test_small_variant_and_model_output_shapes():
    model = build_model(tiny_spec(num_classes=7, modalities=("audio", "visual", "flow")))
    batch = {
        "audio": torch.randn(3, 1, 16, 16),
        "visual": torch.randn(3, 3, 2, 16, 16),
        "flow": torch.randn(3, 2, 2, 16, 16),
    }
    out = model(batch)
    assert out.logits.shape == (3, 7)
    assert {m: f.shape for m, f in out.features.items()} == {m: (3, 8) for m in ("audio", "visual", "flow")}
    assert model.encoders["flow"].conv1.weight.shape[1] == 2
    encoder_params = {id(p) for m in model.modalities for p in model.encoders[m].parameters()}
    assert encoder_params | {id(p) for p in model.head.parameters()} == {id(p) for p in model.parameters()}


class Flatten(torch.nn.Module):
    """An encoder defined outside the package: a linear map of the flattened input."""

    def __init__(self, in_channels: int, out_dim: int = 3, pixels: int = 256):
        super().__init__()
        self.out_dim = out_dim
        self.linear = torch.nn.Linear(in_channels * pixels, out_dim)

    def forward(self, x):
        return self.linear(x.flatten(1))


@pytest.fixture
def flatten_encoder():
    ENCODERS.register("test_flatten")(Flatten)
    yield Flatten
    ENCODERS.remove("test_flatten")


def test_a_registered_encoder_is_built_by_name_through_the_model_spec(flatten_encoder):
    spec = model_spec(
        {"audio": (1, 16, 16), "visual": (3, 2, 16, 16)},
        4,
        width=4,
        layers=[1, 1],
        encoders={"audio": {"kind": "test_flatten", "out_dim": "6"}},
    )
    model = build_model(spec)
    audio = model.encoders["audio"]
    assert isinstance(audio, flatten_encoder) and audio.out_dim == 6  # model-wide width/layers left out
    assert isinstance(model.encoders["visual"], ClipEncoder) and model.head.dims == {"audio": 6, "visual": 8}
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(audio(x), x.flatten(1) @ audio.linear.weight.t() + audio.linear.bias)


def test_encoder_kind_and_options_are_checked():
    with pytest.raises(
        ConfigError,
        match="^unknown encoder 'perceiver'; choose one of: clip, conv1d, framestack, gru, lstm, mlp, resnet, ",
    ):
        build_encoder("perceiver", 3)
    with pytest.raises(ConfigError, match="^encoder 'resnet' has no option 'hidden'; its options are: width, layers$"):
        build_encoder("resnet", 3, hidden=16)
    with pytest.raises(ConfigError, match="^encoder 'mlp': hidden: Input should be a valid integer"):
        build_encoder("mlp", 10, hidden="wide")


def test_mlp_encoder_ignores_model_wide_sizes_and_has_hidden_width_output():
    encoder = build_encoder("mlp", 10, hidden=12, width=64, layers=[2, 2])
    assert encoder.out_dim == 12 and encoder(torch.randn(5, 10)).shape == (5, 12)
    assert [layer.weight.shape for layer in encoder.net if isinstance(layer, torch.nn.Linear)] == [(12, 10), (12, 12)]


def test_default_encoder_kind_follows_the_per_sample_shape():
    assert [encoder_kind(shape) for shape in [(40,), (1, 64, 64), (3, 4, 32, 32)]] == ["mlp", "resnet", "clip"]
    assert encoder_kind((2, 3)) == "gru"  # a (T, F) sequence
    with pytest.raises(ConfigError, match=r"^no default encoder for inputs of per-sample shape \(2, 3, 4, 5, 6\)$"):
        encoder_kind((2, 3, 4, 5, 6))


def torchvision_feature_map(reference: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
    """The official order: conv1, bn1, ReLU, max-pool, then the stages."""
    x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
    return reference.layer4(reference.layer3(reference.layer2(reference.layer1(x))))


@pytest.mark.parametrize("channels_last", [False, True])
def test_stem_pooling_before_relu_gives_torchvisions_values_and_gradients_bit_for_bit(channels_last):
    torch.manual_seed(0)
    ours = ResNetEncoder(in_channels=3, layers=[1, 1, 1, 1]).train()
    with torch.no_grad():
        ours.bn1.bias.fill_(-1.0)  # many windows of negatives only: the ties at zero both orders must treat alike
    reference = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1]).train()
    reference.load_state_dict(ours.state_dict(), strict=False)  # no fc in ours
    x = torch.randn(2, 3, 64, 64)
    if channels_last:
        ours, reference = (m.to(memory_format=torch.channels_last) for m in (ours, reference))
        x = x.contiguous(memory_format=torch.channels_last)
    stem_out = ours.stem(x)
    assert (stem_out == 0).float().mean() > 0.1
    ours_map, reference_map = ours.feature_map(x), torchvision_feature_map(reference, x)
    assert torch.equal(ours_map, reference_map)
    grad = torch.randn_like(ours_map)
    ours_map.backward(grad)
    reference_map.backward(grad)
    reference_params = dict(reference.named_parameters())
    for name, parameter in ours.named_parameters():
        assert torch.equal(parameter.grad, reference_params[name].grad), name
