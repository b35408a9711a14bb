"""Encoders: official ResNet-18 layout, clip pooling, small variants."""

import torch
import torchvision

from avbalance.models import ClipEncoder, ResNetEncoder, build_model
from avb_testing import tiny_spec


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
    batch = {"audio": torch.randn(3, 1, 16, 16), "visual": torch.randn(3, 3, 2, 16, 16),
             "flow": torch.randn(3, 2, 2, 16, 16)}
    out = model(batch)
    assert out.logits.shape == (3, 7)
    assert {m: f.shape for m, f in out.features.items()} == {m: (3, 8) for m in ("audio", "visual", "flow")}
    assert model.encoders["flow"].conv1.weight.shape[1] == 2
    encoder_params = {id(p) for m in model.modalities for p in model.encoders[m].parameters()}
    assert encoder_params | {id(p) for p in model.head.parameters()} == {id(p) for p in model.parameters()}
