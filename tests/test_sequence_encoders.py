"""Sequence, text and frame-stack encoders: exact padding, shapes, the default choice, one-line errors."""

import pytest
import torch

from avbalance.data.base import DatasetInfo
from avbalance.engine.loading import check_data_fits
from avbalance.errors import ConfigError, DataError
from avbalance.models import ENCODERS, build_model, model_spec
from avbalance.models.encoders import encoder_kind
from avbalance.models.sequence import MaskedBatchNorm1d, step_mask

LENGTHS = torch.tensor([5, 2, 7])
SEQUENCE_OPTIONS = {
    "gru": {"hidden": 6},
    "gru_mean": {"hidden": 6, "pool": "mean"},
    "gru_deep": {"hidden": 6, "layers": 2, "bidirectional": False},
    "lstm": {"hidden": 6},
    "lstm_mean": {"hidden": 5, "pool": "mean", "layers": 2},
    "transformer": {"d_model": 8, "heads": 2, "layers": 2, "ff": 16},
    "transformer_cls": {"d_model": 8, "heads": 2, "layers": 1, "ff": 16, "pool": "cls"},
    "conv1d": {"channels": 5, "layers": 3, "kernel": 3},
    "conv1d_wide": {"channels": 5, "layers": 2, "kernel": 5},
}


def encoder_named(case: str, in_channels: int = 4, **extra):
    torch.manual_seed(0)
    return ENCODERS.build(case.split("_")[0], in_channels, **SEQUENCE_OPTIONS[case], **extra).eval()


def assert_each_sample_as_alone(encoder, x, lengths, steps_axis=1):
    """Row i of ``encoder(x, lengths)`` equals the encoding of sample i cut to its length (the steps
    past each length hold random values, which the encoders must ignore)."""
    with torch.no_grad():
        batched = encoder(x, lengths)
        for row, length in enumerate(lengths.tolist()):
            alone = x[row : row + 1].narrow(steps_axis, 0, length)
            torch.testing.assert_close(batched[row : row + 1], encoder(alone), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batched[row : row + 1], encoder(alone, lengths[row : row + 1]))


@pytest.mark.parametrize("case", SEQUENCE_OPTIONS)
def test_each_padded_sequence_gets_the_output_it_gets_alone(case):
    encoder = encoder_named(case)
    x = torch.randn(3, 7, 4)
    assert_each_sample_as_alone(encoder, x, LENGTHS)
    assert encoder.takes_lengths is True


@pytest.mark.parametrize("case", ["gru", "lstm", "transformer", "conv1d"])
def test_token_ids_go_through_an_embedding_with_pad_id_zero(case):
    encoder = encoder_named(case, vocab_size=11, embed_dim=3)
    assert encoder.embedding.weight.shape == (11, 3) and not encoder.embedding.weight[0].any()
    tokens = torch.randint(1, 11, (3, 7))
    tokens[step_mask(LENGTHS, 7).logical_not()] = 0  # pad id
    assert_each_sample_as_alone(encoder, tokens, LENGTHS)
    assert encoder(tokens, LENGTHS).shape == (3, encoder.out_dim)


@pytest.mark.parametrize(
    "case, out_dim", [("gru", 12), ("gru_deep", 6), ("lstm_mean", 10), ("transformer", 8), ("conv1d", 5)]
)
def test_output_shapes_and_out_dim(case, out_dim):
    encoder = encoder_named(case)
    assert encoder.out_dim == out_dim
    assert encoder(torch.randn(2, 9, 4)).shape == (2, out_dim)


def test_recurrent_last_pool_is_the_final_forward_and_backward_states():
    encoder = encoder_named("gru")
    x = torch.randn(1, 5, 4)
    with torch.no_grad():
        outputs, _ = encoder.rnn(x)
        expected = torch.cat([outputs[0, -1, :6], outputs[0, 0, 6:]])
        torch.testing.assert_close(encoder(x)[0], expected)


def test_sequence_mean_pool_averages_valid_steps_only():
    encoder = encoder_named("gru_mean")
    x = torch.randn(1, 3, 4)
    with torch.no_grad():
        outputs, _ = encoder.rnn(x)
        torch.testing.assert_close(encoder(x), outputs.mean(dim=1))


def test_conv1d_training_statistics_count_valid_steps_only():
    torch.manual_seed(0)
    norm = MaskedBatchNorm1d(3, affine=False)
    x = torch.randn(3, 3, 7)
    mask = step_mask(LENGTHS, 7)
    out = norm(x, mask)
    valid = x.transpose(1, 2)[mask]  # (valid steps, C)
    expected = (valid - valid.mean(0)) / torch.sqrt(valid.var(0, unbiased=False) + norm.eps)
    torch.testing.assert_close(out.transpose(1, 2)[mask], expected)
    assert not out.transpose(1, 2)[~mask].any()
    torch.testing.assert_close(norm.running_mean, 0.1 * valid.mean(0))


@pytest.mark.parametrize("temporal", ["gru", "lstm", "conv1d", "transformer"])
def test_frame_stack_encoder_is_exact_on_padded_stacks(temporal):
    options = {
        "gru": {"hidden": 4},
        "lstm": {"hidden": 3, "pool": "mean"},
        "conv1d": {"channels": 4},
        "transformer": {"d_model": 4, "heads": 1, "ff": 8},
    }
    torch.manual_seed(0)
    encoder = ENCODERS.build(
        "framestack", 2, width=4, layers=[1, 1], temporal=temporal, temporal_options=options[temporal]
    ).eval()
    assert encoder.out_dim == {"gru": 8, "lstm": 6, "conv1d": 4, "transformer": 4}[temporal]
    x = torch.randn(3, 2, 7, 8, 8)
    assert_each_sample_as_alone(encoder, x, LENGTHS, steps_axis=2)
    assert encoder(x, LENGTHS).shape == (3, encoder.out_dim)


def test_frame_stack_encodes_valid_frames_only():
    encoder = ENCODERS.build("framestack", 1, width=4, layers=[1])
    seen = []
    encoder.frames.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    encoder(torch.randn(3, 1, 7, 8, 8), LENGTHS)
    assert seen == [14]


# -- default choice and the model spec ---------------------------------------------------------------


def test_default_encoder_by_kind_and_shape():
    assert encoder_kind((48, 26)) == "gru"
    assert encoder_kind((30,), kind="text") == "transformer"
    assert encoder_kind((30, 2, 3), kind="sequence") == "gru"
    assert encoder_kind((1, 20, 8, 8), kind="frame_stack", variable_length=True) == "framestack"
    assert encoder_kind((1, 20, 8, 8), kind="frame_stack") == "clip"
    assert [encoder_kind(shape) for shape in [(40,), (1, 64, 64), (3, 4, 32, 32)]] == ["mlp", "resnet", "clip"]
    with pytest.raises(ConfigError, match=r"^no default encoder for inputs of per-sample shape \(1, 2, 3, 4, 5\)$"):
        encoder_kind((1, 2, 3, 4, 5))


def test_model_spec_of_sequence_text_and_frame_stack_modalities():
    spec = model_spec(
        {"audio": (48, 26), "text": (30,), "lips": (1, 20, 8, 8), "visual": (3, 2, 16, 16)},
        4,
        width=4,
        layers=[1],
        input_kinds={"text": "text", "lips": "frame_stack"},
        variable_length=["audio", "text", "lips"],
        vocab_sizes={"text": 50},
        encoders={
            "audio": {"name": "gru", "hidden": 8},
            "text": {"d_model": 8, "heads": 2, "lr_scale": 0.1},
            "lips": {"temporal_options": {"hidden": 4}},
        },
    )
    assert spec["encoders"] == {
        "audio": {"kind": "gru", "in_channels": 26, "hidden": 8},
        "text": {"kind": "transformer", "in_channels": 1, "vocab_size": 50, "d_model": 8, "heads": 2},
        "lips": {"kind": "framestack", "in_channels": 1, "width": 4, "layers": [1], "temporal_options": {"hidden": 4}},
        "visual": {"kind": "clip", "in_channels": 3, "width": 4, "layers": [1]},
    }
    assert spec["variable_length"] == ["audio", "text", "lips"]
    model = build_model(spec).eval()
    batch = {
        "audio": torch.randn(3, 7, 26),
        "audio_lengths": LENGTHS,
        "text": torch.randint(0, 50, (3, 7)),
        "text_lengths": LENGTHS,
        "lips": torch.randn(3, 1, 7, 8, 8),
        "lips_lengths": LENGTHS,
        "visual": torch.randn(3, 3, 2, 16, 16),
    }
    with torch.no_grad():
        features = model(batch).features
        audio_alone = model.encode_modality("audio", {"audio": batch["audio"][1:2, :2]})
    assert {m: f.shape for m, f in features.items()} == {
        "audio": (3, 16),
        "text": (3, 8),
        "lips": (3, 8),
        "visual": (3, 4),
    }
    torch.testing.assert_close(features["audio"][1:2], audio_alone, atol=1e-5, rtol=1e-5)


def test_fixed_size_specs_are_unchanged_and_kind_is_an_alias_of_name():
    spec = model_spec(
        {"audio": (1, 16, 16), "feats": (10,)}, 3, width=4, layers=[1], encoders={"feats": {"kind": "mlp"}}
    )
    assert spec == {
        "encoders": {
            "audio": {"kind": "resnet", "in_channels": 1, "width": 4, "layers": [1]},
            "feats": {"kind": "mlp", "in_channels": 10, "width": 4, "layers": [1]},
        },
        "fusion": "concat",
        "fusion_options": {},
        "num_classes": 3,
    }
    with pytest.raises(ConfigError, match=r"^model.encoders.feats: name and kind name different encoders"):
        model_spec({"feats": (10,)}, 3, encoders={"feats": {"kind": "mlp", "name": "gru"}})


# -- one-line errors ---------------------------------------------------------------------------------


def test_an_unknown_encoder_name_lists_the_registered_ones():
    spec = model_spec({"audio": (48, 26)}, 3, encoders={"audio": {"name": "grux"}})
    with pytest.raises(ConfigError) as error:
        build_model(spec)
    message = str(error.value)
    assert message.startswith("unknown encoder 'grux'; choose one of: ") and "\n" not in message
    assert {"conv1d", "framestack", "gru", "lstm", "transformer", "resnet", "clip", "mlp"} <= set(
        message.split("one of: ")[1].split(" (")[0].split(", ")
    )


def test_a_shape_no_encoder_takes_is_one_line_naming_the_setting():
    with pytest.raises(
        ConfigError,
        match=r"^model.encoders.depth.name: modality 'depth': no default encoder for inputs of per-sample shape "
        r"\(1, 2, 3, 4, 5\); name an encoder$",
    ):
        model_spec({"depth": (1, 2, 3, 4, 5)}, 3)
    with pytest.raises(
        ConfigError,
        match=r"^model.encoders.audio.name: encoder 'resnet' takes per-sample inputs \(C, H, W\), "
        r"but modality 'audio' has shape \(48, 26\)$",
    ):
        model_spec({"audio": (48, 26)}, 3, encoders={"audio": {"name": "resnet"}})
    with pytest.raises(ConfigError, match=r"^model.encoders.text.name: encoder 'gru' takes per-sample inputs \(T, F\)"):
        model_spec({"text": (30,)}, 3, input_kinds={"text": "text"}, encoders={"text": {"name": "gru"}})


@pytest.mark.parametrize(
    "name, shape", [("resnet", (1, 16, 16)), ("clip", (3, 4, 16, 16)), ("mlp", (10,))], ids=["resnet", "clip", "mlp"]
)
def test_a_variable_length_modality_needs_an_encoder_that_takes_lengths(name, shape):
    spec = model_spec(
        {"audio": shape}, 3, width=4, layers=[1], variable_length=["audio"], encoders={"audio": {"name": name}}
    )
    with pytest.raises(ConfigError) as error:
        build_model(spec)
    message = str(error.value)
    expected = f"model.encoders.audio.name: modality 'audio' has variable length but encoder {name!r} takes no lengths"
    assert message.startswith(f"{expected}; choose one of: ") and "\n" not in message
    assert {"conv1d", "framestack", "gru", "lstm", "transformer"} <= set(message.split("one of: ")[1].split(", "))


def test_encoder_options_are_checked_in_one_line():
    with pytest.raises(
        ConfigError, match=r"^encoder 'transformer': heads must divide d_model, got d_model=10, heads=4$"
    ):
        ENCODERS.build("transformer", 3, d_model=10)
    with pytest.raises(ConfigError, match=r"^encoder 'gru': pool: Input should be 'last' or 'mean'"):
        ENCODERS.build("gru", 3, pool="max")
    with pytest.raises(ConfigError, match=r"^encoder 'gru' has no option 'depth'"):
        ENCODERS.build("framestack", 1, temporal_options={"depth": 2})


def test_evaluation_data_must_have_the_sequence_features_the_checkpoint_was_built_for():
    kinds, vocab = {"motion": "sequence", "caption": "text"}, {"caption": 12}
    info = DatasetInfo("seq", 3, {"motion": (9, 3), "caption": (4,)}, input_kinds=kinds, vocab_sizes=vocab)
    spec = model_spec(info.input_shapes, 3, input_kinds=kinds, variable_length=["motion", "caption"], vocab_sizes=vocab)
    longer = DatasetInfo("seq", 3, {"motion": (20, 3), "caption": (8,)}, input_kinds=kinds, vocab_sizes=vocab)
    check_data_fits(longer, spec, "data")  # other lengths, same features: fits
    wider = DatasetInfo("seq", 3, {"motion": (9, 4), "caption": (4,)}, input_kinds=kinds, vocab_sizes=vocab)
    with pytest.raises(DataError, match="^data: motion has 4 channels, the checkpoint's motion encoder takes 3$"):
        check_data_fits(wider, spec, "data")
